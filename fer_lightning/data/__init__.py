"""Data: on-disk formats (sources), the decoded-image store, synthetic sets, splits, augmentation and the one
DataModule."""

from fer_lightning.data.classes import CLASS_NAMES, JAFFE_CODES
from fer_lightning.data.datamodule import FERDataModule, FolderDataModule, JAFFEDataModule

__all__ = ["CLASS_NAMES", "JAFFE_CODES", "FERDataModule", "FolderDataModule", "JAFFEDataModule"]
