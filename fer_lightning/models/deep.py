"""The paper's deep-only model: fine-tuned MobileNetV2 GAP features -> Dense 256 -> ReLU -> Dropout 0.5 -> 7."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from fer_lightning.models.backbone import MobileNetV2Backbone
from fer_lightning.models.base import FERClassifier
from fer_lightning.models.components.heads import MLPHead
from fer_lightning.models.components.tta import TTA_VIEWS, tta_log_probs


class DeepFER(FERClassifier):
    """``(B, 1, H, W)`` grey in ``[0, 1]`` -> ``(B, num_classes)`` logits, trained end to end.

    ``backbone``: ``{"weights": "imagenet" | "none" | path, "trainable": bool}``;
    ``head``: keyword arguments of :class:`~fer_lightning.models.components.heads.MLPHead` (default: the paper's
    256 / 0.5); ``init_from``: another run's checkpoint to start from, applied by the training command before
    training starts (:func:`~fer_lightning.models.init_from.start_from`; recorded here, never read by the model);
    ``tta`` (:data:`~fer_lightning.models.components.tta.TTA_VIEWS`): ``none``, ``flip`` or ``flip_shift``, the
    mean probabilities of transformed copies of the face whenever the model is not training (validation, test,
    evaluation, prediction, exported files); the output is then their log.
    """

    model_name = "deep"

    def __init__(
        self,
        class_names: Sequence[str],
        backbone: dict[str, Any] | None = None,
        head: dict[str, Any] | None = None,
        optim: dict[str, Any] | None = None,
        class_weights: str = "none",
        channels_last: bool | str = False,
        compile: bool | str = False,
        init_from: str | None = None,
        tta: str = "none",
    ) -> None:
        super().__init__(class_names, optim=optim, class_weights=class_weights, channels_last=channels_last,
                         compile=compile)
        self.save_hyperparameters()
        self.init_from = init_from
        TTA_VIEWS.get(tta)
        self.tta = tta
        backbone = {"weights": "imagenet", "trainable": True, **(backbone or {})}
        head = {"hidden": [256], "dropout": [0.5], **(head or {})}
        self.backbone = MobileNetV2Backbone(**backbone)
        self.head = MLPHead(MobileNetV2Backbone.out_features, self.num_classes, **head)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.training or self.tta == "none":
            return self.head(self.backbone(images))
        return tta_log_probs(lambda x: self.head(self.backbone(x)), images, self.tta)
