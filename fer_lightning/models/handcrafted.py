"""The paper's "LBP + HOG" baseline: z-scored HOG and LBP blocks -> PCA -> dropout/BN/MLP head. No CNN."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from fer_lightning.features.extractor import HandcraftedFeatures
from fer_lightning.heads import FusionHead
from fer_lightning.models.base import FERClassifier


class HandcraftedFER(FERClassifier):
    """``[HOG, LBP] -> z-score each -> concat -> PCA -> Dropout 0.5 -> BatchNorm -> 512 -> ReLU -> Dropout 0.5
    -> 256 -> ReLU -> Dropout 0.3 -> num_classes``.

    The z-score and PCA layers are fitted from the training split in :meth:`setup`, before training. Batches
    carry precomputed blocks under ``features`` (``features.source=precomputed``); otherwise, and when
    classifying raw images with ``forward``, the blocks are computed here on the module's device.
    """

    model_name = "handcrafted"
    uses_features = True  # the data module precomputes the handcrafted blocks for it

    def __init__(
        self,
        class_names: Sequence[str],
        features: HandcraftedFeatures | dict[str, Any],
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
        head = {"hidden": [512, 256], "dropout": [0.5, 0.3], "input_dropout": 0.5, "batchnorm": True, **(head or {})}
        self.fusion = FusionHead(
            self.extractor.block_dims(),
            self.num_classes,
            n_components=(pca or {}).get("n_components", 0.95),
            fitted_components=fitted_components,
            **head,
        )

    def setup(self, stage: str) -> None:
        if self.fusion.fitted or self._trainer is None or self.trainer.datamodule is None:
            return
        train_blocks = self.trainer.datamodule.train_features(self.extractor)
        self.hparams["fitted_components"] = self.fusion.fit(train_blocks)

    def blocks(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        if self.extractor.source == "precomputed" and "features" in batch:
            return batch["features"]
        return self.extractor(batch["image"])

    def logits(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.fusion(self.blocks(batch))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fusion(self.extractor(images))
