"""The paper's proposed model: MobileNetV2 GAP features fused with HOG and LBP through fixed z-score and PCA."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from fer_lightning.features.cache import cached_blocks
from fer_lightning.features.extractor import HandcraftedFeatures
from fer_lightning.heads import FusionHead
from fer_lightning.models.backbone import MobileNetV2Backbone
from fer_lightning.models.base import FERClassifier

DEEP_BLOCK = "deep"


class HybridFER(FERClassifier):
    """``{deep: GAP 1280, hog@s: ..., lbp@s: ...} -> z-score each -> concat -> PCA -> Dropout 0.5 -> BatchNorm
    -> 512 -> ReLU -> Dropout 0.5 -> 256 -> ReLU -> Dropout 0.3 -> num_classes``.

    ``backbone``: ``{"weights": "imagenet" | "none" | path, "checkpoint": a deep run's checkpoint or None,
    "trainable": bool}``. Frozen (the default), the backbone's GAP features of every image are computed once in
    :meth:`setup` (cached on disk under a digest of the weights) and looked up by image index; trainable, they
    are computed on each (augmented) batch and the backbone is fine-tuned through the fixed PCA. The z-score and
    PCA layers are fitted once in :meth:`setup`, on the training split only, before training.
    """

    model_name = "hybrid"
    uses_features = True

    def __init__(
        self,
        class_names: Sequence[str],
        features: HandcraftedFeatures | dict[str, Any],
        backbone: dict[str, Any] | None = None,
        pca: dict[str, Any] | None = None,
        head: dict[str, Any] | None = None,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        fitted_components: int | None = None,
    ) -> None:
        super().__init__(class_names, lr=lr, weight_decay=weight_decay)
        self.extractor = HandcraftedFeatures.build(features)
        self.save_hyperparameters(ignore=["features"])
        self.hparams["features"] = self.extractor.full_config()
        backbone = {"weights": "imagenet", "checkpoint": None, "trainable": False, **(backbone or {})}
        self.backbone = MobileNetV2Backbone(**backbone)
        head = {"hidden": [512, 256], "dropout": [0.5, 0.3], "input_dropout": 0.5, "batchnorm": True, **(head or {})}
        dims = {DEEP_BLOCK: MobileNetV2Backbone.out_features, **self.extractor.block_dims()}
        self.fusion = FusionHead(
            dims, self.num_classes, n_components=(pca or {}).get("n_components", 0.95),
            fitted_components=fitted_components, **head,
        )
        self.register_buffer("gap_table", None, persistent=False)  # frozen backbone: GAP of every image

    @property
    def frozen(self) -> bool:
        return not self.backbone.trainable

    def setup(self, stage: str) -> None:
        if self._trainer is None or self.trainer.datamodule is None:
            return
        dm = self.trainer.datamodule
        dm.setup()
        device = self.trainer.strategy.root_device
        images = dm.decoded.images
        if self.frozen and self.gap_table is None:
            spec = {"dataset": dm.fingerprint, "image_size": int(images.shape[-1]),
                    "backbone": self.backbone.fingerprint()}
            blocks = cached_blocks(
                "gap", spec, {DEEP_BLOCK: MobileNetV2Backbone.out_features}, len(images), dm.cache_dir,
                lambda: {DEEP_BLOCK: self.backbone.gap_features(images, device)},
            )
            self.gap_table = blocks[DEEP_BLOCK]
        if not self.fusion.fitted:
            train_idx = torch.as_tensor(dm.split.train, dtype=torch.long)
            if self.gap_table is not None:
                deep = self.gap_table[train_idx]
            else:
                deep = self.backbone.gap_features(images[train_idx], device)
            blocks = {DEEP_BLOCK: deep.cpu(), **dm.train_features(self.extractor)}
            self.hparams["fitted_components"] = self.fusion.fit(blocks)

    def _deep(self, batch: dict[str, Any]) -> torch.Tensor:
        if self.frozen and self.gap_table is not None and "index" in batch:
            return self.gap_table[batch["index"].to(self.gap_table.device)].to(batch["image"].device)
        return self.backbone(batch["image"])

    def _handcrafted(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        if self.extractor.source == "precomputed" and "features" in batch:
            return batch["features"]
        return self.extractor(batch["image"])

    def logits(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.fusion({DEEP_BLOCK: self._deep(batch), **self._handcrafted(batch)})

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fusion({DEEP_BLOCK: self.backbone(images), **self.extractor(images)})
