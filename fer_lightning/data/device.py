"""Small datasets on the training device: batches drawn there by indexing, with no per-batch host-to-device
copies, no collation and no worker processes.

:class:`DeviceBatches` is what a LightningDataModule's ``*_dataloader`` returns when the whole decoded store fits
on the device (JAFFE at 224 px: 213 x 224 x 224 bytes = 10.7 MB). It yields the same batches, in the same order,
as a ``DataLoader(dataset, batch_size, shuffle, drop_last, num_workers=0)`` over :class:`IndexedImages`, and draws
from torch's global random number generator exactly as that loader does in training (one draw for an epoch's
iterator, then the shuffling seed), so a seeded run gives the same results on either path. Given a ``sampler``
(the training order of :class:`~fer_lightning.runtime.seeding.EpochShuffle`), it follows that order instead and draws
nothing from the global generator, as the DataLoader given the same sampler.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import Sampler

log = logging.getLogger(__name__)


def store_bytes(*tensors: torch.Tensor | dict[str, torch.Tensor] | None) -> int:
    """Bytes of the tensors (and of the tensors in dicts) given."""
    total = 0
    for t in tensors:
        if isinstance(t, dict):
            total += store_bytes(*t.values())
        elif t is not None:
            total += t.numel() * t.element_size()
    return total


def fits_on(device: torch.device, nbytes: int, max_mb: float) -> bool:
    """Whether ``nbytes`` may live on ``device``: at most ``max_mb``, and on CUDA at most half the free memory."""
    if nbytes > max_mb * 2**20:
        return False
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return nbytes <= free // 2
    return True


class DeviceBatches:
    """Batches ``{"image", "label", "index"[, "features"]}`` of ``indices`` drawn from tensors on one device.

    ``images`` ``(N, 1, S, S)`` uint8, ``targets`` ``(N,)``, ``features`` ``{block: (N, D)}`` (or None) are the
    whole store, already on the device; ``indices`` are the split's dataset indices.
    """

    def __init__(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        indices: torch.Tensor,
        features: dict[str, torch.Tensor] | None,
        batch_size: int,
        shuffle: bool,
        drop_last: bool = False,
        sampler: Sampler[int] | None = None,
    ) -> None:
        self.images, self.targets, self.features = images, targets, features
        # an order of its own (positions in ``indices``), which follows the epoch by itself (not named ``sampler``:
        # Lightning would take this for a DataLoader)
        self.order = sampler
        self.indices = torch.as_tensor(indices, dtype=torch.long)
        self.batch_size, self.shuffle, self.drop_last = int(batch_size), bool(shuffle), bool(drop_last)

    def __len__(self) -> int:
        n = len(self.indices)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self.order is not None:  # the sampler's order, and no draw from the global generator
            yield from self._batches()
            return
        # Lazy, unlike a DataLoader's iterator: Lightning calls iter() on loaders that are not DataLoaders once
        # just to check they are iterable, and that must not draw a random number.
        torch.empty((), dtype=torch.int64).random_()  # what a DataLoader iterator draws (its workers' base seed)
        yield from self._batches()

    def _order(self) -> torch.Tensor:
        n = len(self.indices)
        if self.order is not None:
            return torch.as_tensor(list(self.order), dtype=torch.long)
        if not self.shuffle:
            return torch.arange(n)
        seed = int(torch.empty((), dtype=torch.int64).random_().item())  # as RandomSampler, at the first batch
        generator = torch.Generator()
        generator.manual_seed(seed)
        return torch.randperm(n, generator=generator)

    def _batches(self) -> Iterator[dict[str, Any]]:
        order = self.indices[self._order()].to(self.images.device)
        for b in range(len(self)):
            j = order[b * self.batch_size : (b + 1) * self.batch_size]
            batch: dict[str, Any] = {"image": self.images[j], "label": self.targets[j], "index": j}
            if self.features is not None:
                batch["features"] = {k: v[j] for k, v in self.features.items()}
            yield batch


class ResidentStore:
    """The whole store (images, targets, precomputed features) on the training device, moved there once.

    ``mode``: ``auto`` (when it fits: :func:`fits_on` with ``max_mb``), ``true`` (always) or ``false`` (never).
    """

    def __init__(self, mode: str = "auto", max_mb: float = 1024.0) -> None:
        self.mode, self.max_mb = mode, float(max_mb)
        self._held: tuple | None = None  # (device, images, targets, features)

    def on(self, device: torch.device, images: torch.Tensor, targets: torch.Tensor,
           features: dict[str, torch.Tensor] | None) -> tuple | None:
        """``(images, targets, features)`` on ``device``, or None where they stay on the host."""
        if self.mode == "false":
            return None
        if self.mode == "auto" and not fits_on(device, store_bytes(images, targets, features), self.max_mb):
            return None
        if self._held is None or self._held[0] != device:
            moved = None if features is None else {k: v.to(device) for k, v in features.items()}
            self._held = (device, images.to(device), targets.to(device), moved)
            log.info("data on %s: %d images, batches drawn there", device, len(images))
        return self._held[1:]
