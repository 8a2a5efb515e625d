"""Handcrafted descriptors as batched torch ops (CPU or CUDA) that match scikit-image: functions and their module
twins (``hog`` / :class:`HOG`, ``lbp_codes`` + ``lbp_histograms`` / :class:`LBP`), and the multi-scale extractor."""

from fer_lightning.features.extractor import HandcraftedFeatures
from fer_lightning.features.hog import HOG, hog, hog_dim
from fer_lightning.features.lbp import LBP, lbp_codes, lbp_histograms

__all__ = ["HOG", "LBP", "HandcraftedFeatures", "hog", "hog_dim", "lbp_codes", "lbp_histograms"]
