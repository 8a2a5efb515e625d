"""Randomness as a function of ``(seed, epoch)``: what makes a resumed run repeat the uninterrupted one.

Training draws random numbers for the order of the batches, the augmentation and dropout. If each epoch's draws
depended on everything drawn before, a run restored from a checkpoint (which holds weights and counters, not the
history of every generator) would draw other numbers. Here the batch order of epoch ``e`` is a permutation seeded
by ``(seed, e)`` alone (:class:`EpochShuffle`, the sampler the training loader uses), and the global generators
(torch on every device, numpy, Python) are reseeded from ``(seed, e)`` when epoch ``e`` starts
(:class:`fer_lightning.engine.resume.ExactResume`).
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import Sampler


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """A 32-bit seed for one epoch of one process, a function of ``(seed, epoch, rank)`` only."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch), int(rank)]).generate_state(1)[0])


def seed_all(seed: int) -> None:
    """torch (CPU and every CUDA device), numpy and Python generators, from one seed."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def run_seed(default: int = 0) -> int:
    """The run's seed: the one ``pytorch_lightning.seed_everything`` set (Lightning's ``PL_GLOBAL_SEED``, which
    its own distributed samplers use too), else ``default``."""
    return int(os.environ.get("PL_GLOBAL_SEED", default))


class _EpochSeeded(Sampler[int]):
    """A sampler whose draws depend only on ``(seed, epoch)``. ``epoch``: the epoch, or a function that tells it
    when an epoch's draw is made (the data module passes the trainer's epoch); Lightning also calls
    :meth:`set_epoch` before each training epoch on a DataLoader's sampler (as for ``DistributedSampler``)."""

    def __init__(self, seed: int, epoch: int | Callable[[], int] = 0) -> None:
        self.seed, self._epoch = int(seed), epoch

    @property
    def epoch(self) -> int:
        return int(self._epoch() if callable(self._epoch) else self._epoch)

    def set_epoch(self, epoch: int) -> None:
        self._epoch = int(epoch)

    def generator(self) -> torch.Generator:
        """A fresh generator for this epoch's draw, whatever was drawn before."""
        return torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))


class EpochShuffle(_EpochSeeded):
    """A random order of ``n`` items that depends only on ``(seed, epoch)``.

    Examples:
        >>> first = list(EpochShuffle(5, seed=0, epoch=3))
        >>> _ = torch.rand(100)  # whatever else is drawn in between
        >>> list(EpochShuffle(5, seed=0, epoch=3)) == first and sorted(first) == [0, 1, 2, 3, 4]
        True
    """

    def __init__(self, n: int, seed: int, epoch: int | Callable[[], int] = 0) -> None:
        super().__init__(seed, epoch)
        self.n = int(n)

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        return iter(torch.randperm(self.n, generator=self.generator()).tolist())


class EpochWeighted(_EpochSeeded):
    """``len(weights)`` draws with replacement, each index with probability proportional to its weight (as
    ``WeightedRandomSampler``), from a generator seeded by ``(seed, epoch)`` alone."""

    def __init__(self, weights: torch.Tensor, seed: int, epoch: int | Callable[[], int] = 0) -> None:
        super().__init__(seed, epoch)
        self.weights = torch.as_tensor(weights, dtype=torch.double)

    def __len__(self) -> int:
        return len(self.weights)

    def __iter__(self) -> Iterator[int]:
        return iter(torch.multinomial(self.weights, len(self.weights), True, generator=self.generator()).tolist())
