"""The paper's deep-only model: fine-tuned MobileNetV2 GAP features -> Dense 256 -> ReLU -> Dropout 0.5 -> 7."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from fer_lightning.models.backbone import MobileNetV2Backbone
from fer_lightning.models.base import FERClassifier
from fer_lightning.models.components.heads import MLPHead


class DeepFER(FERClassifier):
    """``(B, 1, H, W)`` grey in ``[0, 1]`` -> ``(B, num_classes)`` logits, trained end to end.

    ``backbone``: ``{"weights": "imagenet" | "none" | path, "trainable": bool}``;
    ``head``: keyword arguments of :class:`~fer_lightning.models.components.heads.MLPHead` (default: the paper's
    256 / 0.5); ``init_from``: another run's checkpoint to start from, applied by the training command before
    training starts (:func:`~fer_lightning.models.init_from.start_from`; recorded here, never read by the model).
    """

    model_name = "deep"

    def __init__(
        self,
        class_names: Sequence[str],
        backbone: dict[str, Any] | None = None,
        head: dict[str, Any] | None = None,
        optim: dict[str, Any] | None = None,
        class_weights: str = "none",
        channels_last: bool = False,
        compile: bool | str = False,
        init_from: str | None = None,
    ) -> None:
        super().__init__(class_names, optim=optim, class_weights=class_weights, channels_last=channels_last,
                         compile=compile)
        self.save_hyperparameters()
        self.init_from = init_from
        backbone = {"weights": "imagenet", "trainable": True, **(backbone or {})}
        head = {"hidden": [256], "dropout": [0.5], **(head or {})}
        self.backbone = MobileNetV2Backbone(**backbone)
        self.head = MLPHead(MobileNetV2Backbone.out_features, self.num_classes, **head)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))
