"""Time per training epoch: fer-lightning's default training vs a plain PyTorch loop doing the same work, per size.

    uv run python bench/loop.py [--sizes 48 112 224] [--rows 640] [--epochs 3] [--repeats 2]
                                [--device auto|cpu|cuda] [--bare]

Data: a generated FER2013-format file (``write_fer2013``: ``--rows`` distinct synthetic 48 px faces, 80% train,
10% validation, 10% test, FER2013's own split) read with ``data=fer2013`` and stored at each size (upscaled above
48 px). Batch 64 at 48 px (``data=fer2013``, as FER2013 is trained) and 16 above (the paper's). Both sides train
``model=deep`` (MobileNetV2 + the Dense-256 head, random init) with Adam (lr 1e-4), the same kornia augmentation
on the device, the same thread count, in this one process, alternating (framework, plain, framework, ...) so that
both see the same machine load:

- framework: the data module, model and Trainer built from the Hydra config exactly as ``train()`` builds them
  (``build_trainer``): the default callbacks (best and last checkpoints, early stopping, exact resume, training
  pictures, confusion-matrix figures), the TensorBoard logger, ``log_every_n_steps: 1``, validation with the
  full metric set every epoch; progress as lines (what a run logging to a file gets);
- plain: per epoch a shuffled permutation, ``images[idx].to(device).float() / 255``, the augmentation, forward,
  cross-entropy, backward, step; then validation (forward without gradients, loss and accuracy) and
  ``torch.save`` of the model and optimiser (a last checkpoint to resume from).

``--bare``: the framework without validation, checkpoints and logger, and the plain loop without validation and
saving (the training step alone).

The first epoch of every run is a warm-up and not counted. Prints, per device and size, the median seconds per
epoch (training + validation + what follows an epoch) and training images/s of each side, and their ratio; then
after the smallest size's row its train:eval throughput ratio (training images/s : validation images/s, each
side); last, the largest framework/plain ratio (goal: at most 1.2x at every size).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from pytorch_lightning.callbacks import Callback

from fer_lightning.data.augment import FaceAugment
from fer_lightning.data.synthetic import write_fer2013
from fer_lightning.engine.build import build, build_trainer
from fer_lightning.engine.configs import config_dir
from fer_lightning.engine.training import prepare_data
from fer_lightning.runtime.progress import configure as configure_progress

BARE = ["+trainer.limit_val_batches=0", "+trainer.num_sanity_val_steps=0", "callbacks=none", "logger=none"]


def batch_size(size: int) -> int:
    """FER2013's batch at its own 48 px, the paper's above."""
    return 64 if size <= 48 else 16


def config(csv: Path, size: int, epochs: int, device: str, work: str, bare: bool, run: int):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose("train", overrides=[
            "data=fer2013", f"data.root={csv}", "model=deep", "model.backbone.weights=none",
            f"data.image_size={size}", f"data.batch_size={batch_size(size)}", f"data.cache_dir={work}/cache",
            f"trainer.accelerator={device}", f"trainer.max_epochs={epochs}", f"paths.output_dir={work}/run{run}",
            "trainer.enable_model_summary=false", "progress.mode=lines", *(BARE if bare else []),
        ])


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


class Times:
    """Seconds of each epoch (all of it), of its training batches and of its validation."""

    def __init__(self) -> None:
        self.epoch: list[float] = []
        self.train: list[float] = []
        self.val: list[float] = []

    def counted(self) -> Times:
        """Without the first (warm-up) epoch."""
        out = Times()
        out.epoch, out.train, out.val = self.epoch[1:], self.train[1:], self.val[1:]
        return out

    def __iadd__(self, other: Times) -> Times:
        self.epoch += other.epoch
        self.train += other.train
        self.val += other.val
        return self


class EpochTimer(Callback):
    """An epoch runs from one training epoch's start to the next one's (the last: to the end of training), so
    that validation, checkpoints, logging and every callback after it count."""

    def __init__(self, device: str) -> None:
        self.device, self.times, self.start, self.val_start = device, Times(), None, 0.0

    def _now(self) -> float:
        sync(self.device)
        return time.perf_counter()

    def _close(self) -> None:
        if self.start is not None:
            self.times.epoch.append(self._now() - self.start)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._close()
        self.start = self._now()

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.val_start = self._now()
            self.times.train.append(self.val_start - self.start)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.times.val.append(self._now() - self.val_start)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if len(self.times.train) < len(self.times.epoch) + 1:  # no validation this epoch
            self.times.train.append(self._now() - self.start)

    def on_train_end(self, trainer, pl_module) -> None:
        self._close()


def framework_epochs(cfg, device: str) -> Times:
    pl.seed_everything(0, workers=True, verbose=False)
    dm = prepare_data(cfg)
    model = build(cfg.model, class_names=list(dm.class_names))
    trainer = build_trainer(cfg, model, dm)
    timer = EpochTimer(device)
    trainer.callbacks.append(timer)
    trainer.fit(model, datamodule=dm, weights_only=True)
    return timer.times.counted()


def plain_epochs(cfg, device: str, bare: bool, out: Path) -> Times:
    pl.seed_everything(0, workers=True, verbose=False)
    dm = prepare_data(cfg)
    model = build(cfg.model, class_names=list(dm.class_names)).to(device).train()
    augment = FaceAugment(**cfg.data.augment).to(device)
    optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=float(cfg.model.optim.lr))
    images, targets = dm.decoded.images.to(device), dm.targets.to(device)
    train, val = torch.as_tensor(dm.split.train), torch.as_tensor(dm.split.val)
    batch, times = int(cfg.data.batch_size), Times()
    for _ in range(int(cfg.trainer.max_epochs)):
        sync(device)
        start = time.perf_counter()
        model.train()
        order = train[torch.randperm(len(train))].to(device)
        for i in range(0, len(order), batch):
            idx = order[i : i + batch]
            x = augment(images[idx].float().div_(255.0))
            loss = torch.nn.functional.cross_entropy(model(x), targets[idx])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
        sync(device)
        val_start = time.perf_counter()
        times.train.append(val_start - start)
        if not bare:
            model.eval()
            with torch.no_grad():
                logits = torch.cat([model(images[val[i : i + batch].to(device)].float().div_(255.0))
                                    for i in range(0, len(val), batch)])
            y = targets[val.to(device)]
            _ = float(torch.nn.functional.cross_entropy(logits, y)), float((logits.argmax(1) == y).float().mean())
            sync(device)
            times.val.append(time.perf_counter() - val_start)
            torch.save({"model": model.state_dict(), "optimiser": optimiser.state_dict()}, out / "last.pt")
        sync(device)
        times.epoch.append(time.perf_counter() - start)
    return times.counted()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[48, 112, 224])
    ap.add_argument("--rows", type=int, default=640, help="generated FER2013 rows (80%% of them train)")
    ap.add_argument("--epochs", type=int, default=3, help="per run, the first one not counted")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each loop, alternating")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--bare", action="store_true", help="training steps only: no validation, checkpoints, logger")
    args = ap.parse_args(argv)
    devices = ["cpu", "cuda"] if args.device == "auto" and torch.cuda.is_available() else (
        ["cpu"] if args.device == "auto" else [args.device])
    warnings.filterwarnings("ignore")
    for name in ("pytorch_lightning", "lightning.pytorch", "fer_lightning"):  # the table alone on stdout
        logging.getLogger(name).setLevel(logging.ERROR)
    configure_progress("lines")

    name = torch.cuda.get_device_name() if "cuda" in devices else "no GPU"
    n_train = int(args.rows * 0.8)
    what = "training steps only (--bare)" if args.bare else "default training (validation, checkpoints, logger)"
    print(f"model=deep, {what}; {n_train} training / {int(args.rows * 0.1)} validation images, batch "
          + ", ".join(f"{batch_size(s)} at {s} px" for s in args.sizes)
          + f"; {args.epochs - 1} timed epochs x {args.repeats} runs per loop; torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads, {name}")
    print(f"{'device':<6} {'size':>5} {'batch':>5} {'framework s/epoch':>18} {'plain s/epoch':>14} "
          f"{'framework train img/s':>22} {'plain train img/s':>18} {'ratio':>6}")
    ratios = []
    with tempfile.TemporaryDirectory() as work:
        csv = write_fer2013(Path(work) / "fer2013.csv", args.rows)
        run = 0
        for device in devices:
            for size in args.sizes:
                fw, plain = Times(), Times()
                for _ in range(args.repeats):
                    run += 1
                    cfg = config(csv, size, args.epochs, device, work, args.bare, run)
                    fw += framework_epochs(cfg, device)
                    plain += plain_epochs(cfg, device, args.bare, Path(work))
                t_fw, t_plain = statistics.median(fw.epoch), statistics.median(plain.epoch)
                ratios.append(t_fw / t_plain)
                rate_fw, rate_plain = n_train / statistics.median(fw.train), n_train / statistics.median(plain.train)
                print(f"{device:<6} {size:>5} {batch_size(size):>5} {t_fw:>18.3f} {t_plain:>14.3f} {rate_fw:>22.1f} "
                      f"{rate_plain:>18.1f} {t_fw / t_plain:>5.2f}x", flush=True)
                if fw.val and plain.val and size == min(args.sizes):  # at once: a long run may be cut short
                    n_val = int(args.rows * 0.1)
                    fw_val, pl_val = n_val / statistics.median(fw.val), n_val / statistics.median(plain.val)
                    print(f"{device} {size} px, training : validation images/s: framework {rate_fw:.1f} : "
                          f"{fw_val:.1f} = 1:{fw_val / rate_fw:.1f}, plain {rate_plain:.1f} : {pl_val:.1f} = "
                          f"1:{pl_val / rate_plain:.1f}", flush=True)
    print(f"framework / plain loop time per epoch, largest over the settings above, ratio: {max(ratios):.2f}x")


if __name__ == "__main__":
    main()
