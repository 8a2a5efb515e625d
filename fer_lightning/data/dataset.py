"""Items of a split drawn from the decoded store (and the feature store) by a DataLoader."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from fer_lightning.io.chunked import Store


class IndexedImages(Dataset):
    """Items ``{"image": (1, S, S) uint8, "label": int, "index": int[, "soft": (C,)][, "features": {block: (D,)}]}``
    for a subset of a decoded set. The image and feature stores are mapped in each worker process on first use
    (they pickle as their folders, never as their contents)."""

    def __init__(
        self,
        images: Store,
        targets: torch.Tensor,
        indices: Sequence[int],
        features: Store | None = None,
        soft: torch.Tensor | None = None,
    ) -> None:
        self.images, self.targets, self.features, self.soft = images, targets, features, soft
        self.indices = torch.as_tensor(np.asarray(indices), dtype=torch.long)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        j = int(self.indices[i])
        item: dict[str, Any] = {"image": torch.from_numpy(self.images.array("images")[j]), "label": self.targets[j],
                                "index": j}
        if self.soft is not None:
            item["soft"] = self.soft[j]
        if self.features is not None:
            item["features"] = {k: torch.from_numpy(self.features.array(k)[j]) for k in self.features.meta["arrays"]}
        return item


def lone_last_batch(n: int, batch_size: int, world_size: int = 1) -> bool:
    """Whether each of ``world_size`` processes' share of ``n`` training images (a ``DistributedSampler`` gives
    each ``ceil(n / world_size)``) ends with a batch of one image, which BatchNorm cannot train on: such a batch
    is dropped (its image is drawn into another batch in other epochs)."""
    return -(-n // world_size) % batch_size == 1
