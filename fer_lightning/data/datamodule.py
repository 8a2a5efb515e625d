"""The one LightningDataModule: a source (the on-disk format) + the decoded store + splits + samplers + augmentation
on the device.

Data flows once: files -> records (``fer_lightning.data.sources``) -> preprocessing (grey, face crop, resize) ->
decoded uint8 store on disk, memory-mapped (``fer_lightning.data.decoded``) -> splits -> batches -> device ->
augmentation (a store that fits on the training device goes there once and batches are drawn there:
``data.on_device``). Handcrafted features, when a model declares it uses them, are computed once from the store into
a feature store. Each dataset is a config of this class (``conf/data/*.yaml``) naming its source and the source's
own options; :meth:`FERDataModule.from_options` is that config's face. A model gets what it needs from the data as
one typed :class:`~fer_lightning.data.contract.ModelData` (:meth:`FERDataModule.model_data`).
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
from torch.utils.data import DataLoader, WeightedRandomSampler

from fer_lightning.data.augment import FaceAugment
from fer_lightning.data.classes import ALL_CLASS_NAMES
from fer_lightning.data.contract import ModelData
from fer_lightning.data.dataset import IndexedImages, lone_last_batch
from fer_lightning.data.decoded import DecodedSet, decode_store, duplicate_groups, note_upscaling, warn_small
from fer_lightning.data.device import DeviceBatches, ResidentStore
from fer_lightning.data.preprocessing import Preprocessing, to_unit
from fer_lightning.data.settings import LoaderSettings, SplitSettings, StoreSettings
from fer_lightning.data.sources import SOURCES, Source, make_source
from fer_lightning.data.splits import Split, draw_split, resolve_split
from fer_lightning.errors import FERError
from fer_lightning.features.extractor import HandcraftedFeatures
from fer_lightning.features.tables import blocks_of, feature_store
from fer_lightning.io.chunked import Store
from fer_lightning.runtime.devices import resolve_device
from fer_lightning.runtime.seeding import EpochShuffle, EpochWeighted, run_seed

log = logging.getLogger(__name__)


class FERDataModule(pl.LightningDataModule):
    """Any supported dataset with the paper's split, leave-one-subject-out, subject k-fold or its own split.

    Batches hold ``image`` as uint8 on the loader side; :meth:`on_after_batch_transfer` turns them into float
    ``(B, 1, S, S)`` in ``[0, 1]`` on the target device and augments them there during training (for a model that
    reads images: a head on stored features gets them as stored).

    Args:
        source: the dataset's on-disk format with its options (:mod:`fer_lightning.data.sources`).
        preprocessing: how a file becomes a stored face (:class:`~fer_lightning.data.preprocessing.Preprocessing`).
        split: :class:`~fer_lightning.data.settings.SplitSettings`.
        loader: :class:`~fer_lightning.data.settings.LoaderSettings`.
        store: :class:`~fer_lightning.data.settings.StoreSettings`.
        augment: the training augmentation, run on the device.
        features: handcrafted blocks to precompute for a model that uses them (None: none).
    """

    def __init__(
        self,
        source: Source,
        preprocessing: Preprocessing,
        split: SplitSettings,
        loader: LoaderSettings,
        store: StoreSettings,
        augment: FaceAugment | None = None,
        features: HandcraftedFeatures | None = None,
    ) -> None:
        super().__init__()
        self.source, self.prep = source, preprocessing
        self._split_settings, self.loader, self.store_settings = split, loader, store
        self.augment = augment if augment is not None else FaceAugment()
        self.extractor = features
        self._resident = ResidentStore(loader.on_device, loader.on_device_max_mb)
        self.decoded: DecodedSet | None = None
        self.split: Split | None = None
        self.targets: torch.Tensor | None = None
        self.features: dict[str, torch.Tensor] | None = None
        self.feature_store: Store | None = None
        self.soft: torch.Tensor | None = None

    @classmethod
    def from_options(
        cls,
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
        fusion_reserve: int | float = 0,
        decode_workers: int | None = None,
        min_side: int | None = 32,
        duplicates: str = "warn",
        sampler: str = "random",
        on_device: str | bool = "auto",
        on_device_max_mb: float = 1024.0,
        **options: Any,
    ) -> FERDataModule:
        """The data module from the flat options of a data config (``data.*``): the source's own options go in
        ``options`` (``data.subject_regex``, ``data.labels``, ``data.synthetic``, ...)."""
        loader = LoaderSettings(batch_size, num_workers, sampler, on_device, on_device_max_mb)
        splits = SplitSettings(split, test_size, val_size, train_size, fold, folds, seed, inner_folds, inner_fold,
                               fusion_reserve)
        if int(image_size) < 32:
            raise FERError(f"data.image_size={image_size} is too small; MobileNetV2 needs at least 32 pixels")
        data_source = make_source(source, root, cache_dir, **options)
        prep = Preprocessing.from_options(image_size, face_crop, crop_margin, crop_box)
        store = StoreSettings(cache_dir, decode_workers, min_side, duplicates, feature_device)
        extractor = None if features is None else HandcraftedFeatures.build(features)
        return cls(data_source, prep, splits, loader, store, FaceAugment(**(augment or {})), extractor)

    @classmethod
    def option_names(cls, node: dict[str, Any]) -> list[str]:
        """The options a data config may hold: :meth:`from_options`' own and those of its ``source`` (all sources'
        when the source is not one of :data:`~fer_lightning.data.sources.SOURCES`)."""
        own = [p for p in inspect.signature(cls.from_options).parameters if p not in ("cls", "options")]
        kinds = [node["source"]] if node.get("source") in SOURCES else list(SOURCES)
        return own + [p for k in kinds for p in inspect.signature(SOURCES.get(k).__init__).parameters
                      if p not in ("self", "root", "cache_dir")]

    # ------------------------------------------------------------------ what the data are
    @property
    def split_settings(self) -> SplitSettings:
        """The split settings, ``data.split=auto`` resolved on the dataset (its own split, or its source's
        default)."""
        if self._split_settings.name == "auto":
            self._split_settings = resolve_split(self._split_settings, self.source)
        return self._split_settings

    @property
    def dataset_name(self) -> str:
        return self.source.name

    @functools.cached_property
    def class_names(self) -> tuple[str, ...]:
        return self.source.classes()

    @property
    def fingerprint(self) -> str:
        return self._decoded().fingerprint

    def preprocessing(self) -> Preprocessing:
        """How a raw image file becomes a model input here (recorded in checkpoints)."""
        return self.prep

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

    # ------------------------------------------------------------------ store and split
    def _decoded(self) -> DecodedSet:
        if self.decoded is None:
            s = self.store_settings
            self.decoded = decode_store(self.source.records, self.prep, s.cache_dir, name=self.dataset_name,
                                        workers=s.decode_workers)
            warn_small(self.decoded, self.file_names(), s.min_side, self.prep.image_size)
            note_upscaling(self.decoded.sizes, self.prep.image_size)
        return self.decoded

    def prepare_data(self) -> None:
        """Generate the synthetic set and build the decoded-image store (once; other processes wait for it)."""
        self._decoded()

    def use_split(self, split: Split) -> None:
        """Evaluate on a split given from outside (a run's own, read from its ``splits.csv``) instead of drawing one:
        before :meth:`setup` (none is drawn), or after it (the split is then replaced)."""
        self.split = split
        self.setup()

    def setup(self, stage: str | None = None) -> None:
        if self.targets is not None:
            return
        d = self._decoded()
        classes = self.class_names
        self.targets = torch.tensor([classes.index(lbl) for lbl in d.labels], dtype=torch.long)
        records = self.source.records
        if records[0].soft is not None:
            cols = [ALL_CLASS_NAMES.index(c) for c in classes]
            soft = torch.tensor([r.soft for r in records], dtype=torch.float32)[:, cols]
            self.soft = soft / soft.sum(1, keepdim=True).clamp_min(1e-12)
        s, given = self.split_settings, self.split is not None  # given: by use_split, before setup
        if not given:
            groups = duplicate_groups(d, self.file_names(), d.labels, self.store_settings.duplicates)
            self.split = draw_split(s, self.source, d.labels, d.subjects, groups)
        split = self.split
        log.info("%s split of %d images: %d train / %d val / %d test%s", "given" if given else s.name, len(d.labels),
                 len(split.train), len(split.val), len(split.test),
                 f" / {len(split.reserve)} reserved for fusion weights" if len(split.reserve) else "")
        if self.extractor is not None and self.extractor.source == "precomputed":
            log.info("handcrafted descriptor blocks: %s", self.extractor.describe())
            self.feature_store = feature_store(self.extractor, d.images, d.fingerprint, self.store_settings.cache_dir,
                                               resolve_device(self.store_settings.feature_device),
                                               self.extractor.store_dtype)
            self.features = blocks_of(self.feature_store)

    def model_data(self) -> ModelData:
        """What a model is handed at setup (see :class:`~fer_lightning.data.contract.ModelData`)."""
        self.setup()
        d = self._decoded()
        s, store = self.split_settings, self.store_settings
        return ModelData(
            class_names=tuple(self.class_names), images=d.images, targets=self.targets, labels=d.labels,
            subjects=d.subjects, split=self.split, seed=s.seed, fingerprint=d.fingerprint, cache_dir=store.cache_dir,
            subject_independent=s.subject_independent, preprocessing=self.prep,
            augment=self.augment, feature_device=resolve_device(store.feature_device),
            features=self.features,
        )

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
    def _loader(self, part: str, shuffle: bool) -> DataLoader | DeviceBatches:
        self.setup()
        world = getattr(self.trainer, "world_size", 1)  # processes sharing the training split (DDP)
        indices = getattr(self.split, part)
        batch_size = self.loader.batch_size
        drop_last = shuffle and lone_last_batch(len(indices), batch_size, world)
        # One process: the order of an epoch depends on (seed, epoch) only and nothing is drawn from the global
        # generator, so a resumed run repeats the uninterrupted one (fer_lightning.runtime.seeding). Several:
        # Lightning's DistributedSampler, seeded by (seed, epoch) too.
        epoch = self._epoch
        seed = run_seed(self.split_settings.seed)
        order = EpochShuffle(len(indices), seed, epoch) if shuffle and world == 1 else None
        plain = self.loader.sampler == "random" and self.soft is None  # what the device-resident batches cover
        resident = self._device_store() if world == 1 and plain else None
        if resident is not None:
            images, targets, features = resident
            return DeviceBatches(images, targets, torch.as_tensor(np.asarray(indices)), features,
                                 batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, sampler=order)
        ds = IndexedImages(self._decoded().store, self.targets, indices, self.feature_store, self.soft)
        sampler = order
        if shuffle and self.loader.sampler == "balanced":
            counts = self.model_data().class_counts(part).double().clamp_min(1)
            weights = (1.0 / counts)[self.targets[torch.as_tensor(np.asarray(indices), dtype=torch.long)]]
            sampler = (EpochWeighted(weights, seed, epoch) if world == 1
                       else WeightedRandomSampler(weights, num_samples=len(indices), replacement=True))
        if sampler is not None:
            shuffle = False
        workers = self.loader.num_workers
        return DataLoader(
            ds,
            batch_size=batch_size,
            shuffle=shuffle,
            sampler=sampler,
            drop_last=drop_last,
            generator=torch.Generator() if order is not None else None,  # workers' seeds not from the global one
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=self._training_device().type == "cuda",  # pinned pages speed host-to-GPU copies only
        )

    def _epoch(self) -> int:
        """The training epoch now (as Lightning numbers it for samplers; 0 outside a fit)."""
        return self.trainer.fit_loop.epoch_progress.current.processed if self.trainer is not None else 0

    def _training_device(self) -> torch.device:
        strategy = getattr(self.trainer, "strategy", None)
        return strategy.root_device if strategy is not None else torch.device("cpu")

    def _device_store(self) -> tuple | None:
        """``(images, targets, features)`` of the whole store on the training device (``data.on_device``), or None."""
        strategy = getattr(self.trainer, "strategy", None)
        if strategy is None:
            return None
        return self._resident.on(strategy.root_device, self._decoded().images, self.targets, self.features)

    def train_dataloader(self) -> DataLoader | DeviceBatches:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader | DeviceBatches:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader | DeviceBatches:
        return self._loader("test", shuffle=False)

    # ------------------------------------------------------------ on device
    def on_after_batch_transfer(self, batch: dict[str, torch.Tensor], dataloader_idx: int) -> dict[str, Any]:
        """The batch's images as float in ``[0, 1]``, augmented when training. A model whose ``reads_images`` is
        False (a head on stored features) never sees them: they stay uint8 as stored, and in training only the
        augmentation's random draws are made (:meth:`~fer_lightning.data.augment.FaceAugment.draw`), so every number
        is what the full augmentation gives."""
        training = self.trainer is not None and self.trainer.training
        model = getattr(self.trainer, "lightning_module", None) if self.trainer is not None else None
        if not getattr(model, "reads_images", True) and hasattr(self.augment, "draw"):
            if training:
                self.augment.draw(batch["image"])  # its shape is all a draw reads
            return batch
        x = to_unit(batch["image"])
        batch["image"] = self.augment(x) if training else x
        return batch


def JAFFEDataModule(**options: Any) -> FERDataModule:  # noqa: N802 (kept for code written before the one module)
    """``FERDataModule.from_options(source="jaffe", ...)``."""
    return FERDataModule.from_options(source="jaffe", **options)


def FolderDataModule(**options: Any) -> FERDataModule:  # noqa: N802
    """``FERDataModule.from_options(source="folder", ...)``."""
    return FERDataModule.from_options(source="folder", **options)
