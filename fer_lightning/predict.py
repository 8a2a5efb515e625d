"""Classify image files, videos or a camera's frames with a trained checkpoint.

    python -m fer_lightning.predict ckpt_path=run/checkpoints/epoch_033.ckpt input=photos/ output=preds.csv
    python -m fer_lightning.predict ckpt_path=... input=clip.mp4 stride=2 output=clip.csv output_video=clip_ann.mp4

Videos and cameras: :mod:`fer_lightning.video`.

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
from omegaconf import DictConfig

from fer_lightning.cli import fail, start_command
from fer_lightning.config import config_dir
from fer_lightning.data.images import IMAGE_SUFFIXES, read_grey
from fer_lightning.errors import FERError
from fer_lightning.inference import Classifier
from fer_lightning.results import write_csv
from fer_lightning.storage import escape_surrogates
from fer_lightning.video import collect_video, is_video

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
            ready.append((f, clf.prepare(clf.cropper(read_grey(f), f))))
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


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="predict")
def main(cfg: DictConfig) -> None:
    start_command(cfg)
    try:
        if not cfg.ckpt_path or not cfg.input:
            raise FERError("give ckpt_path=<a fer-lightning checkpoint> and input=<an image, a folder, a video "
                           "or camera:0>")
        files = [] if is_video(cfg.input) else image_files(cfg.input)
        if cfg.output:  # before any work: an output that would destroy something is refused
            check_output(cfg.output, files)
        if is_video(cfg.input):  # rows stream out as frames are decoded
            rows, skipped = collect_video(cfg, echo=None if cfg.output else print_row), []
        else:
            rows, skipped = predict(cfg.ckpt_path, files, int(cfg.batch_size), cfg.device)
            for r in rows if not cfg.output else []:
                print_row(r)
    except FERError as e:
        fail(e)
    unwritten = None
    if rows and cfg.output:
        try:
            write_csv(Path(cfg.output), rows, list(rows[0]))
            print(f"wrote {len(rows)} predictions to {cfg.output}")
        except OSError as e:  # read-only place, full disk, ...: the predictions are printed instead
            unwritten = f"output={cfg.output} cannot be written ({e.strerror or e}); the predictions are printed above"
            for r in rows:
                print_row(r)
    if skipped:
        print(f"fer-lightning: skipped {len(skipped)} unreadable file(s): "
              f"{', '.join(escape_surrogates(f) for f, _ in skipped)}", file=sys.stderr)
    if unwritten:
        fail(unwritten)
    if not rows:
        sys.exit(1)


if __name__ == "__main__":
    main()
