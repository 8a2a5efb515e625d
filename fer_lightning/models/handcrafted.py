"""The paper's "LBP + HOG" baseline: z-scored HOG and LBP blocks -> PCA -> dropout/BN/MLP head. No CNN.

It is also the base of the hybrid model, which adds one more block (the CNN's GAP features) through the
``extra_*`` hooks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from fer_lightning.data.contract import DataNeeds, ModelData
from fer_lightning.errors import FERError
from fer_lightning.features.extractor import HandcraftedFeatures, blocks_in_batches
from fer_lightning.features.views import AugmentedViews
from fer_lightning.io.lock import one_at_a_time
from fer_lightning.models.base import FERClassifier
from fer_lightning.models.components.fitted import agree_on_fitted
from fer_lightning.models.components.fusion import FusionHead

# the augmented copies of model.augment.copies are held in memory: refuse more than this (float32 values)
MAX_VIEW_BYTES = 8 * 2**30
# the fused features of validation/test batches kept between epochs (see HandcraftedFER.logits): at most this much
MAX_REDUCED_BYTES = 512 * 2**20


class HandcraftedFER(FERClassifier):
    """``[HOG, LBP] -> z-score each -> concat -> PCA -> Dropout 0.5 -> BatchNorm -> 512 -> ReLU -> Dropout 0.5
    -> 256 -> ReLU -> Dropout 0.3 -> num_classes``.

    The z-score and PCA layers are fitted from the training split in :meth:`prepare`, before training. Batches
    carry precomputed blocks under ``features`` (``features.source=precomputed``); otherwise, and when
    classifying raw images with ``forward``, the blocks are computed here on the module's device.
    """

    model_name = "handcrafted"
    needs = DataNeeds(handcrafted_blocks=True)  # the data module precomputes the handcrafted blocks for it

    def __init__(
        self,
        class_names: Sequence[str],
        features: HandcraftedFeatures | dict[str, Any],
        pca: dict[str, Any] | None = None,
        head: dict[str, Any] | None = None,
        fusion: dict[str, Any] | None = None,
        optim: dict[str, Any] | None = None,
        augment: dict[str, Any] | None = None,
        fitted_components: int | None = None,
        class_weights: str = "none",
        channels_last: bool | str = False,
        compile: bool | str = False,
    ) -> None:
        """``pca``: ``{"n_components": 0.95}`` (a count, a variance fraction, or None for no PCA of the fused
        blocks); ``head``: :class:`~fer_lightning.models.components.heads.MLPHead` keywords (``hidden=[]``: a
        linear head);
        ``fusion``: ``{"balance": "none" | "block", "per_block_pca": None | count | fraction}`` (see
        :class:`~fer_lightning.models.components.fusion.FusionHead`); ``optim``: a recipe section; ``augment``:
        ``{"copies": k}``, the
        fitted layers and the head also see k augmented copies of each training image
        (:class:`~fer_lightning.features.views.AugmentedViews`; 0: the paper, no copies); ``pca.fit_samples``: the
        z-score and PCA layers are fitted on a seeded sample of at most this many training images (all when fewer);
        ``channels_last``, ``compile``: no effect (no CNN)."""
        super().__init__(class_names, optim=optim, class_weights=class_weights, channels_last=channels_last,
                         compile=compile)
        self.extractor = HandcraftedFeatures.build(features)
        self.save_hyperparameters(ignore=["features"])
        self.hparams["features"] = self.extractor.full_config()
        head = {"hidden": [512, 256], "dropout": [0.5, 0.3], "input_dropout": 0.5, "batchnorm": True, **(head or {})}
        # the z-score and PCA layers see at most this many training images (a seeded sample; all when fewer)
        self.fit_samples = (pca or {}).get("fit_samples", 20000)
        fusion = {"balance": "none", "per_block_pca": None, **(fusion or {})}
        unknown = sorted(set(fusion) - {"balance", "per_block_pca"})
        if unknown:
            raise FERError(f"model.fusion: unknown key(s) {', '.join(unknown)}; valid keys: balance, per_block_pca")
        augment = {"copies": 0, **(augment or {})}
        unknown = sorted(set(augment) - {"copies"})
        if unknown:
            raise FERError(f"model.augment: unknown key(s) {', '.join(unknown)}; valid keys: copies")
        copies = augment["copies"]
        if isinstance(copies, bool) or not isinstance(copies, int) or copies < 0:
            raise FERError(f"model.augment.copies={copies}: give a whole number of augmented copies, 0 or more")
        self.copies = copies
        self.views: AugmentedViews | None = None  # built in setup when training with copies
        self._reduced: dict[tuple[str, bytes], torch.Tensor] = {}  # see logits
        self.fusion = FusionHead(
            {**self.extra_block_dims(), **self.extractor.block_dims()},
            self.num_classes,
            n_components=(pca or {}).get("n_components", 0.95),
            fitted_components=fitted_components,
            **fusion,
            **head,
        )

    @property
    def reads_images(self) -> bool:
        """Whether training images reach the network: not when the data module puts precomputed blocks in every batch
        (it then skips the images' augmentation and only draws its random numbers)."""
        precomputed = self.data is not None and self.data.features is not None
        return not (self.extractor.source == "precomputed" and precomputed)

    # ------------------------------------------------ hooks for models with more blocks
    def extra_block_dims(self) -> dict[str, int]:
        """Blocks besides the handcrafted ones, fused in front of them."""
        return {}

    def extra_train_blocks(self, data: ModelData, rows: Any) -> dict[str, torch.Tensor]:
        """Those blocks for the training images ``rows`` (prepared in :meth:`prepare`)."""
        return {}

    def extra_blocks(self, batch: dict[str, Any] | None, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Those blocks for a batch (or, with ``batch=None``, for raw images)."""
        return {}

    def extra_view_blocks(self, images: torch.Tensor, device: torch.device) -> dict[str, torch.Tensor]:
        """Those blocks for augmented ``(B, 1, H, W)`` uint8 images (the views of ``model.augment.copies``)."""
        return {}

    def extra_blocks_stored(self, batch: dict[str, Any]) -> bool:
        """Whether :meth:`extra_blocks` of ``batch`` are looked up from a table (the same for an image every time)."""
        return True

    # ---------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        self._reduced = {}  # fused features of another data module's images, or of layers fitted anew
        super().setup(stage)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._reduced = {}
        super().on_load_checkpoint(checkpoint)

    def prepare(self, data: ModelData, stage: str) -> None:
        """Build the augmented copies (``model.augment.copies``) and fit the fixed layers on the training split."""
        if self.copies and self.views is None and (stage == "fit" or not self.fusion.fitted):
            self.views = self._augmented_views(data)
        if self.fusion.fitted:
            return
        with one_at_a_time(data.cache_dir):  # DDP: one process builds a feature cache
            rows = data.fit_rows(self.fit_samples)
            blocks = {**self.extra_train_blocks(data, rows), **self.train_blocks(data, rows)}
        if self.views is not None:
            blocks = self.views.fit_blocks(rows, blocks)
        self.hparams["fitted_components"] = self.fusion.fit(blocks)
        agree_on_fitted(self.fusion, self.trainer.strategy)  # DDP: the same statistics on every process

    def train_blocks(self, data: ModelData, rows: Any) -> dict[str, torch.Tensor]:
        """The handcrafted blocks of the training images ``rows`` (un-augmented), float32: the data module's
        precomputed ones, or computed here on the feature device."""
        blocks = data.precomputed(rows)
        if blocks is not None:
            return blocks
        images = data.images[torch.as_tensor(np.asarray(rows), dtype=torch.long)]
        return blocks_in_batches(self.extractor, images, self.extractor.batch_size, data.feature_device)

    def _augmented_views(self, data: ModelData) -> AugmentedViews:
        """``model.augment.copies`` augmented copies of every training image, as blocks (see
        :class:`~fer_lightning.features.views.AugmentedViews`), drawn with the data module's training augmentation."""
        width = sum({**self.extra_block_dims(), **self.extractor.block_dims()}.values())
        need = self.copies * len(data.split.train) * width * 4
        if need > MAX_VIEW_BYTES:
            raise FERError(
                f"model.augment.copies={self.copies} needs {need / 2**30:.1f} GiB for the augmented copies of "
                f"{len(data.split.train):,} training images ({width:,} features each; at most "
                f"{MAX_VIEW_BYTES / 2**30:.0f} GiB): copies help small datasets, set model.augment.copies=0 here"
            )
        device = data.feature_device
        augment = data.augment  # left where it is: its draws stay the CPU generator's, and kornia moves them to x

        def blocks(x: torch.Tensor) -> dict[str, torch.Tensor]:
            x = x.to(device)
            return {**self.extra_view_blocks(x, device), **self.extractor(x)}

        return AugmentedViews(data.images, data.split.train, lambda x: augment(x.to(device)), blocks,
                              self.copies, data.seed, batch_size=self.extractor.batch_size)

    def handcrafted_blocks(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        if self.extractor.source == "precomputed" and "features" in batch:
            return batch["features"]
        return self.extractor(batch["image"])

    def batch_blocks(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Every block of ``batch``, in fusion order (extra blocks first)."""
        return {**self.extra_blocks(batch, batch["image"]), **self.handcrafted_blocks(batch)}

    def blocks_stored(self, batch: dict[str, Any]) -> bool:
        """Whether every block of ``batch`` is looked up (precomputed, from tables), none computed from its images."""
        return self.extractor.source == "precomputed" and "features" in batch and self.extra_blocks_stored(batch)

    def logits(self, batch: dict[str, Any]) -> torch.Tensor:
        """The fusion's logits of a batch. An evaluation batch of stored blocks (precomputed, not augmented) gives
        the same fused features every epoch: the fixed layers' work (a float64 projection of ~27k values by the PCA)
        is done on its first validation and kept (``MAX_REDUCED_BYTES``, per data module), so that each later
        validation runs the MLP only; the numbers are the same bit for bit."""
        if not self.training and not torch.is_grad_enabled() and "index" in batch and self.blocks_stored(batch):
            key = (str(batch["index"].device), batch["index"].cpu().numpy().tobytes())
            reduced = self._reduced.get(key)
            if reduced is None:
                reduced = self.fusion.reduce(self.batch_blocks(batch))
                held = sum(t.numel() * t.element_size() for t in self._reduced.values())
                if held + reduced.numel() * reduced.element_size() <= MAX_REDUCED_BYTES:
                    self._reduced[key] = reduced
            return self.fusion.mlp(reduced)
        blocks = self.batch_blocks(batch)
        if self.training and self.views is not None and "index" in batch:
            blocks = self.views.swap(blocks, batch["index"], self.current_epoch)
        return self.fusion(blocks)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fusion({**self.extra_blocks(None, images), **self.extractor(images)})
