"""The predict command: classify image files, videos or a camera's frames with a trained checkpoint.

    python -m fer_lightning.predict ckpt_path=<run>/checkpoints/<best>.ckpt input=photos/ output=preds.csv
    python -m fer_lightning.predict ckpt_path=... input=clip.mp4 stride=2 output=clip.csv output_video=clip_ann.mp4

Any of the four models (deep, handcrafted, hybrid, late fusion); images of any size, grey or colour, prepared as in
training by the checkpoint's own :class:`~fer_lightning.data.preprocessing.Preprocessing` (grey, the run's face crop,
resized to the run's image size). An unreadable file is reported and skipped; the others are still classified. The
checkpoint is loaded with ``weights_only`` (no code in it runs). Images: :mod:`fer_lightning.deploy.prediction`;
videos and cameras: :mod:`fer_lightning.deploy.video`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from fer_lightning.deploy.prediction import check_output, image_files, predict, print_row
from fer_lightning.deploy.video import collect_video, is_video
from fer_lightning.engine.configs import config_dir
from fer_lightning.engine.startup import checkpoint_option, command, fail, start_command
from fer_lightning.errors import FERError
from fer_lightning.io.atomic import escape_surrogates, write_csv
from fer_lightning.runtime.listing import shorten

__all__ = ["check_output", "image_files", "main", "predict"]


@command
@hydra.main(version_base="1.3", config_path=config_dir(), config_name="predict")
def main(cfg: DictConfig) -> None:
    start_command(cfg)
    try:
        if not cfg.ckpt_path or not cfg.input:
            raise FERError("give ckpt_path=<a fer-lightning checkpoint> and input=<an image, a folder, a video "
                           "or camera:0>")
        checkpoint_option(cfg)
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
              f"{shorten([escape_surrogates(f) for f, _ in skipped], 'unreadable files')}", file=sys.stderr)
    if unwritten:
        fail(unwritten)
    if not rows:
        sys.exit(1)


if __name__ == "__main__":
    main()
