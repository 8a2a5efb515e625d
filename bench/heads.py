"""A head on fixed features: the framework's training vs a plain PyTorch loop doing the same arithmetic.

    uv run python bench/heads.py [--size 224] [--epochs 30] [overrides ...]

Trains ``model=handcrafted recipe=converged`` (z-score, PCA, MLP head; 8 augmented copies of each training image)
on the synthetic set with ``fer-train``'s code and its default callbacks and logger (best and last checkpoints,
exact resume, TensorBoard, the confusion figures), early stopping off so that both sides run ``--epochs`` epochs.
The framework's time runs from ``on_train_start`` to ``on_fit_end``: every epoch with its validation, metrics,
logging and checkpoints; the features, the fitted layers and the augmented copies are built before it. Then a
plain loop trains a fresh head of the same shape on the same fitted layers and the same stored features: the same
batches per epoch (shuffled, ``data.batch_size``), the same augmented copies, AdamW and the cosine schedule of the
recipe, a validation pass (loss and accuracy) per epoch on the validation images' fused features, projected once
before the first epoch (they do not change; the framework keeps them too). Extra arguments are Hydra overrides.
Each side's CPU seconds (all threads) are printed beside its wall seconds, and their ratio: on a machine that other
jobs share, the CPU ratio is the steadier one. The last line is ``heads: framework / plain loop ratio: N.Nx`` (wall
time).
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from unittest import mock

import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir

from fer_lightning.engine import training
from fer_lightning.engine.configs import config_dir
from fer_lightning.models.components.heads import MLPHead


class Clock(pl.Callback):
    """Seconds (wall and CPU) from the start of training to the end of the fit; keeps the model it timed."""

    seen: dict = {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        Clock.seen.update(start=time.perf_counter(), cpu=time.process_time(), model=pl_module, epochs=0)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        Clock.seen["epochs"] += 1

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        Clock.seen["seconds"] = time.perf_counter() - Clock.seen["start"]
        Clock.seen["cpu_seconds"] = time.process_time() - Clock.seen["cpu"]


def plain_loop(model, epochs: int, batch_size: int) -> float:
    """Seconds of a plain loop training a fresh MLP on ``model``'s fitted layers, features and augmented copies."""
    data, fusion, views = model.data, copy.deepcopy(model.fusion), model.views
    torch.manual_seed(0)
    fusion.mlp = MLPHead(model.hparams["fitted_components"], model.num_classes, **fusion.mlp_kwargs)
    train_rows = torch.as_tensor(data.split.train, dtype=torch.long)
    val_rows = torch.as_tensor(data.split.val, dtype=torch.long)
    x_train, x_val = data.precomputed(train_rows), data.precomputed(val_rows)
    y_train, y_val = data.targets[train_rows], data.targets[val_rows]
    params = [p for p in fusion.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=model.optim.lr, weight_decay=model.optim.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    start = time.perf_counter()
    with torch.no_grad():
        val_fused = fusion.reduce(x_val)
    for epoch in range(epochs):
        fusion.train()
        for batch in torch.randperm(len(train_rows)).split(batch_size):
            blocks = {k: v[batch] for k, v in x_train.items()}
            if views is not None:
                blocks = views.swap(blocks, train_rows[batch], epoch)
            loss = torch.nn.functional.cross_entropy(fusion(blocks), y_train[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        schedule.step()
        fusion.eval()
        with torch.no_grad():
            logits = fusion.mlp(val_fused)
            torch.nn.functional.cross_entropy(logits, y_val), (logits.argmax(1) == y_val).float().mean()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--epochs", type=int, default=30)
    args, overrides = parser.parse_known_args()
    with tempfile.TemporaryDirectory() as out:
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            cfg = compose("train", overrides=[
                "model=handcrafted", "recipe=converged", f"data.image_size={args.size}",
                f"trainer.max_epochs={args.epochs}", f"recipe.head.max_epochs={args.epochs}",
                "callbacks.early_stopping=null", f"paths.output_dir={out}", *overrides])
        build_trainer = training.build_trainer

        def with_clock(*args, **kwargs):  # the trainer as train() builds it, and the clock last
            trainer = build_trainer(*args, **kwargs)
            trainer.callbacks.append(Clock())
            return trainer

        with mock.patch.object(training, "build_trainer", with_clock):
            training.train(cfg)
        framework, model = Clock.seen["seconds"], Clock.seen["model"]
        cpu = time.process_time()
        plain = plain_loop(model, Clock.seen["epochs"], int(cfg.data.batch_size))
        plain_cpu, framework_cpu = time.process_time() - cpu, Clock.seen["cpu_seconds"]
    n = len(model.data.split.train)
    print(f"handcrafted head, {n} training images x {Clock.seen['epochs']} epochs at {args.size} px "
          f"(+{model.copies} augmented copies each)")
    epochs = Clock.seen["epochs"]
    sides = (("framework (fer-train)", framework, framework_cpu), ("plain PyTorch loop", plain, plain_cpu))
    for name, wall, cpu in sides:
        print(f"{name:<28} {wall:8.2f} s  {1000 * wall / epochs:8.1f} ms/epoch   CPU {cpu:8.2f} s  "
              f"{1000 * cpu / epochs:8.1f} ms/epoch")
    print(f"heads: CPU seconds framework / plain loop: {framework_cpu / plain_cpu:.1f}x")
    print(f"heads: framework / plain loop ratio: {framework / plain:.1f}x")


if __name__ == "__main__":
    main()
