"""Time per training epoch: fer-lightning's default training vs a plain PyTorch loop doing the same work, per size.

    uv run python bench/loop.py [--sizes 48 112 224] [--rows 1280] [--epochs 3] [--repeats 3] [--threads N]
                                [--device auto|cpu|cuda] [--bare]

Data: a generated FER2013-format file (``write_fer2013``: ``--rows`` distinct synthetic 48 px faces, 80% train,
10% validation, 10% test, FER2013's own split) read with ``data=fer2013`` and stored at each size (upscaled above
48 px). Batch 64 at 48 px (``data=fer2013``, as FER2013 is trained) and 16 above (the paper's). Both sides train
``model=deep`` (MobileNetV2 + the Dense-256 head, random init) with Adam (lr 1e-4) and the default augmentation
(``data.augment``, kornia, on the device), with the same torch thread count (``--threads``, set once and checked
after every run), in this one process:

- framework: the data module, model and Trainer built from the Hydra config exactly as ``train()`` builds them
  (``build_trainer``): the default callbacks (best and last checkpoints, early stopping, exact resume, training
  pictures, confusion-matrix figures), the TensorBoard logger, ``log_every_n_steps: 1``, validation with the
  full metric set every epoch; progress as lines (what a run logging to a file gets);
- plain: per epoch a shuffled permutation, ``images[idx].to(device).float() / 255``, the augmentation, forward,
  cross-entropy, backward, step; then validation (forward without gradients, loss and accuracy) and
  ``torch.save`` of the model and optimiser (a last checkpoint to resume from).

The two alternate epoch by epoch (plain, framework, plain, framework, ...): each framework epoch starts right after
a plain epoch, run from a callback between the framework's epochs and outside its clock, so that each pair of
epochs sees the same machine load. A framework epoch runs from its start to the next one's (validation,
checkpoints, logging and every callback after it count); the last one ends where training ends, before the
end-of-fit work (the last checkpoint and figure written once per run). The first epoch of each side is a warm-up
and not counted. ``--repeats`` fresh runs per size.

``--bare``: the framework without validation, checkpoints and logger, and the plain loop without validation and
saving (the training step alone).

Prints, per device and size: the median seconds per epoch and training images/s of each side; the median over
the epoch pairs of framework / plain wall time (``ratio``) with its lowest and highest pair (``spread``), and the
same for process CPU time (``cpu ratio``: what the process itself computed, less sensitive to other jobs on the
machine); then, at the smallest size, the train:eval throughput (training images/s : validation images/s) of each
side; last, the largest ``ratio`` over the sizes (goal: at most 1.2x at every size).
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
    """Per epoch: wall seconds of all of it, of its training batches and of its validation; process CPU seconds."""

    def __init__(self, epoch=(), train=(), val=(), cpu=()) -> None:
        self.epoch, self.train, self.val, self.cpu = list(epoch), list(train), list(val), list(cpu)

    def counted(self) -> Times:
        """Without the first (warm-up) epoch."""
        return Times(self.epoch[1:], self.train[1:], self.val[1:], self.cpu[1:])

    def __iadd__(self, other: Times) -> Times:
        for name in ("epoch", "train", "val", "cpu"):
            getattr(self, name).extend(getattr(other, name))
        return self


class Clock:
    """Wall and process CPU time since :meth:`start`, the device synchronised at both ends."""

    def __init__(self, device: str) -> None:
        self.device, self.wall, self.cpu = device, 0.0, 0.0

    def now(self) -> tuple[float, float]:
        sync(self.device)
        return time.perf_counter(), time.process_time()

    def start(self) -> None:
        self.wall, self.cpu = self.now()

    def since(self) -> tuple[float, float]:
        wall, cpu = self.now()
        return wall - self.wall, cpu - self.cpu


class PlainLoop:
    """The plain PyTorch loop, one epoch per :meth:`epoch` call (its times appended to ``times``)."""

    def __init__(self, cfg, device: str, bare: bool, out: Path) -> None:
        dm = prepare_data(cfg)
        self.model = build(cfg.model, class_names=list(dm.class_names)).to(device).train()
        self.augment = FaceAugment(**cfg.data.augment).to(device)
        self.optimiser = torch.optim.Adam([p for p in self.model.parameters() if p.requires_grad],
                                          lr=float(cfg.model.optim.lr))
        self.images, self.targets = dm.decoded.images.to(device), dm.targets.to(device)
        self.train_idx, self.val_idx = torch.as_tensor(dm.split.train), torch.as_tensor(dm.split.val)
        self.batch, self.device, self.bare, self.out = int(cfg.data.batch_size), device, bare, out
        self.times, self.clock = Times(), Clock(device)

    def _inputs(self, idx: torch.Tensor) -> torch.Tensor:
        return self.images[idx].float().div_(255.0)

    def epoch(self) -> None:
        model, batch = self.model, self.batch
        self.clock.start()
        model.train()
        order = self.train_idx[torch.randperm(len(self.train_idx))].to(self.device)
        for i in range(0, len(order), batch):
            idx = order[i : i + batch]
            loss = torch.nn.functional.cross_entropy(model(self.augment(self._inputs(idx))), self.targets[idx])
            self.optimiser.zero_grad(set_to_none=True)
            loss.backward()
            self.optimiser.step()
        train, _ = self.clock.since()
        self.times.train.append(train)
        if not self.bare:
            model.eval()
            val = self.val_idx.to(self.device)
            with torch.no_grad():
                logits = torch.cat([model(self._inputs(val[i : i + batch])) for i in range(0, len(val), batch)])
            y = self.targets[val]
            _ = float(torch.nn.functional.cross_entropy(logits, y)), float((logits.argmax(1) == y).float().mean())
            self.times.val.append(self.clock.since()[0] - train)
            torch.save({"model": model.state_dict(), "optimiser": self.optimiser.state_dict()}, self.out / "last.pt")
        wall, cpu = self.clock.since()
        self.times.epoch.append(wall)
        self.times.cpu.append(cpu)


class Interleave(Callback):
    """Times the framework's epochs and runs one epoch of ``plain`` before each, outside the framework's clock.

    A framework epoch runs from one training epoch's start to the next one's, the last one to the start of
    ``on_train_end`` (this callback goes first, before the end-of-fit work of the others)."""

    def __init__(self, plain: PlainLoop, device: str) -> None:
        self.plain, self.times, self.clock, self.open, self.val_start = plain, Times(), Clock(device), False, 0.0

    def _close(self) -> None:
        if self.open:
            wall, cpu = self.clock.since()
            self.times.epoch.append(wall)
            self.times.cpu.append(cpu)
            if len(self.times.train) < len(self.times.epoch):  # no validation this epoch
                self.times.train.append(wall)
            self.open = False

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._close()
        self.plain.epoch()
        self.clock.start()
        self.open = True

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.val_start = self.clock.since()[0]
            self.times.train.append(self.val_start)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.times.val.append(self.clock.since()[0] - self.val_start)

    def on_train_end(self, trainer, pl_module) -> None:
        self._close()


def interleaved_epochs(cfg, device: str, bare: bool, out: Path) -> tuple[Times, Times]:
    """(framework, plain) times of one run of ``cfg.trainer.max_epochs`` epochs each, warm-up left out."""
    pl.seed_everything(0, workers=True, verbose=False)
    plain = PlainLoop(cfg, device, bare, out)
    dm = prepare_data(cfg)
    model = build(cfg.model, class_names=list(dm.class_names))
    trainer = build_trainer(cfg, model, dm)
    timer = Interleave(plain, device)
    trainer.callbacks.insert(0, timer)
    trainer.fit(model, datamodule=dm, weights_only=True)
    return timer.times.counted(), plain.times.counted()


def spread(values: list[float]) -> str:
    return f"{min(values):.2f}-{max(values):.2f}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[48, 112, 224])
    ap.add_argument("--rows", type=int, default=1280, help="generated FER2013 rows (80%% of them train)")
    ap.add_argument("--epochs", type=int, default=3, help="per run and side, the first one not counted")
    ap.add_argument("--repeats", type=int, default=3, help="fresh runs per size")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads, both sides")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--bare", action="store_true", help="training steps only: no validation, checkpoints, logger")
    args = ap.parse_args(argv)
    devices = ["cpu", "cuda"] if args.device == "auto" and torch.cuda.is_available() else (
        ["cpu"] if args.device == "auto" else [args.device])
    warnings.filterwarnings("ignore")
    for name in ("pytorch_lightning", "lightning.pytorch", "fer_lightning"):  # the table alone on stdout
        logging.getLogger(name).setLevel(logging.ERROR)
    configure_progress("lines")
    torch.set_num_threads(args.threads)

    name = torch.cuda.get_device_name() if "cuda" in devices else "no GPU"
    n_train, n_val = int(args.rows * 0.8), int(args.rows * 0.1)
    what = "training steps only (--bare)" if args.bare else "default training (validation, checkpoints, logger)"
    print(f"model=deep, {what}; {n_train} training / {n_val} validation images, batch "
          + ", ".join(f"{batch_size(s)} at {s} px" for s in args.sizes)
          + f"; {args.epochs - 1} timed epochs x {args.repeats} runs, epochs alternating; torch {torch.__version__},"
          f" {args.threads} CPU threads, {name}")
    print(f"{'device':<6} {'size':>5} {'batch':>5} {'framework s/epoch':>18} {'plain s/epoch':>14} "
          f"{'framework train img/s':>22} {'plain train img/s':>18} {'ratio':>6} {'spread':>10} {'cpu ratio':>10}")
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
                    one_fw, one_plain = interleaved_epochs(cfg, device, args.bare, Path(work))
                    fw += one_fw
                    plain += one_plain
                    if torch.get_num_threads() != args.threads:
                        raise RuntimeError(f"torch threads changed to {torch.get_num_threads()} during the run")
                wall = [f / p for f, p in zip(fw.epoch, plain.epoch, strict=True)]
                cpu = [f / p for f, p in zip(fw.cpu, plain.cpu, strict=True)]
                ratios.append(statistics.median(wall))
                rate_fw, rate_plain = n_train / statistics.median(fw.train), n_train / statistics.median(plain.train)
                print(f"{device:<6} {size:>5} {batch_size(size):>5} {statistics.median(fw.epoch):>18.3f} "
                      f"{statistics.median(plain.epoch):>14.3f} {rate_fw:>22.1f} {rate_plain:>18.1f} "
                      f"{ratios[-1]:>5.2f}x {spread(wall):>10} {statistics.median(cpu):>9.2f}x", flush=True)
                if fw.val and plain.val and size == min(args.sizes):  # at once: a long run may be cut short
                    fw_val, pl_val = n_val / statistics.median(fw.val), n_val / statistics.median(plain.val)
                    print(f"{device} {size} px, training : validation images/s: framework {rate_fw:.1f} : "
                          f"{fw_val:.1f} = 1:{fw_val / rate_fw:.1f}, plain {rate_plain:.1f} : {pl_val:.1f} = "
                          f"1:{pl_val / rate_plain:.1f}", flush=True)
    print(f"framework / plain loop time per epoch (median of the epoch pairs), largest over the settings above, "
          f"ratio: {max(ratios):.2f}x")


if __name__ == "__main__":
    main()
