"""The modern recipe's training primitives, each from the library that implements it and each off by default
(``model.optim`` keys, :class:`~fer_lightning.models.components.optim.OptimSettings`): MixUp / CutMix (torchvision),
RandAugment / TrivialAugment and random erasing (kornia, :class:`~fer_lightning.data.augment.RecipeAugment`), an
exponential moving average of the weights (Lightning's ``WeightAveraging`` with torch's EMA), gradual unfreezing and a
learning rate of its own for the backbone (Lightning's ``BaseFinetuning``). :class:`Primitives` puts them together for
a model: the training batch, the callbacks, the optimiser's parameter groups.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BaseFinetuning, WeightAveraging
from pytorch_lightning.trainer.states import TrainerFn
from torch import nn
from torch.optim.swa_utils import get_ema_multi_avg_fn
from torchvision.transforms import v2

from fer_lightning.data.augment import RecipeAugment
from fer_lightning.errors import FERError


class BatchMixing(nn.Module):
    """MixUp and/or CutMix of a training batch (torchvision's ``transforms.v2``): the images mixed pairwise, the
    targets the same mixture of one-hot labels (rows summing to one). With both on, each batch draws one of them
    (``RandomChoice``), CutMix with probability ``cutmix_prob``.

    Args:
        num_classes: classes of the labels.
        mixup: Beta alpha of MixUp; 0: off.
        cutmix: Beta alpha of CutMix; 0: off.
        cutmix_prob: probability of CutMix when both are on.

    Shape:
        - Input: images :math:`(B, C, H, W)`, labels :math:`(B,)` class indices.
        - Output: images :math:`(B, C, H, W)`, targets :math:`(B, K)` probabilities.

    Examples:
        >>> _ = torch.manual_seed(0)
        >>> images, targets = BatchMixing(3, mixup=0.2)(torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 0]))
        >>> images.shape, targets.shape, torch.allclose(targets.sum(dim=1), torch.ones(4))
        (torch.Size([4, 1, 8, 8]), torch.Size([4, 3]), True)
    """

    def __init__(self, num_classes: int, mixup: float = 0.0, cutmix: float = 0.0, cutmix_prob: float = 0.5) -> None:
        super().__init__()
        choices = []
        if mixup > 0:
            choices.append((v2.MixUp(alpha=mixup, num_classes=num_classes), 1.0 - cutmix_prob if cutmix > 0 else 1.0))
        if cutmix > 0:
            choices.append((v2.CutMix(alpha=cutmix, num_classes=num_classes), cutmix_prob if mixup > 0 else 1.0))
        if not choices:
            raise ValueError("BatchMixing needs mixup > 0 or cutmix > 0")
        self.mix = v2.RandomChoice([t for t, _ in choices], p=[p for _, p in choices])

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mix(images, labels)


def ema_decay(decay: float, updates: int) -> float:
    """The decay of the weights' moving average after ``updates`` updates: ``decay``, warmed up as
    ``min(decay, (1 + updates) / (10 + updates))`` (TensorFlow's ``ExponentialMovingAverage`` with ``num_updates``).

    Examples:
        >>> ema_decay(0.9, 1), ema_decay(0.9, 10_000)
        (0.18181818181818182, 0.9)
    """
    return min(float(decay), (1.0 + updates) / (10.0 + updates))


def warmed_ema(decay: float) -> Any:
    """torch's EMA update (``get_ema_multi_avg_fn``) for ``AveragedModel(multi_avg_fn=...)``, at the warmed-up decay
    :func:`ema_decay` of the number of updates so far."""

    @torch.no_grad()
    def update(average: list[torch.Tensor], current: list[torch.Tensor], updates: torch.Tensor) -> None:
        get_ema_multi_avg_fn(ema_decay(decay, int(updates)))(average, current, updates)

    return update


class EMAWeights(WeightAveraging):
    """An exponential moving average of the weights (and BatchNorm statistics), updated after every optimiser step:
    Lightning's ``WeightAveraging`` with torch's ``get_ema_multi_avg_fn``. Validation while fitting runs on the
    averaged weights (so early stopping and the best checkpoint judge them), every checkpoint's ``state_dict`` holds
    them (what evaluating, predicting, exporting and late fusion read), and the raw weights and the average travel in
    the checkpoint too, so a resumed fit continues both.

    The decay is warmed up as TensorFlow's ``ExponentialMovingAverage(num_updates=...)`` and timm's EMA do: after
    ``n`` updates the old average weighs ``min(decay, (1 + n) / (10 + n))``. Without it the average starts from the
    first step's weights (the pretrained backbone and a random head) and a short fine-tuning never forgets them: with
    decay 0.99, 9 steps an epoch and 15 epochs, a quarter of the final average would still be the starting weights.

    Args:
        decay: weight of the old average at each step, once warmed up (0.99: about the last 100 steps).

    Examples:
        >>> EMAWeights(0.99).decay
        0.99
        >>> [round(ema_decay(0.99, n), 3) for n in (1, 10, 100, 1000)]
        [0.182, 0.55, 0.918, 0.99]
    """

    def __init__(self, decay: float) -> None:
        super().__init__(multi_avg_fn=warmed_ema(decay))
        self.decay = float(decay)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        with warnings.catch_warnings():  # our configure_model only sets speed options; nothing is sharded
            warnings.filterwarnings("ignore", message=".*overrides the configure_model.*")
            super().setup(trainer, pl_module, stage)

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING:  # after fit, the model holds the checkpoint that is evaluated
            super().on_validation_epoch_start(trainer, pl_module)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_validation_epoch_end(trainer, pl_module)


def _add_group_to_schedulers(scheduler: Any, factor: float) -> None:
    """A parameter group added to the optimiser, at ``factor`` times the first group's rate, in a torch scheduler's
    per-group lists (and in those of the schedulers a ``SequentialLR`` chains)."""
    for inner in getattr(scheduler, "_schedulers", []):
        _add_group_to_schedulers(inner, factor)
    for name in ("base_lrs", "_last_lr", "min_lrs"):
        values = getattr(scheduler, name, None)
        if isinstance(values, list) and values:
            values.append(values[0] * factor)


class GradualUnfreezing(BaseFinetuning):
    """The model's ``backbone`` frozen (BatchNorm included) until epoch ``epoch``, then trained with a learning rate
    of ``lr_factor`` times the head's, in a parameter group of its own (Lightning's ``BaseFinetuning``,
    ``unfreeze_and_add_param_group``); the learning-rate scheduler keeps the two rates in that ratio.

    Args:
        epoch: the epoch (from 0) at which the backbone starts training.
        lr_factor: the backbone's learning rate over the head's.

    Examples:
        >>> GradualUnfreezing(epoch=2, lr_factor=0.1).epoch
        2
    """

    def __init__(self, epoch: int, lr_factor: float = 1.0) -> None:
        super().__init__()
        self.epoch, self.lr_factor = int(epoch), float(lr_factor)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":  # validating or testing after the fit leaves the trained backbone as it is
            super().setup(trainer, pl_module, stage)

    def freeze_before_training(self, pl_module: pl.LightningModule) -> None:
        self.freeze(pl_module.backbone, train_bn=False)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        if trainer.current_epoch < self.epoch:  # frozen BatchNorm normalises with its running statistics, as the
            for module in pl_module.backbone.modules():  # validation does (Lightning's freeze leaves batch statistics)
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()

    def finetune_function(self, pl_module: pl.LightningModule, epoch: int, optimizer: torch.optim.Optimizer) -> None:
        if epoch >= self.epoch:
            pl_module.backbone.train()
        if epoch == self.epoch:
            self.unfreeze_and_add_param_group(pl_module.backbone, optimizer, lr=optimizer.param_groups[0]["lr"]
                                              * self.lr_factor, initial_denom_lr=1.0, train_bn=True)
            for config in pl_module.trainer.lr_scheduler_configs:
                _add_group_to_schedulers(config.scheduler, self.lr_factor)
        elif epoch > self.epoch:  # a fit resumed after the unfreezing: the group is restored, the flags are not
            self.make_trainable(pl_module.backbone)


class Primitives:
    """What a model's :class:`~fer_lightning.models.components.optim.OptimSettings` turn on, applied by
    :class:`~fer_lightning.models.base.FERClassifier`: the training batch (RandAugment / TrivialAugment, erasing,
    then MixUp / CutMix, whose soft targets go to the loss as ``batch["soft"]``), the callbacks (EMA, gradual
    unfreezing) and the optimiser's parameter groups (the backbone at ``backbone_lr_factor`` times ``lr``).
    Everything off: the batch, the callbacks and the parameters are left exactly as they were.

    Examples:
        >>> from fer_lightning.models.components.optim import OptimSettings
        >>> p = Primitives(OptimSettings(mixup=0.2), num_classes=3)
        >>> out = p.batch({"image": torch.rand(2, 1, 8, 8), "label": torch.tensor([0, 2])})
        >>> out["soft"].shape
        torch.Size([2, 3])
    """

    def __init__(self, settings: Any, num_classes: int) -> None:
        self.settings = settings
        self.augment = (RecipeAugment(settings.auto_augment, settings.erasing)
                        if settings.auto_augment != "none" or settings.erasing > 0 else None)
        self.mixing = (BatchMixing(num_classes, settings.mixup, settings.cutmix, settings.cutmix_prob)
                       if settings.mixes else None)

    def check(self, model: nn.Module, images_only: bool) -> None:
        """One line when a primitive does not apply to this model: image primitives need a model that classifies
        the images themselves; unfreezing and a backbone rate need a trainable ``backbone``."""
        s = self.settings
        if (s.augments_images or s.ema > 0) and not images_only:
            raise FERError("model.optim.mixup/cutmix/auto_augment/erasing/ema apply to models that classify the "
                           "images (deep), not handcrafted blocks: set them to 0 / none for this model")
        backbone = getattr(model, "backbone", None)
        if (s.unfreeze_epoch > 0 or s.backbone_lr_factor != 1.0) and not getattr(backbone, "trainable", False):
            raise FERError("model.optim.unfreeze_epoch / backbone_lr_factor need a model with a trainable backbone "
                           "(model=deep or hybrid_e2e): set them to 0 / 1.0 for this model")

    def batch(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The training batch with its images augmented and mixed (``soft``: the mixed targets)."""
        if self.augment is None and self.mixing is None:
            return batch
        batch = dict(batch)
        if self.augment is not None:
            batch["image"] = self.augment(batch["image"])
        if self.mixing is not None:
            if "soft" in batch:
                raise FERError("model.optim.mixup/cutmix with soft labels (FER+ votes) is not supported: set them to 0")
            batch["image"], batch["soft"] = self.mixing(batch["image"], batch["label"])
        return batch

    def callbacks(self) -> list[pl.Callback]:
        """EMA of the weights and gradual unfreezing, when on."""
        s, out = self.settings, []
        if s.ema > 0:
            out.append(EMAWeights(s.ema))
        if s.unfreeze_epoch > 0:
            out.append(GradualUnfreezing(s.unfreeze_epoch, s.backbone_lr_factor))
        return out

    def param_groups(self, model: nn.Module, params: list[nn.Parameter]) -> list[Any]:
        """``params`` as they are, or (``backbone_lr_factor`` != 1, no unfreezing) the backbone's in a group of its
        own at ``lr`` x the factor."""
        s = self.settings
        if s.backbone_lr_factor == 1.0 or s.unfreeze_epoch > 0:
            return params
        backbone = {id(p) for p in model.backbone.parameters()}
        return [{"params": [p for p in params if id(p) not in backbone]},
                {"params": [p for p in params if id(p) in backbone], "lr": s.lr * s.backbone_lr_factor}]
