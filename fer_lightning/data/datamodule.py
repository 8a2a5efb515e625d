"""LightningDataModules for JAFFE and for any folder of class folders.

Data flows once: files -> (face crop) -> cached uint8 tensors -> splits -> batches -> device -> augmentation;
handcrafted features, when a model uses them, are computed once from the cached tensors and cached too.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from fer_lightning.data.augment import FaceAugment
from fer_lightning.data.cache import DecodedSet, load_or_decode
from fer_lightning.data.classes import CLASS_NAMES, JAFFE_N_IMAGES, JAFFE_SUBJECTS
from fer_lightning.data.crop import FaceCropper
from fer_lightning.data.folder import scan_folder
from fer_lightning.data.jaffe import FaceRecord, scan_jaffe
from fer_lightning.data.splits import Split, inner_split, loso_split, paper_split, subject_kfold_split
from fer_lightning.data.synthetic import ensure_synthetic
from fer_lightning.errors import FERError
from fer_lightning.features.cache import load_or_compute
from fer_lightning.features.extractor import HandcraftedFeatures, resolve_device

log = logging.getLogger(__name__)
SPLITS = ("paper", "loso", "subject_kfold")


class IndexedImages(Dataset):
    """Items ``{"image": (1, S, S) uint8, "label": int, "index": int[, "features": {block: (D,)}]}`` for a
    subset of a decoded set."""

    def __init__(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        indices: Sequence[int],
        features: dict[str, torch.Tensor] | None = None,
    ) -> None:
        self.images, self.targets, self.features = images, targets, features
        self.indices = torch.as_tensor(list(indices), dtype=torch.long)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        j = self.indices[i]
        item: dict[str, Any] = {"image": self.images[j], "label": self.targets[j], "index": j}
        if self.features is not None:
            item["features"] = {k: v[j] for k, v in self.features.items()}
        return item


class JAFFEDataModule(pl.LightningDataModule):
    """JAFFE (or any folder in its file format) with the paper's split or leave-one-subject-out folds.

    With ``root=None`` a deterministic synthetic JAFFE-format set is generated into ``cache_dir`` and used.
    Batches hold ``image`` as uint8 on the loader side; :meth:`on_after_batch_transfer` turns them into float
    ``(B, 1, S, S)`` in ``[0, 1]`` on the target device and augments them there during training.
    """

    def __init__(
        self,
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
        synthetic: dict[str, Any] | None = None,
        features: HandcraftedFeatures | dict[str, Any] | None = None,
        feature_device: str = "auto",
        face_crop: str = "none",
        crop_margin: float = 0.2,
        crop_box: Sequence[int] | None = None,
        inner_folds: int = 0,
        inner_fold: int = 0,
    ) -> None:
        super().__init__()
        if split not in SPLITS:
            raise FERError(f"data.split={split} is unknown; choose one of: {', '.join(SPLITS)}")
        if image_size < 32:
            raise FERError(f"data.image_size={image_size} is too small; MobileNetV2 needs at least 32 pixels")
        self.root = root
        self.image_size = int(image_size)
        self.split_name = split
        self.test_size, self.val_size, self.train_size = test_size, val_size, train_size
        self.fold, self.folds, self.seed = int(fold), int(folds), int(seed)
        self.inner_folds, self.inner_fold = int(inner_folds), int(inner_fold)
        self.cropper = FaceCropper(face_crop, crop_margin, crop_box)
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.cache_dir = cache_dir
        self.synthetic_cfg = dict(synthetic or {})
        self.augment = FaceAugment(**(augment or {}))
        self.extractor = None if features is None else HandcraftedFeatures.build(features)
        self.feature_device = feature_device
        self.class_names: tuple[str, ...] = CLASS_NAMES
        self.decoded: DecodedSet | None = None
        self.split: Split | None = None
        self.features: dict[str, torch.Tensor] | None = None

    # ------------------------------------------------------------------ data
    @property
    def dataset_name(self) -> str:
        return "synthetic" if self.root is None else "jaffe"

    @property
    def fingerprint(self) -> str:
        return self._decoded().fingerprint

    def _image_folder(self) -> Path:
        if self.root is not None:
            return Path(self.root).expanduser()
        if self.cache_dir is None:
            raise FERError("data.cache_dir is not set: the synthetic set needs a folder to be generated into")
        return ensure_synthetic(self.cache_dir, **self.synthetic_cfg)

    def _records(self) -> list[FaceRecord]:
        records = scan_jaffe(self._image_folder())
        present = {r.label for r in records}
        for name in self.class_names:
            if name not in present:
                raise FERError(f"class '{name}' has no images in {self._image_folder()}; every expression is needed")
        if self.root is None:
            log.warning(
                "*** SYNTHETIC DATA *** no data.root given: training on the generated synthetic JAFFE-format set "
                "(%d images). Results say nothing about real faces; set data.root=/path/to/jaffe.", len(records)
            )
        else:
            n_subjects = len({r.subject for r in records})
            if len(records) != JAFFE_N_IMAGES or n_subjects != len(JAFFE_SUBJECTS):
                log.warning(
                    "%s: %d images of %d subjects, unlike the official JAFFE (%d images of %d subjects)",
                    self.root, len(records), n_subjects, JAFFE_N_IMAGES, len(JAFFE_SUBJECTS),
                )
        return records

    def _decoded(self) -> DecodedSet:
        if self.decoded is None:
            self.decoded = load_or_decode(
                self._records(), self.image_size, self.cache_dir, name=self.dataset_name, crop=self.cropper
            )
        return self.decoded

    def prepare_data(self) -> None:
        """Generate the synthetic set and fill the decoded-image cache (once, on one process)."""
        self._decoded()

    def setup(self, stage: str | None = None) -> None:
        if self.split is not None:
            return
        d = self._decoded()
        self.targets = torch.tensor([self.class_names.index(lbl) for lbl in d.labels], dtype=torch.long)
        if self.split_name == "paper":
            self.split = paper_split(
                d.labels, test_size=self.test_size, val_size=self.val_size, train_size=self.train_size, seed=self.seed
            )
        elif self.split_name == "loso":
            self.split = loso_split(d.labels, d.subjects, fold=self.fold, val_size=self.val_size, seed=self.seed)
        else:
            self.split = subject_kfold_split(
                d.labels, d.subjects, folds=self.folds, fold=self.fold, val_size=self.val_size, seed=self.seed
            )
        if self.inner_folds:
            self.split = inner_split(self.split, d.labels, d.subjects, folds=self.inner_folds, fold=self.inner_fold,
                                     seed=self.seed, by_subject=self.split_name != "paper")
            log.info("inner fold %d of %d: the held-out training images are this run's test set (outer test unused)",
                     self.inner_fold, self.inner_folds)
        log.info(
            "%s split of %d images: %d train / %d val / %d test",
            self.split_name, len(d.labels), len(self.split.train), len(self.split.val), len(self.split.test),
        )
        if self.extractor is not None and self.extractor.source == "precomputed":
            log.info("handcrafted descriptor blocks: %s", self.extractor.describe())
            self.features = load_or_compute(
                self.extractor, d.images, d.fingerprint, self.cache_dir, resolve_device(self.feature_device)
            )

    def train_features(self, extractor: HandcraftedFeatures | None = None) -> dict[str, torch.Tensor]:
        """Handcrafted blocks of the training split only (what fitted normalisation and PCA may see): the
        precomputed ones, or ``extractor``'s on the un-augmented training images."""
        self.setup()
        idx = torch.as_tensor(self.split.train, dtype=torch.long)
        if self.features is not None:
            return {k: v[idx] for k, v in self.features.items()}
        if extractor is None:
            raise RuntimeError("no precomputed features and no extractor to compute them with")
        return extractor.compute(self._decoded().images[idx], device=resolve_device(self.feature_device))
    def preprocessing(self) -> dict[str, Any]:
        """How a raw image file becomes a model input here: grey, face crop, resize (stored in checkpoints)."""
        return {"image_size": self.image_size, "face_crop": self.cropper.settings()}

    def file_names(self) -> list[str]:
        """Each image's path relative to the dataset folder (``KA.AN1.39.tiff``, ``happy/001.jpg``)."""
        root = self._image_folder().resolve()
        out = []
        for f in self._decoded().files:
            p = Path(f).resolve()
            out.append(p.relative_to(root).as_posix() if p.is_relative_to(root) else p.name)
        return out

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
        ds = IndexedImages(self._decoded().images, self.targets, getattr(self.split, part), self.features)
        return DataLoader(
            ds,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

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


class FolderDataModule(JAFFEDataModule):
    """Any labelled folder of faces, ``root/<class>/<image>`` (CK+, KDEF, your own photos...).

    Class folder names map to the 7 expressions case-insensitively with common aliases (angry, happy, sad, ...);
    any subset of the classes may be present, and ``class_names`` (so the models' output size) follows the
    classes present. The subject of each image comes from ``subject_regex`` on the file name (default: the file
    stem), so ``split=subject_kfold`` and ``split=loso`` keep each subject's images together. Everything else
    (caching, validation, face cropping, outputs) is the JAFFE data module's.
    """

    def __init__(self, root: str | None = None, subject_regex: str | None = None, **kwargs: Any) -> None:
        if root is None:
            raise FERError("data=folder needs data.root=/path/to/faces (a folder of class folders)")
        super().__init__(root=root, **kwargs)
        self.subject_regex = subject_regex

    @property
    def dataset_name(self) -> str:
        return Path(self.root).expanduser().resolve().name

    def _records(self) -> list[FaceRecord]:
        records = scan_folder(self.root, self.subject_regex)
        present = {r.label for r in records}
        self.class_names = tuple(c for c in CLASS_NAMES if c in present)
        if len(self.class_names) < 2:
            raise FERError(f"data.root={self.root} holds only the class {self.class_names}; at least two are needed")
        log.info("%s: %d images of %d subjects in classes %s", self.root, len(records),
                 len({r.subject for r in records}), ", ".join(self.class_names))
        return records
