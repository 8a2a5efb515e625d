"""What each run leaves in its directory: metrics.json, predictions.csv, splits.csv, run_info.json."""

from __future__ import annotations

import csv
import json
import platform
import sys
from collections.abc import Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from fer_lightning.storage import atomic_write_text

PACKAGES = (
    "fer-lightning", "torch", "torchvision", "pytorch-lightning", "torchmetrics", "kornia",
    "scikit-image", "scikit-learn", "hydra-core", "numpy", "tensorboard",
)


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_csv(path: Path, rows: Iterable[Mapping[str, Any]], fieldnames: Sequence[str]) -> None:
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(fieldnames), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    out["cuda"] = torch.version.cuda or "none"
    return out


def prediction_rows(
    outputs: Mapping[str, torch.Tensor], files: Sequence[str], subjects: Sequence[str], class_names: Sequence[str]
) -> list[dict[str, Any]]:
    """Rows ``file, subject, true, predicted, p_<class>...`` ordered by dataset index (``files``: the names to
    write, as :meth:`JAFFEDataModule.file_names` gives them)."""
    order = torch.argsort(outputs["index"])
    rows = []
    for k in order.tolist():
        i = int(outputs["index"][k])
        probs = outputs["probs"][k]
        row = {
            "file": files[i],
            "subject": subjects[i],
            "true": class_names[int(outputs["target"][k])],
            "predicted": class_names[int(probs.argmax())],
        }
        row.update({f"p_{c}": f"{float(p):.6f}" for c, p in zip(class_names, probs, strict=True)})
        rows.append(row)
    return rows


def prediction_fields(class_names: Sequence[str]) -> list[str]:
    return ["file", "subject", "true", "predicted", *[f"p_{c}" for c in class_names]]
