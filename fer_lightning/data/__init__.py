"""Data: JAFFE file grammar, decoding cache, synthetic set, splits, augmentation and the DataModule."""

from fer_lightning.data.classes import CLASS_NAMES, JAFFE_CODES
from fer_lightning.data.datamodule import FolderDataModule, JAFFEDataModule

__all__ = ["CLASS_NAMES", "JAFFE_CODES", "FolderDataModule", "JAFFEDataModule"]
