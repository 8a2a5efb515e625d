"""The contract between the data and the models: what a model class declares it needs, and the one typed object the
data module hands a model when training starts.

A model never reads the data module: its class declares :class:`DataNeeds` (``needs = DataNeeds(...)``), the engine
builds the data module accordingly (precomputed handcrafted blocks when the model uses them), and at setup the model
receives a :class:`ModelData` (:meth:`FERDataModule.model_data
<fer_lightning.data.datamodule.FERDataModule.model_data>`): the decoded images, the split, the seed, where caches
go and how images were prepared: everything a model fits its fixed layers, feature tables and augmented copies from.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from fer_lightning.data.preprocessing import Preprocessing
from fer_lightning.data.splits import Split

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataNeeds:
    """What a model class needs from the data besides batches of images, labels and indices.

    Args:
        handcrafted_blocks: the model classifies HOG/LBP blocks (``features``); with ``features.source=precomputed``
            the data module computes them once per dataset into a feature store and puts them in every batch.
        trains: the model has weights to fit (late fusion has none: validation fixes its weights).
        fuses_backbone: in a pipeline, the model takes the fine-tuned backbone of the deep stage.
        members_from_stages: in a pipeline, the model combines the checkpoints of earlier stages.
    """

    handcrafted_blocks: bool = False
    trains: bool = True
    fuses_backbone: bool = False
    members_from_stages: bool = False


@dataclass(frozen=True)
class ModelData:
    """What a model is handed at setup: the whole decoded dataset and its split, read-only.

    Shape:
        - images: :math:`(N, 1, S, S)` uint8, every image of the dataset (memory-mapped).
        - targets: :math:`(N,)` int64 class indices.
        - features: ``{block: (N, D)}`` precomputed handcrafted blocks of every image, or None.
    """

    class_names: tuple[str, ...]
    images: torch.Tensor
    targets: torch.Tensor
    labels: Sequence[str]
    subjects: Sequence[str]
    split: Split
    seed: int
    fingerprint: str
    cache_dir: str | Path | None
    subject_independent: bool
    preprocessing: Preprocessing
    augment: nn.Module
    feature_device: torch.device
    features: dict[str, torch.Tensor] | None

    def class_counts(self, part: str = "train") -> torch.Tensor:
        """Images per class in one part of the split (``train``, ``val``, ``test``)."""
        idx = torch.as_tensor(np.asarray(getattr(self.split, part)), dtype=torch.long)
        return torch.bincount(self.targets[idx], minlength=len(self.class_names))

    def fit_rows(self, limit: int | None = None) -> np.ndarray:
        """The training rows that fitted layers (z-score, PCA) see: all of them, or a seeded sample of ``limit``
        (sorted; the same for every model on this split)."""
        train = np.asarray(self.split.train)
        if limit is None or int(limit) <= 0 or len(train) <= int(limit):
            return train
        rng = np.random.default_rng(self.seed)
        log.info("fitting on a seeded sample of %d of the %d training images", int(limit), len(train))
        return np.sort(rng.choice(train, int(limit), replace=False))

    def precomputed(self, rows: Sequence[int] | np.ndarray) -> dict[str, torch.Tensor] | None:
        """The precomputed handcrafted blocks of ``rows`` as float32 (None when the data module has none)."""
        if self.features is None:
            return None
        idx = torch.as_tensor(np.asarray(rows), dtype=torch.long)
        return {k: v[idx].float() for k, v in self.features.items()}


@runtime_checkable
class ProvidesModelData(Protocol):
    """A data module that hands models a :class:`ModelData` (the project's :class:`FERDataModule` does)."""

    def model_data(self) -> ModelData: ...
