"""The data module's settings as small typed groups, checked once: how the data are split, stored and loaded.

A data config (``conf/data/*.yaml``) spells them flat (``data.split``, ``data.val_size``, ``data.batch_size``, ...);
:meth:`FERDataModule.from_options <fer_lightning.data.datamodule.FERDataModule.from_options>` groups them here.

Examples:
    >>> SplitSettings(name="loso", fold=3).subject_independent
    True
    >>> LoaderSettings(sampler="shuffled")
    Traceback (most recent call last):
    ...
    fer_lightning.errors.FERError: data.sampler=shuffled is unknown; choose one of: random, balanced
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fer_lightning.runtime.registry import choose

SPLITS = ("paper", "loso", "subject_kfold", "official", "manifest", "folders", "auto")
# the names of "the dataset's own split" (FER2013's Usage, RAF-DB, AffectNet; a manifest's split column; split folders)
OWN_SPLITS = ("official", "manifest", "folders")
SAMPLERS = ("random", "balanced")
ON_DEVICE = ("auto", "true", "false")


@dataclass(frozen=True)
class SplitSettings:
    """How images are split (``data.split``, ``data.test_size``, ``data.val_size``, ``data.train_size``,
    ``data.fold``, ``data.folds``, ``data.seed``, ``data.inner_folds``, ``data.inner_fold``,
    ``data.fusion_reserve``).

    Args:
        name: ``paper`` (stratified random), ``loso``, ``subject_kfold``, ``official`` / ``manifest`` / ``folders``
            (the dataset's own split), or ``auto``: the dataset's own split when it has one, else its source's
            default (``subject_kfold`` for class folders, ``paper`` for a manifest).
        test_size, val_size, train_size: counts, or fractions in ``(0, 1)``; ``train_size=None``: the rest.
        fold, folds: the fold of ``loso`` / ``subject_kfold`` (and the number of folds of the latter).
        seed: seeds the split and, through the run's seed, training.
        inner_folds, inner_fold: an inner fold of the training part held out as the test set (0: off).
        fusion_reserve: validation images (a count, or a fraction of them) set aside, stratified, for fitting a
            late fusion's weights; the members never validate on them (0: off).
    """

    name: str = "paper"
    test_size: int | float = 57
    val_size: int | float = 23
    train_size: int | float | None = None
    fold: int = 0
    folds: int = 5
    seed: int = 0
    inner_folds: int = 0
    inner_fold: int = 0
    fusion_reserve: int | float = 0

    def __post_init__(self) -> None:
        choose(self.name, SPLITS, "data.split")
        for name in ("fold", "folds", "seed", "inner_folds", "inner_fold"):
            object.__setattr__(self, name, int(getattr(self, name)))

    @property
    def subject_independent(self) -> bool:
        """Whether the split keeps each subject's images on one side (inner folds must then do the same)."""
        return self.name in ("loso", "subject_kfold")


@dataclass(frozen=True)
class LoaderSettings:
    """How batches are drawn (``data.batch_size``, ``data.num_workers``, ``data.sampler``, ``data.on_device``,
    ``data.on_device_max_mb``).

    Args:
        sampler: ``random`` (shuffled) or ``balanced`` (each class drawn equally often, with replacement).
        on_device: ``auto`` (the store goes to the training device when it fits in ``on_device_max_mb``),
            ``true`` or ``false``.
    """

    batch_size: int = 16
    num_workers: int = 0
    sampler: str = "random"
    on_device: str = "auto"
    on_device_max_mb: float = 1024.0

    def __post_init__(self) -> None:
        value = str(self.on_device).lower()  # true/false/True/False from YAML or Python
        if value not in ON_DEVICE:
            choose(self.on_device, ON_DEVICE, "data.on_device")
        object.__setattr__(self, "on_device", value)
        choose(self.sampler, SAMPLERS, "data.sampler")
        object.__setattr__(self, "batch_size", int(self.batch_size))
        object.__setattr__(self, "num_workers", int(self.num_workers))
        object.__setattr__(self, "on_device_max_mb", float(self.on_device_max_mb))


@dataclass(frozen=True)
class StoreSettings:
    """Where and how the decoded images (and precomputed features) are stored (``data.cache_dir``,
    ``data.decode_workers``, ``data.min_side``, ``data.duplicates``, ``data.feature_device``).

    Args:
        cache_dir: the stores' folder (None: temporary stores, removed with the data module).
        decode_workers: processes that decode images (None: one per CPU; 0 or 1: this process).
        min_side: warn about images whose shorter side is below this (None: never).
        duplicates: ``warn`` (named; copies kept on one side of every split) or ``error``.
        feature_device: where precomputed features are computed: ``auto`` (CUDA if present), ``cpu``, ``cuda``.
    """

    cache_dir: str | Path | None = None
    decode_workers: int | None = None
    min_side: int | None = 32
    duplicates: str = "warn"
    feature_device: str = "auto"
