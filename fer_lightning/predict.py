"""Classify image files with a trained checkpoint.

    python -m fer_lightning.predict ckpt_path=run/checkpoints/epoch_033.ckpt input=photos/ output=preds.csv

Any of the three models; images of any size, grey or colour, prepared as in training (grey, the run's face
crop, resized to the run's image size). An unreadable file is reported and skipped; the others are still
classified. The checkpoint is loaded with ``weights_only`` (no code in it runs).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig

from fer_lightning.checkpoints import FORMAT_KEY, read_checkpoint
from fer_lightning.cli import fail, start_command
from fer_lightning.config import config_dir
from fer_lightning.data.crop import FaceCropper
from fer_lightning.data.folder import IMAGE_SUFFIXES
from fer_lightning.data.images import read_grey, resize_grey
from fer_lightning.errors import FERError
from fer_lightning.features.extractor import resolve_device
from fer_lightning.models import load_model
from fer_lightning.results import write_csv

log = logging.getLogger("fer_lightning.predict")
DEFAULT_PREPROCESSING = {"image_size": 224, "face_crop": {"mode": "none"}}


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


def predict(
    ckpt_path: str, target: str | Path, batch_size: int = 32, device: str = "auto"
) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """Rows ``{file, predicted, p_<class>...}`` for the readable images, and ``(file, reason)`` for the others."""
    files = image_files(target)
    ckpt = read_checkpoint(ckpt_path)  # the one read of the file
    prep = {**DEFAULT_PREPROCESSING, **ckpt[FORMAT_KEY].get("preprocessing", {})}
    model = load_model(ckpt).eval().to(resolve_device(device))
    cropper, size = FaceCropper.from_settings(prep["face_crop"]), int(prep["image_size"])
    classes = list(model.class_names)
    ready: list[tuple[Path, np.ndarray]] = []
    skipped: list[tuple[str, str]] = []
    for f in files:
        try:
            ready.append((f, resize_grey(cropper(read_grey(f), f), size)))
        except FERError as e:
            skipped.append((str(f), str(e)))
            log.warning("skipped: %s", e)
    rows = []
    with torch.no_grad():
        for i in range(0, len(ready), batch_size):
            chunk = ready[i : i + batch_size]
            x = torch.from_numpy(np.stack([a for _, a in chunk])).unsqueeze(1).float().div_(255.0)
            probs = model(x.to(model.device)).float().softmax(-1).cpu()
            for (f, _), p in zip(chunk, probs, strict=True):
                row = {"file": str(f), "predicted": classes[int(p.argmax())]}
                row.update({f"p_{c}": f"{float(v):.6f}" for c, v in zip(classes, p, strict=True)})
                rows.append(row)
    return rows, skipped


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="predict")
def main(cfg: DictConfig) -> None:
    start_command(cfg)
    try:
        if not cfg.ckpt_path or not cfg.input:
            raise FERError("give ckpt_path=<a fer-lightning checkpoint> and input=<an image or a folder>")
        rows, skipped = predict(cfg.ckpt_path, cfg.input, int(cfg.batch_size), cfg.device)
    except FERError as e:
        fail(e)
    if rows and cfg.output:
        write_csv(Path(cfg.output), rows, list(rows[0]))
        print(f"wrote {len(rows)} predictions to {cfg.output}")
    for r in rows if not cfg.output else []:
        probs = " ".join(f"{k[2:]}={v}" for k, v in r.items() if k.startswith("p_"))
        print(f"{r['file']}\t{r['predicted']}\t{probs}")
    if skipped:
        print(f"fer-lightning: skipped {len(skipped)} unreadable file(s): {', '.join(f for f, _ in skipped)}",
              file=sys.stderr)
    if not rows:
        sys.exit(1)


if __name__ == "__main__":
    main()
