"""The paper's proposed model: MobileNetV2 GAP features fused with HOG and LBP through fixed z-score and PCA."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from fer_lightning.data.contract import DataNeeds, ModelData
from fer_lightning.data.splits import inner_split
from fer_lightning.errors import FERError
from fer_lightning.features.extractor import HandcraftedFeatures
from fer_lightning.features.tables import block_store
from fer_lightning.models.backbone import MobileNetV2Backbone
from fer_lightning.models.handcrafted import HandcraftedFER

DEEP_BLOCK = "deep"
log = logging.getLogger(__name__)


class HybridFER(HandcraftedFER):
    """``{deep: GAP 1280, hog@s: ..., lbp@s: ...} -> z-score each -> concat -> PCA -> Dropout 0.5 -> BatchNorm
    -> 512 -> ReLU -> Dropout 0.5 -> 256 -> ReLU -> Dropout 0.3 -> num_classes``.

    ``backbone``: ``{"weights": "imagenet" | "none" | path, "checkpoint": a deep run's checkpoint or None,
    "trainable": bool, "oof_folds": k, "oof_checkpoints": [k deep checkpoints]}`` (out-of-fold training
    features, see :meth:`_out_of_fold`). Frozen (the default), the backbone's GAP features of every image are
    computed once in :meth:`prepare` (in batches, into a memory-mapped store under a digest of the weights) and
    looked up by image index; trainable, they are computed on each (augmented) batch and the backbone is
    fine-tuned through the fixed PCA. The z-score and PCA layers are fitted once in :meth:`prepare`, on (a sample
    of) the training split only, before training.
    """

    model_name = "hybrid"
    # the handcrafted blocks come from the data module; in a pipeline, it takes the deep stage's fine-tuned backbone
    needs = DataNeeds(handcrafted_blocks=True, fuses_backbone=True)

    def __init__(
        self,
        class_names: Sequence[str],
        features: HandcraftedFeatures | dict[str, Any],
        backbone: dict[str, Any] | None = None,
        init_from: str | None = None,
        **kwargs: Any,
    ) -> None:
        """``init_from``: another run's checkpoint whose backbone to start from, applied by the training command
        (:func:`~fer_lightning.models.init_from.start_from`); ``kwargs``: the handcrafted model's ``pca``,
        ``head``, ``fusion``, ``optim``, ``fitted_components``, ``channels_last``, ``compile``."""
        super().__init__(class_names, features, **kwargs)
        backbone = {"weights": "imagenet", "checkpoint": None, "trainable": False, **(backbone or {})}
        if init_from and backbone["checkpoint"]:
            raise FERError(f"model.init_from={init_from} and model.backbone.checkpoint={backbone['checkpoint']} both "
                           "name the backbone to start from; give one of them")
        self.init_from = init_from
        self.oof_folds = int(backbone.pop("oof_folds", 0) or 0)
        self.oof_checkpoints = list(backbone.pop("oof_checkpoints", None) or [])
        if self.oof_folds and backbone["trainable"]:
            raise FERError("model.backbone.oof_folds needs a frozen backbone (model.backbone.trainable=false)")
        if self.copies and backbone["trainable"]:
            raise FERError("model.augment.copies needs a frozen backbone (model.backbone.trainable=false): a trainable "
                           "one already sees augmented images; set model.augment.copies=0")
        if self.copies and self.oof_folds:
            raise FERError("model.augment.copies and model.backbone.oof_folds cannot be combined (the copies' GAP "
                           "features would not be out-of-fold); set one of them to 0")
        self.backbone = MobileNetV2Backbone(**backbone)
        self.register_buffer("gap_table", None, persistent=False)  # frozen backbone: GAP of every image

    @property
    def frozen(self) -> bool:
        return not self.backbone.trainable

    @property
    def reads_images(self) -> bool:
        """A trainable backbone reads the (augmented) images; a frozen one's GAP features are looked up by index
        (once its table is built, see :meth:`extra_blocks`)."""
        return super().reads_images or not (self.frozen and self.gap_table is not None)

    def extra_block_dims(self) -> dict[str, int]:
        return {DEEP_BLOCK: MobileNetV2Backbone.out_features}

    def extra_train_blocks(self, data: ModelData, rows: Any) -> dict[str, torch.Tensor]:
        images = data.images
        device = self.trainer.strategy.root_device
        if self.frozen and self.gap_table is None:
            spec = {"dataset": data.fingerprint, "image_size": int(images.shape[-1]),
                    "backbone": self.backbone.fingerprint()}
            # computed on another device they differ in their last bits: their own table (the CPU keeps its key).
            # The layout is always the plain one here: setup runs before configure_model applies channels_last
            if device.type != "cpu":
                spec["device"] = device.type
            store = block_store(
                "gap", spec, self.extra_block_dims(), len(images), data.cache_dir,
                lambda a, b: {DEEP_BLOCK: self.backbone.gap_features(images[a:b], device)}, batch_size=256,
            )
            self.gap_table = store.tensor(DEEP_BLOCK)
            if self.oof_folds:
                self.gap_table = self._out_of_fold(data, self.gap_table.clone(), device)
        train_idx = torch.as_tensor(rows, dtype=torch.long)
        if self.gap_table is not None:
            return {DEEP_BLOCK: self.gap_table[train_idx]}
        return {DEEP_BLOCK: self.backbone.gap_features(images[train_idx], device)}

    def _out_of_fold(self, data: ModelData, table: torch.Tensor, device: torch.device) -> torch.Tensor:
        """``table`` with each training image's GAP features taken from the backbone fine-tuned without it:
        ``oof_checkpoints[i]`` is the deep run of inner fold ``i`` (``data.inner_folds=oof_folds``), whose held-out
        images are exactly that fold, so the head trains on features that behave like test features."""
        if len(self.oof_checkpoints) != self.oof_folds:
            raise FERError(
                f"model.backbone.oof_folds={self.oof_folds} needs {self.oof_folds} out-of-fold deep checkpoints "
                f"(model.backbone.oof_checkpoints, got {len(self.oof_checkpoints)}); the pipeline "
                "(experiment=paper or fusion_ablation) fine-tunes them for you"
            )
        split = data.split
        covered = torch.zeros(len(table), dtype=torch.bool)
        for i, ckpt in enumerate(self.oof_checkpoints):
            held = inner_split(split, data.labels, data.subjects, folds=self.oof_folds, fold=i, seed=data.seed,
                               by_subject=data.subject_independent).test
            held = torch.as_tensor(held, dtype=torch.long)
            fold_backbone = MobileNetV2Backbone(weights="none", trainable=False, checkpoint=ckpt)
            table[held] = fold_backbone.gap_features(data.images[held], device)
            covered[held] = True
        if not bool(covered[torch.as_tensor(split.train, dtype=torch.long)].all()):
            raise RuntimeError("out-of-fold GAP features do not cover every training image")
        log.info("hybrid: GAP features of the %d training images are out-of-fold (%d backbones)",
                 len(split.train), self.oof_folds)
        return table

    def extra_view_blocks(self, images: torch.Tensor, device: torch.device) -> dict[str, torch.Tensor]:
        return {DEEP_BLOCK: self.backbone.gap_features(images, device).to(images.device)}

    def extra_blocks_stored(self, batch: dict[str, Any]) -> bool:
        return self.frozen and self.gap_table is not None and "index" in batch

    def extra_blocks(self, batch: dict[str, Any] | None, images: torch.Tensor) -> dict[str, torch.Tensor]:
        if batch is not None and self.extra_blocks_stored(batch):
            return {DEEP_BLOCK: self.gap_table[batch["index"].to(self.gap_table.device)].to(images.device)}
        return {DEEP_BLOCK: self.backbone(images)}
