"""Time per epoch of ``recipe=modern`` vs ``recipe=paper``, side by side (issue #21: goal at most 1.5x on the CPU).

    uv run python bench/recipe.py [--sizes 64] [--epochs 5] [--repeats 2] [--device cpu|cuda]

Both train ``model=deep`` (MobileNetV2 + the Dense-256 head, random init: the same work as ImageNet weights) on the
synthetic set's training split (130 images, batch 16) and validate on its 23 validation images every epoch, with the
Trainer, data module and model built from the Hydra config as ``train()`` builds them (no checkpoints, no logger, no
early stopping), alternating (paper, modern, paper, ...) in this one process so that both see the same machine load.
An epoch is timed from its start to the end of its validation, with ``conf/recipe/modern.yaml`` as it is: its chosen
defaults turn MixUp/CutMix, the policy, erasing and the EMA off (AdamW, two parameter groups, warmup + cosine and
label smoothing remain); with any of them on (the first defaults), its time per step counts too.

``recipe=modern`` freezes the backbone for its first ``unfreeze_epoch`` epochs, which are cheaper: only the epochs
after the unfreezing are compared (the first epoch of a paper run, a warm-up, is not counted either). Prints the
median time per epoch of each, and last the modern/paper ratio (largest over the sizes).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from pytorch_lightning.callbacks import Callback

from fer_lightning.engine.build import build
from fer_lightning.engine.configs import config_dir


def config(recipe: str, size: int, epochs: int, device: str, cache: str):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose("train", overrides=[
            "model=deep", "model.backbone.weights=none", f"recipe={recipe}", f"data.image_size={size}",
            f"data.cache_dir={cache}", f"trainer.accelerator={device}", f"trainer.max_epochs={epochs}",
            "+trainer.num_sanity_val_steps=0", "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false", "callbacks=none", "logger=none", "paths.output_dir=" + cache,
        ])


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


class EpochTimer(Callback):
    """Seconds from each training epoch's start to the end of its validation."""

    def __init__(self, device: str) -> None:
        self.device, self.times, self.start = device, [], 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        sync(self.device)
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:  # Lightning calls it after the epoch's validation
        sync(self.device)
        self.times.append(time.perf_counter() - self.start)


def epochs(cfg, device: str) -> list[float]:
    """Per-epoch seconds of one fit, without its warm-up epoch and (modern) its frozen-backbone epochs."""
    pl.seed_everything(0, workers=True, verbose=False)
    dm = build(cfg.data)
    dm.prepare_data()
    dm.setup()
    model = build(cfg.model, class_names=list(dm.class_names))
    timer = EpochTimer(device)
    trainer: pl.Trainer = build(cfg.trainer, callbacks=[timer], logger=False, enable_checkpointing=False)
    trainer.fit(model, datamodule=dm)
    return timer.times[max(1, int(cfg.model.optim.unfreeze_epoch)):]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64])
    ap.add_argument("--epochs", type=int, default=5, help="per run; the warm-up and frozen epochs are not counted")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each recipe, alternating")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = ap.parse_args(argv)
    name = torch.cuda.get_device_name() if args.device == "cuda" else f"{torch.get_num_threads()} CPU threads"
    print(f"model=deep, batch 16, 130 training + 23 validation images, {args.epochs} epochs x {args.repeats} runs "
          f"per recipe, alternating; torch {torch.__version__}, {args.device} ({name})")
    print(f"{'size':>5} {'paper s/epoch':>14} {'modern s/epoch':>15} {'ratio':>6}")
    ratios = []
    with tempfile.TemporaryDirectory() as cache:
        for size in args.sizes:
            cfgs = {r: config(r, size, args.epochs, args.device, cache) for r in ("paper", "modern")}
            times: dict[str, list[float]] = {"paper": [], "modern": []}
            for _ in range(args.repeats):
                for recipe, cfg in cfgs.items():
                    times[recipe] += epochs(cfg, args.device)
            paper, modern = statistics.median(times["paper"]), statistics.median(times["modern"])
            ratios.append(modern / paper)
            print(f"{size:>5} {paper:>14.3f} {modern:>15.3f} {modern / paper:>5.2f}x", flush=True)
    print(f"recipe=modern / recipe=paper time per epoch (backbone training), largest over the sizes, "
          f"ratio: {max(ratios):.1f}x")


if __name__ == "__main__":
    main()
