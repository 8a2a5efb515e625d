"""The one LightningDataModule: a source (the on-disk format) + the decoded store + splits + samplers + augmentation
on the device.

Data flows once: files -> records (``fer_lightning.data.sources``) -> (face crop) -> decoded uint8 store on disk,
memory-mapped (``fer_lightning.data.store``) -> splits -> batches -> device -> augmentation (a store that fits on
the training device goes there once and batches are drawn there: ``data.on_device``). Handcrafted features,
when a model uses them, are computed once from the store into a feature store. Each dataset is a config of this
class (``conf/data/*.yaml``) naming its source and the source's own options.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from fer_lightning.chunked import Store
from fer_lightning.data.augment import FaceAugment
from fer_lightning.data.classes import ALL_CLASS_NAMES
from fer_lightning.data.crop import FaceCropper
from fer_lightning.data.device import ON_DEVICE, DeviceBatches, fits_on, store_bytes
from fer_lightning.data.sources import SOURCES, make_source
from fer_lightning.data.splits import (
    Split,
    inner_split,
    loso_split,
    official_split,
    paper_split,
    separate_copies,
    subject_kfold_split,
)
from fer_lightning.data.store import DecodedSet, decode_store, duplicate_groups, warn_small
from fer_lightning.errors import FERError
from fer_lightning.features.extractor import HandcraftedFeatures, resolve_device
from fer_lightning.features.store import blocks_of, feature_store
from fer_lightning.seeding import EpochShuffle, EpochWeighted, run_seed

log = logging.getLogger(__name__)
SPLITS = ("paper", "loso", "subject_kfold", "official", "manifest")
SAMPLERS = ("random", "balanced")


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


class FERDataModule(pl.LightningDataModule):
    """Any supported dataset with the paper's split, leave-one-subject-out, subject k-fold or its own split.

    ``source``: ``jaffe`` (with ``root=None``: a deterministic synthetic JAFFE-format set generated into
    ``cache_dir``), ``folder``, ``fer2013``, ``manifest``; ``**options``: that source's own options. Batches hold
    ``image`` as uint8 on the loader side; :meth:`on_after_batch_transfer` turns them into float ``(B, 1, S, S)``
    in ``[0, 1]`` on the target device and augments them there during training.
    """

    def __init__(
        self,
        source: str = "jaffe",
        root: str | None = None,
        image_size: int = 224,
        split: str = "paper",
        test_size: int | float = 57,
        val_size: int | float = 23,
        train_size: int | float | None = None,
        fold: int = 0,
        folds: int = 5,
        seed: int = 0,
        batch_size: int = 16,
        num_workers: int = 0,
        cache_dir: str | None = None,
        augment: dict[str, Any] | None = None,
        features: HandcraftedFeatures | dict[str, Any] | None = None,
        feature_device: str = "auto",
        face_crop: str = "none",
        crop_margin: float = 0.2,
        crop_box: Sequence[int] | None = None,
        inner_folds: int = 0,
        inner_fold: int = 0,
        decode_workers: int | None = None,
        min_side: int | None = 32,
        duplicates: str = "warn",
        sampler: str = "random",
        on_device: str | bool = "auto",
        on_device_max_mb: float = 1024.0,
        **options: Any,
    ) -> None:
        super().__init__()
        self.on_device, self.on_device_max_mb = str(on_device).lower(), float(on_device_max_mb)
        if self.on_device not in ON_DEVICE:
            raise FERError(f"data.on_device={on_device} is unknown; choose one of: {', '.join(ON_DEVICE)}")
        self._resident: tuple | None = None  # (device, images, targets, features) on the training device
        if split not in SPLITS:
            raise FERError(f"data.split={split} is unknown; choose one of: {', '.join(SPLITS)}")
        if sampler not in SAMPLERS:
            raise FERError(f"data.sampler={sampler} is unknown; choose one of: {', '.join(SAMPLERS)}")
        if image_size < 32:
            raise FERError(f"data.image_size={image_size} is too small; MobileNetV2 needs at least 32 pixels")
        self.source = make_source(source, root, cache_dir, **options)
        self.root = root
        self.image_size = int(image_size)
        self.split_name = split
        self.test_size, self.val_size, self.train_size = test_size, val_size, train_size
        self.fold, self.folds, self.seed = int(fold), int(folds), int(seed)
        self.inner_folds, self.inner_fold = int(inner_folds), int(inner_fold)
        self.cropper = FaceCropper(face_crop, crop_margin, crop_box)
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.cache_dir = cache_dir
        self.decode_workers, self.min_side, self.duplicates = decode_workers, min_side, duplicates
        self.sampler = sampler
        self.augment = FaceAugment(**(augment or {}))
        self.extractor = None if features is None else HandcraftedFeatures.build(features)
        self.feature_device = feature_device
        self.decoded: DecodedSet | None = None
        self.split: Split | None = None
        self.features: dict[str, torch.Tensor] | None = None
        self.feature_store: Store | None = None
        self.soft: torch.Tensor | None = None

    @classmethod
    def option_names(cls, node: dict[str, Any]) -> list[str]:
        """The options a data config may hold: this class's own and those of its ``source`` (all sources' when
        the source is not one of :data:`~fer_lightning.data.sources.SOURCES`)."""
        own = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "options")]
        kinds = [node["source"]] if node.get("source") in SOURCES else list(SOURCES)
        return own + [p for k in kinds for p in inspect.signature(SOURCES[k].__init__).parameters
                      if p not in ("self", "root", "cache_dir")]

    # ------------------------------------------------------------------ data
    @property
    def dataset_name(self) -> str:
        return self.source.name

    @functools.cached_property
    def class_names(self) -> tuple[str, ...]:
        return self.source.classes()

    @property
    def subject_independent(self) -> bool:
        """Whether the split keeps each subject's images on one side (inner folds must then do the same)."""
        return self.split_name in ("loso", "subject_kfold")

    @property
    def fingerprint(self) -> str:
        return self._decoded().fingerprint

    def _decoded(self) -> DecodedSet:
        if self.decoded is None:
            records = self.source.records
            self.decoded = decode_store(records, self.image_size, self.cache_dir, name=self.dataset_name,
                                        crop=self.cropper, workers=self.decode_workers)
            warn_small(self.decoded, self.file_names(), self.min_side, self.image_size)
        return self.decoded

    def prepare_data(self) -> None:
        """Generate the synthetic set and build the decoded-image store (once; other processes wait for it)."""
        self._decoded()

    def _split(self, d: DecodedSet, groups: np.ndarray) -> Split:
        name = self.split_name
        if name == "paper":
            return paper_split(d.labels, test_size=self.test_size, val_size=self.val_size, train_size=self.train_size,
                               seed=self.seed, groups=groups)
        if name in ("loso", "subject_kfold") and not self.source.has_subjects:
            raise FERError(f"data.split={name} needs a subject id for every image, and {self.dataset_name} has "
                           "none; use data.split=paper (random) or data.split=official where the dataset has one")
        if name in ("official", "manifest") and not self.source.has_split:
            raise FERError(f"data.split={name} needs the dataset's own split (FER2013's Usage, RAF-DB, AffectNet, a "
                           f"manifest's split column), and {self.dataset_name} has none; use data.split=paper")
        if name == "loso":
            split = loso_split(d.labels, d.subjects, fold=self.fold, val_size=self.val_size, seed=self.seed)
        elif name == "subject_kfold":
            split = subject_kfold_split(d.labels, d.subjects, folds=self.folds, fold=self.fold,
                                        val_size=self.val_size, seed=self.seed)
        else:
            split = official_split([r.split for r in self.source.records], d.labels, val_size=self.val_size,
                                   seed=self.seed, option=f"data.split={name}")
        split, dropped = separate_copies(split, groups)
        if dropped:
            log.warning("dropped %d validation/test image(s) that copy an image of an earlier part of the split",
                        dropped)
        return split

    def setup(self, stage: str | None = None) -> None:
        if self.split is not None:
            return
        d = self._decoded()
        classes = self.class_names
        self.targets = torch.tensor([classes.index(lbl) for lbl in d.labels], dtype=torch.long)
        records = self.source.records
        if records[0].soft is not None:
            cols = [ALL_CLASS_NAMES.index(c) for c in classes]
            soft = torch.tensor([r.soft for r in records], dtype=torch.float32)[:, cols]
            self.soft = soft / soft.sum(1, keepdim=True).clamp_min(1e-12)
        groups = duplicate_groups(d, self.file_names(), d.labels, self.duplicates)
        self.split = self._split(d, groups)
        if self.inner_folds:
            self.split = inner_split(self.split, d.labels, d.subjects, folds=self.inner_folds, fold=self.inner_fold,
                                     seed=self.seed, by_subject=self.subject_independent)
            log.info("inner fold %d of %d: the held-out training images are this run's test set (outer test unused)",
                     self.inner_fold, self.inner_folds)
        train_labels = {d.labels[i] for i in self.split.train}
        for c in sorted(set(d.labels) - train_labels):
            raise FERError(f"class '{c}' has no training images in the {self.split_name} split of {self.dataset_name};"
                           " choose another split or add images of it")
        log.info(
            "%s split of %d images: %d train / %d val / %d test",
            self.split_name, len(d.labels), len(self.split.train), len(self.split.val), len(self.split.test),
        )
        if self.extractor is not None and self.extractor.source == "precomputed":
            log.info("handcrafted descriptor blocks: %s", self.extractor.describe())
            self.feature_store = feature_store(self.extractor, d.images, d.fingerprint, self.cache_dir,
                                               resolve_device(self.feature_device), self.extractor.store_dtype)
            self.features = blocks_of(self.feature_store)

    def fit_rows(self, limit: int | None = None) -> np.ndarray:
        """The training rows that fitted layers (z-score, PCA) see: all of them, or a seeded sample of ``limit``
        (sorted; the same for every model on this split)."""
        self.setup()
        train = np.asarray(self.split.train)
        if limit is None or int(limit) <= 0 or len(train) <= int(limit):
            return train
        rng = np.random.default_rng(self.seed)
        log.info("fitting on a seeded sample of %d of the %d training images", int(limit), len(train))
        return np.sort(rng.choice(train, int(limit), replace=False))

    def train_features(
        self, extractor: HandcraftedFeatures | None = None, rows: Sequence[int] | None = None
    ) -> dict[str, torch.Tensor]:
        """Handcrafted blocks of training images only (what fitted normalisation and PCA may see), float32: the
        precomputed ones, or ``extractor``'s on the un-augmented images, for ``rows`` (default: all of train)."""
        self.setup()
        idx = torch.as_tensor(np.asarray(self.split.train if rows is None else rows), dtype=torch.long)
        if self.features is not None:
            return {k: v[idx].float() for k, v in self.features.items()}
        if extractor is None:
            raise RuntimeError("no precomputed features and no extractor to compute them with")
        images, device, parts = self._decoded().images, resolve_device(self.feature_device), {}
        with torch.no_grad():
            for i in range(0, len(idx), extractor.batch_size):
                for k, v in extractor(images[idx[i : i + extractor.batch_size]].to(device)).items():
                    parts.setdefault(k, []).append(v.cpu())
        return {k: torch.cat(v) for k, v in parts.items()}

    def class_counts(self, part: str = "train") -> torch.Tensor:
        """Images per class in one part of the split."""
        self.setup()
        idx = torch.as_tensor(np.asarray(getattr(self.split, part)), dtype=torch.long)
        return torch.bincount(self.targets[idx], minlength=len(self.class_names))

    def preprocessing(self) -> dict[str, Any]:
        """How a raw image file becomes a model input here: grey, face crop, resize (stored in checkpoints)."""
        return {"image_size": self.image_size, "face_crop": self.cropper.settings()}

    def image_root(self) -> Path | None:
        """The folder the image files are read from (the generated one for the synthetic set); :meth:`file_names`
        are relative to it. None where images are rows of a text file (FER2013's CSV)."""
        for r in self.source.records:
            path = r.path.as_posix()
            if r.pixels_at is None and r.name and path.endswith("/" + r.name):
                return Path(path[: -len(r.name)]).resolve()
        return None

    def file_names(self) -> list[str]:
        """Each image's name: its path relative to the dataset folder (``KA.AN1.39.tiff``, ``happy/001.jpg``), or
        ``fer2013.csv#17`` for a row of a CSV."""
        return [r.name for r in self.source.records]

    def split_rows(self) -> list[dict[str, str]]:
        """One row per image: file (relative to the dataset folder), subject, label and its split."""
        self.setup()
        d = self._decoded()
        assigned = self.split.assignment(len(d.files))
        return [
            {"file": f, "subject": s, "label": lbl, "split": a}
            for f, s, lbl, a in zip(self.file_names(), d.subjects, d.labels, assigned, strict=True)
        ]

    # ---------------------------------------------------------------- loaders
    def _loader(self, part: str, shuffle: bool) -> DataLoader:
        self.setup()
        world = getattr(self.trainer, "world_size", 1)  # processes sharing the training split (DDP)
        indices = getattr(self.split, part)
        drop_last = shuffle and lone_last_batch(len(indices), self.batch_size, world)
        # One process: the order of an epoch depends on (seed, epoch) only and nothing is drawn from the global
        # generator, so a resumed run repeats the uninterrupted one (fer_lightning.seeding). Several: Lightning's
        # DistributedSampler, seeded by (seed, epoch) too.
        epoch = self._epoch
        order = EpochShuffle(len(indices), run_seed(self.seed), epoch) if shuffle and world == 1 else None
        plain = self.sampler == "random" and self.soft is None  # what the device-resident batches cover
        resident = self._device_store() if world == 1 and plain else None
        if resident is not None:
            images, targets, features = resident
            return DeviceBatches(images, targets, torch.as_tensor(np.asarray(indices)), features,
                                 batch_size=self.batch_size, shuffle=shuffle, drop_last=drop_last, sampler=order)
        ds = IndexedImages(self._decoded().store, self.targets, indices, self.feature_store, self.soft)
        sampler = order
        if shuffle and self.sampler == "balanced":
            counts = self.class_counts(part).double().clamp_min(1)
            weights = (1.0 / counts)[self.targets[torch.as_tensor(np.asarray(indices), dtype=torch.long)]]
            sampler = (EpochWeighted(weights, run_seed(self.seed), epoch) if world == 1
                       else WeightedRandomSampler(weights, num_samples=len(indices), replacement=True))
        if sampler is not None:
            shuffle = False
        return DataLoader(
            ds,
            batch_size=self.batch_size,
            shuffle=shuffle,
            sampler=sampler,
            drop_last=drop_last,
            generator=torch.Generator() if order is not None else None,  # workers' seeds not from the global one
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def _epoch(self) -> int:
        """The training epoch now (as Lightning numbers it for samplers; 0 outside a fit)."""
        return self.trainer.fit_loop.epoch_progress.current.processed if self.trainer is not None else 0

    def _device_store(self) -> tuple | None:
        """``(images, targets, features)`` of the whole store on the training device, when ``on_device`` is
        ``true``, or ``auto`` and it fits (see :func:`~fer_lightning.data.device.fits_on`); else None."""
        strategy = getattr(self.trainer, "strategy", None)
        if self.on_device == "false" or strategy is None:
            return None
        device = strategy.root_device
        images = self._decoded().images
        if self.on_device == "auto" and not fits_on(device, store_bytes(images, self.targets, self.features),
                                                    self.on_device_max_mb):
            return None
        if self._resident is None or self._resident[0] != device:
            features = None if self.features is None else {k: v.to(device) for k, v in self.features.items()}
            self._resident = (device, images.to(device), self.targets.to(device), features)
            log.info("data on %s: %d images, batches drawn there", device, len(images))
        return self._resident[1:]

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    # ------------------------------------------------------------ on device
    def on_after_batch_transfer(self, batch: dict[str, torch.Tensor], dataloader_idx: int) -> dict[str, Any]:
        x = batch["image"]
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        if self.trainer is not None and self.trainer.training:
            x = self.augment(x)
        batch["image"] = x
        return batch


def JAFFEDataModule(**kwargs: Any) -> FERDataModule:  # noqa: N802 (kept for code written before the one module)
    """``FERDataModule(source="jaffe", ...)``."""
    return FERDataModule(source="jaffe", **kwargs)


def FolderDataModule(**kwargs: Any) -> FERDataModule:  # noqa: N802
    """``FERDataModule(source="folder", ...)``."""
    return FERDataModule(source="folder", **kwargs)


def lone_last_batch(n: int, batch_size: int, world_size: int = 1) -> bool:
    """Whether each of ``world_size`` processes' share of ``n`` training images (a ``DistributedSampler`` gives
    each ``ceil(n / world_size)``) ends with a batch of one image, which BatchNorm cannot train on: such a batch
    is dropped (its image is drawn into another batch in other epochs)."""
    return -(-n // world_size) % batch_size == 1
