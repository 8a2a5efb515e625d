"""Optimisation settings of a model (one section of a ``recipe``): optimiser, learning rate, weight decay,
learning-rate schedule and the epoch budget, checked once and turned into Lightning's optimiser config.

``conf/recipe/<name>.yaml`` holds two sections, ``finetune`` (models that train a CNN backbone) and ``head``
(classifiers on fixed features); each model config takes its ``optim`` node from one of them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch

from fer_lightning.errors import FERError
from fer_lightning.runtime.registry import Registry, choose

# model.optim.optimizer: name -> (parameters, settings) -> a torch optimiser
OPTIMIZERS: Registry[Callable[[list, Any], torch.optim.Optimizer]] = Registry("model.optim.optimizer", {
    "adam": lambda params, s: torch.optim.Adam(params, lr=s.lr, weight_decay=s.weight_decay),
    "adamw": lambda params, s: torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay),
    "sgd": lambda params, s: torch.optim.SGD(params, lr=s.lr, weight_decay=s.weight_decay, momentum=0.9),
})
# model.optim.scheduler: name -> (optimiser, settings, epochs) -> Lightning's lr_scheduler entry (None: a constant rate)
SCHEDULERS: Registry[Callable[[Any, Any, int], dict[str, Any] | None]] = Registry("model.optim.scheduler", {
    "none": lambda opt, s, epochs: None,
    "cosine": lambda opt, s, epochs: {
        "scheduler": torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs)), "interval": "epoch"},
    "plateau": lambda opt, s, epochs: {
        "scheduler": torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=0.5,
                                                               patience=max(1, s.patience // 3)),
        "monitor": "val/loss", "interval": "epoch"},
})


@dataclass(frozen=True)
class OptimSettings:
    """``optimizer``: adam | adamw (decoupled weight decay) | sgd (momentum 0.9); ``scheduler``: none | cosine
    (annealed to 0 over ``max_epochs``) | plateau (halve the rate when ``val/loss`` has not improved for
    ``patience // 3`` epochs). ``max_epochs`` and ``patience`` (early stopping on ``val/loss``) are read by the
    trainer and callback configs; ``label_smoothing`` goes to the cross-entropy loss."""

    optimizer: str = "adam"
    lr: float = 1e-4
    weight_decay: float = 0.0
    scheduler: str = "none"
    max_epochs: int = 50
    patience: int = 10
    label_smoothing: float = 0.0

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None, option: str = "model.optim") -> OptimSettings:
        cfg = dict(cfg or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise FERError(f"{option}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(known))}")
        s = cls(**cfg)
        s._check(option)
        return s

    def _check(self, option: str) -> None:
        def number(name: str, low: float, low_ok: bool, high: float = math.inf) -> None:
            value = getattr(self, name)
            try:
                v = float(value)
            except (TypeError, ValueError):
                raise FERError(f"{option}.{name}={value!r} is not a number") from None
            if not math.isfinite(v) or v < low or (v == low and not low_ok) or v >= high:
                bound = f"{'>=' if low_ok else '>'} {low:g}" + (f" and < {high:g}" if high != math.inf else "")
                raise FERError(f"{option}.{name}={value!r}: give a finite number {bound}")

        choose(self.optimizer, OPTIMIZERS, f"{option}.optimizer")
        choose(self.scheduler, SCHEDULERS, f"{option}.scheduler")
        number("lr", 0.0, False)
        number("weight_decay", 0.0, True)
        number("label_smoothing", 0.0, True, 1.0)
        for name in ("max_epochs", "patience"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise FERError(f"{option}.{name}={value!r}: give a whole number of epochs >= 1")

    def configure(self, params: Iterable[torch.nn.Parameter], max_epochs: int | None = None) -> Any:
        """What ``LightningModule.configure_optimizers`` returns for these settings."""
        opt = OPTIMIZERS.get(self.optimizer)(list(params), self)
        sched = SCHEDULERS.get(self.scheduler)(opt, self, int(max_epochs or self.max_epochs))
        return opt if sched is None else {"optimizer": opt, "lr_scheduler": sched}
