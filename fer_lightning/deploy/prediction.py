"""Classifying image files with a checkpoint: the files of a folder, the output file's safety, one row per image."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from fer_lightning.data.images import IMAGE_SUFFIXES
from fer_lightning.deploy.inference import Classifier
from fer_lightning.errors import FERError
from fer_lightning.io.atomic import escape_surrogates

log = logging.getLogger("fer_lightning.predict")


def image_files(target: str | Path) -> list[Path]:
    """The file itself, or every image file below a folder (sorted)."""
    path = Path(target).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise FERError(f"input={path} holds no image files ({' '.join(IMAGE_SUFFIXES)})")
        return files
    raise FERError(f"input={path}: no such file or folder")


def check_output(output: str | Path, inputs: list[Path]) -> None:
    """Refuse an output that would destroy something: a folder, one of the input images, an existing file that is
    not a CSV file (an existing CSV file is replaced)."""
    path = Path(output).expanduser()
    if path.is_dir():
        raise FERError(f"output={output} is a folder; give a CSV file name such as output={path / 'predictions.csv'}")
    if not path.exists():
        return
    if any(path.samefile(f) for f in inputs):
        raise FERError(f"output={output} is one of the input images; give another file name")
    if path.suffix.lower() != ".csv":
        raise FERError(f"output={output} exists and is not a .csv file; it is not overwritten: give a new file name")


def predict(
    ckpt_path: str, target: str | Path | list[Path], batch_size: int = 32, device: str = "auto"
) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """Rows ``{file, predicted, p_<class>...}`` for the readable images, and ``(file, reason)`` for the others.
    ``target``: an image, a folder, or the list of image files (:func:`image_files`)."""
    files = list(target) if isinstance(target, list) else image_files(target)
    clf = Classifier(ckpt_path, device)
    ready: list[tuple[Path, np.ndarray]] = []
    skipped: list[tuple[str, str]] = []
    for f in files:
        try:
            ready.append((f, clf.preprocessing.read(f)))
        except FERError as e:
            skipped.append((str(f), str(e)))
            log.warning("skipped: %s", e)
    rows = []
    for i in range(0, len(ready), batch_size):
        chunk = ready[i : i + batch_size]
        probs = clf.probabilities([a for _, a in chunk])
        for (f, _), p in zip(chunk, probs, strict=True):
            rows.append({"file": str(f), "predicted": clf.label(p), **clf.columns(p)})
    return rows, skipped


def print_row(r: dict[str, Any]) -> None:
    """One tab-separated line: what the row is about (file; or frame, time, face, box), the predicted class (and
    the smoothed one), then the probabilities."""
    probs = " ".join(f"{k[2:]}={v}" for k, v in r.items() if k.startswith("p_"))
    print("\t".join(escape_surrogates(str(v)) for k, v in r.items() if not k.startswith("p_")) + f"\t{probs}")

