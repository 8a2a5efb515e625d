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


def metrics_of_test(model: Any, dm: Any, seed: int) -> dict[str, Any]:
    """The ``metrics.json`` fields every test of a model on a data module has: ``test/*`` scalars, the
    confusion matrix, and what was tested (classes, data, split, fold, seed, model)."""
    metrics: dict[str, Any] = {f"test/{k}": v for k, v in model.results["test"].items()}
    metrics.update(
        {
            "confusion_matrix": model.confusion["test"].tolist(),
            "class_names": list(dm.class_names),
            "n_test": len(model.outputs["test"]["index"]),
            "dataset": dm.dataset_name,
            "dataset_fingerprint": dm.decoded.fingerprint,
            "split": dm.split_name,
            "fold": dm.fold if dm.split_name != "paper" else None,
            "inner_fold": f"{dm.inner_fold}/{dm.inner_folds}" if getattr(dm, "inner_folds", 0) else None,
            "seed": int(seed),
            "model": model.model_name,
        }
    )
    return metrics


def write_test_outputs(out: Path, model: Any, dm: Any, metrics: dict[str, Any]) -> None:
    """``predictions.csv`` (one row per test image) and ``metrics.json`` in ``out``."""
    rows = prediction_rows(model.outputs["test"], dm.file_names(), dm.decoded.subjects, dm.class_names)
    write_csv(out / "predictions.csv", rows, prediction_fields(dm.class_names))
    write_json(out / "metrics.json", metrics)
