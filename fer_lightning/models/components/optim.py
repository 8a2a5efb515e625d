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

# model.optim.auto_augment: kornia's automatic augmentation policies (fer_lightning.data.augment.RecipeAugment)
AUTO_AUGMENTS = ("none", "rand", "trivial")
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
    "warmup_cosine": lambda opt, s, epochs: {"scheduler": warmup_cosine(opt, s.warmup_epochs, s.warmup_start, epochs),
                                              "interval": "epoch"},
    "plateau": lambda opt, s, epochs: {
        "scheduler": torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=0.5,
                                                               patience=max(1, s.patience // 3)),
        "monitor": "val/loss", "interval": "epoch"},
})


def warmup_cosine(opt: torch.optim.Optimizer, warmup_epochs: int, warmup_start: float,
                  epochs: int) -> torch.optim.lr_scheduler.LRScheduler:
    """A linear warmup from ``lr * warmup_start`` over ``warmup_epochs`` epochs, then a cosine decay to 0 at
    ``epochs``: torch's ``LinearLR`` then ``CosineAnnealingLR`` in a ``SequentialLR``, stepped once per epoch.

    Args:
        opt: the optimiser.
        warmup_epochs: epochs of warmup (0: the cosine alone).
        warmup_start: the first epoch's rate, as a fraction of ``lr``.
        epochs: the epoch budget (``max_epochs``).

    Examples:
        >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        >>> sched = warmup_cosine(opt, warmup_epochs=2, warmup_start=0.1, epochs=6)
        >>> rates = []
        >>> for _ in range(6):
        ...     rates.append(round(opt.param_groups[0]["lr"], 4))
        ...     opt.step()
        ...     sched.step()
        >>> rates
        [0.1, 0.55, 1.0, 0.8536, 0.5, 0.1464]
    """
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs - warmup_epochs))
    if warmup_epochs < 1:
        return cosine
    warmup = torch.optim.lr_scheduler.LinearLR(opt, start_factor=warmup_start, total_iters=warmup_epochs)
    return torch.optim.lr_scheduler.SequentialLR(opt, [warmup, cosine], milestones=[warmup_epochs])


@dataclass(frozen=True)
class OptimSettings:
    """``optimizer``: adam | adamw (decoupled weight decay) | sgd (momentum 0.9); ``scheduler``: none | cosine
    (annealed to 0 over ``max_epochs``) | plateau (halve the rate when ``val/loss`` has not improved for
    ``patience // 3`` epochs) | warmup_cosine (``warmup_epochs`` of linear warmup from ``lr * warmup_start``, then
    cosine to 0 at ``max_epochs``; per epoch). ``max_epochs`` and ``patience`` (early stopping on ``val/loss``) are
    read by the trainer and callback configs; ``label_smoothing`` goes to the cross-entropy loss.

    The modern recipe's primitives, every one off by default (docs/recipes.md): ``mixup`` / ``cutmix`` (Beta
    alpha of torchvision's MixUp / CutMix, 0: off; both on: one of them per batch, CutMix with probability
    ``cutmix_prob``), ``auto_augment`` (none | rand | trivial: kornia's RandAugment / TrivialAugment),
    ``erasing`` (probability of kornia's RandomErasing), ``ema`` (decay of an exponential moving average of the
    weights, 0: off), ``unfreeze_epoch`` (the backbone is frozen until this epoch, 0: trains from the start) and
    ``backbone_lr_factor`` (the backbone's learning rate = ``lr`` x this)."""

    optimizer: str = "adam"
    lr: float = 1e-4
    weight_decay: float = 0.0
    scheduler: str = "none"
    max_epochs: int = 50
    patience: int = 10
    label_smoothing: float = 0.0
    warmup_epochs: int = 0
    warmup_start: float = 0.1
    mixup: float = 0.0
    cutmix: float = 0.0
    cutmix_prob: float = 0.5
    auto_augment: str = "none"
    erasing: float = 0.0
    ema: float = 0.0
    unfreeze_epoch: int = 0
    backbone_lr_factor: float = 1.0

    @property
    def mixes(self) -> bool:
        """MixUp or CutMix is on."""
        return self.mixup > 0 or self.cutmix > 0

    @property
    def augments_images(self) -> bool:
        """A primitive that changes the training images (MixUp, CutMix, RandAugment/TrivialAugment, erasing)."""
        return self.mixes or self.auto_augment != "none" or self.erasing > 0

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
        for name in ("mixup", "cutmix"):
            number(name, 0.0, True)
        for name in ("erasing", "ema"):
            number(name, 0.0, True, 1.0)
        number("cutmix_prob", 0.0, True, 1.0 + 1e-12)
        number("warmup_start", 0.0, False, 1.0 + 1e-12)
        number("backbone_lr_factor", 0.0, False)
        choose(self.auto_augment, AUTO_AUGMENTS, f"{option}.auto_augment")
        for name, low in (("max_epochs", 1), ("patience", 1), ("warmup_epochs", 0), ("unfreeze_epoch", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise FERError(f"{option}.{name}={value!r}: give a whole number of epochs >= {low}")

    def configure(self, params: Iterable[Any], max_epochs: int | None = None) -> Any:
        """What ``LightningModule.configure_optimizers`` returns for these settings (``params``: parameters, or
        torch's parameter groups, dicts that may set their own ``lr``)."""
        opt = OPTIMIZERS.get(self.optimizer)(list(params), self)
        sched = SCHEDULERS.get(self.scheduler)(opt, self, int(max_epochs or self.max_epochs))
        return opt if sched is None else {"optimizer": opt, "lr_scheduler": sched}
