"""Time per training epoch: fer-lightning's Trainer path vs a minimal plain PyTorch loop, side by side.

    uv run python bench/loop.py [--sizes 224 112] [--epochs 3] [--repeats 2] [--device auto|cpu|cuda]

Both train ``model=deep`` (MobileNetV2 + the Dense-256 head, random init) on the synthetic set's training split
(130 images) with the same augmentation (kornia, on the device), Adam (lr 1e-4), batch 16, the same number of
steps per epoch and the same thread count, in this one process, alternating (Lightning, plain, Lightning, ...)
so that both see the same machine load:

- Lightning: the data module, model and Trainer built from the Hydra config exactly as ``train()`` builds them
  (``trainer=default``, ``data.num_workers=0``), without validation, checkpoints or logger, so that both loops do
  the same work;
- plain: a shuffled index permutation per epoch, ``images[idx].to(device).float() / 255``, the augmentation,
  forward, cross-entropy, backward, step.

The first epoch of every run is a warm-up and not counted. Prints the median time per epoch and images/s of
each, per image size and device, and last the largest Lightning/plain ratio (goal: at most 1.10x).
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

from fer_lightning.data.augment import FaceAugment
from fer_lightning.engine.build import build
from fer_lightning.engine.configs import config_dir


def config(size: int, epochs: int, device: str, cache: str):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose("train", overrides=[
            "model=deep", "model.backbone.weights=none", f"data.image_size={size}", f"data.cache_dir={cache}",
            f"trainer.accelerator={device}", f"trainer.max_epochs={epochs}", "+trainer.limit_val_batches=0",
            "+trainer.num_sanity_val_steps=0", "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false", "callbacks=none", "logger=none", "paths.output_dir=" + cache,
        ])


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


class EpochTimer(Callback):
    def __init__(self, device: str) -> None:
        self.device, self.times, self.start = device, [], 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        sync(self.device)
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        sync(self.device)
        self.times.append(time.perf_counter() - self.start)


def lightning_epochs(cfg, device: str) -> list[float]:
    pl.seed_everything(0, workers=True, verbose=False)
    dm = build(cfg.data)
    dm.prepare_data()
    dm.setup()
    model = build(cfg.model, class_names=list(dm.class_names))
    timer = EpochTimer(device)
    trainer: pl.Trainer = build(cfg.trainer, callbacks=[timer], logger=False, enable_checkpointing=False)
    trainer.fit(model, datamodule=dm)
    return timer.times[1:]


def plain_epochs(cfg, device: str) -> list[float]:
    pl.seed_everything(0, workers=True, verbose=False)
    dm = build(cfg.data)
    dm.prepare_data()
    dm.setup()
    model = build(cfg.model, class_names=list(dm.class_names)).to(device).train()
    augment = FaceAugment(**cfg.data.augment).to(device)
    optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=float(cfg.model.optim.lr))
    images, targets = dm.decoded.images, dm.targets
    train = torch.as_tensor(dm.split.train)
    batch, times = int(cfg.data.batch_size), []
    for _ in range(int(cfg.trainer.max_epochs)):
        sync(device)
        start = time.perf_counter()
        order = train[torch.randperm(len(train))]
        for i in range(0, len(order), batch):
            idx = order[i : i + batch]
            x = augment(images[idx].to(device).float().div_(255.0))
            loss = torch.nn.functional.cross_entropy(model(x), targets[idx].to(device))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
        sync(device)
        times.append(time.perf_counter() - start)
    return times[1:]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[224, 112])
    ap.add_argument("--epochs", type=int, default=3, help="per run, the first one not counted")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each loop, alternating")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = ap.parse_args(argv)
    devices = ["cpu", "cuda"] if args.device == "auto" and torch.cuda.is_available() else (
        ["cpu"] if args.device == "auto" else [args.device])

    name = torch.cuda.get_device_name() if "cuda" in devices else "no GPU"
    print(f"model=deep, batch 16, 130 training images, {args.epochs - 1} timed epochs x {args.repeats} runs per "
          f"loop; torch {torch.__version__}, {torch.get_num_threads()} CPU threads, {name}")
    print(f"{'device':<6} {'size':>5} {'Lightning s/epoch':>18} {'plain s/epoch':>14} {'Lightning img/s':>16} "
          f"{'plain img/s':>12} {'ratio':>6}")
    ratios = []
    with tempfile.TemporaryDirectory() as cache:
        for device in devices:
            for size in args.sizes:
                cfg = config(size, args.epochs, device, cache)
                lit, plain = [], []
                for _ in range(args.repeats):
                    lit += lightning_epochs(cfg, device)
                    plain += plain_epochs(cfg, device)
                t_lit, t_plain = statistics.median(lit), statistics.median(plain)
                ratios.append(t_lit / t_plain)
                print(f"{device:<6} {size:>5} {t_lit:>18.3f} {t_plain:>14.3f} {130 / t_lit:>16.1f} "
                      f"{130 / t_plain:>12.1f} {t_lit / t_plain:>5.2f}x", flush=True)
    print(f"Lightning path / plain loop time per epoch, largest over the settings above, ratio: {max(ratios):.2f}x")


if __name__ == "__main__":
    main()
