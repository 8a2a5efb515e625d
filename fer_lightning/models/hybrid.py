"""The paper's proposed model: MobileNetV2 GAP features fused with HOG and LBP through fixed z-score and PCA."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from fer_lightning.features.cache import cached_blocks
from fer_lightning.features.extractor import HandcraftedFeatures
from fer_lightning.models.backbone import MobileNetV2Backbone
from fer_lightning.models.handcrafted import HandcraftedFER

DEEP_BLOCK = "deep"


class HybridFER(HandcraftedFER):
    """``{deep: GAP 1280, hog@s: ..., lbp@s: ...} -> z-score each -> concat -> PCA -> Dropout 0.5 -> BatchNorm
    -> 512 -> ReLU -> Dropout 0.5 -> 256 -> ReLU -> Dropout 0.3 -> num_classes``.

    ``backbone``: ``{"weights": "imagenet" | "none" | path, "checkpoint": a deep run's checkpoint or None,
    "trainable": bool}``. Frozen (the default), the backbone's GAP features of every image are computed once in
    :meth:`setup` (cached on disk under a digest of the weights) and looked up by image index; trainable, they
    are computed on each (augmented) batch and the backbone is fine-tuned through the fixed PCA. The z-score and
    PCA layers are fitted once in :meth:`setup`, on the training split only, before training.
    """

    model_name = "hybrid"

    def __init__(
        self,
        class_names: Sequence[str],
        features: HandcraftedFeatures | dict[str, Any],
        backbone: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """``kwargs``: the handcrafted model's ``pca``, ``head``, ``lr``, ``weight_decay``, ``fitted_components``,
        ``channels_last``, ``compile``."""
        super().__init__(class_names, features, **kwargs)
        backbone = {"weights": "imagenet", "checkpoint": None, "trainable": False, **(backbone or {})}
        self.backbone = MobileNetV2Backbone(**backbone)
        self.register_buffer("gap_table", None, persistent=False)  # frozen backbone: GAP of every image

    @property
    def frozen(self) -> bool:
        return not self.backbone.trainable

    def extra_block_dims(self) -> dict[str, int]:
        return {DEEP_BLOCK: MobileNetV2Backbone.out_features}

    def extra_train_blocks(self, datamodule: Any) -> dict[str, torch.Tensor]:
        datamodule.setup()
        images = datamodule.decoded.images
        device = self.trainer.strategy.root_device
        if self.frozen and self.gap_table is None:
            spec = {"dataset": datamodule.fingerprint, "image_size": int(images.shape[-1]),
                    "backbone": self.backbone.fingerprint()}
            blocks = cached_blocks(
                "gap", spec, self.extra_block_dims(), len(images), datamodule.cache_dir,
                lambda: {DEEP_BLOCK: self.backbone.gap_features(images, device)},
            )
            self.gap_table = blocks[DEEP_BLOCK]
        train_idx = torch.as_tensor(datamodule.split.train, dtype=torch.long)
        if self.gap_table is not None:
            return {DEEP_BLOCK: self.gap_table[train_idx]}
        return {DEEP_BLOCK: self.backbone.gap_features(images[train_idx], device)}

    def extra_blocks(self, batch: dict[str, Any] | None, images: torch.Tensor) -> dict[str, torch.Tensor]:
        if batch is not None and self.frozen and self.gap_table is not None and "index" in batch:
            return {DEEP_BLOCK: self.gap_table[batch["index"].to(self.gap_table.device)].to(images.device)}
        return {DEEP_BLOCK: self.backbone(images)}
