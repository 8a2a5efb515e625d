"""Handcrafted descriptors as batched torch ops (CPU or CUDA) that match scikit-image."""

from fer_lightning.features.extractor import HandcraftedFeatures
from fer_lightning.features.hog import hog, hog_dim
from fer_lightning.features.lbp import lbp_codes, lbp_histograms

__all__ = ["HandcraftedFeatures", "hog", "hog_dim", "lbp_codes", "lbp_histograms"]
