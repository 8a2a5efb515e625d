"""Batch augmentation and input normalisation with kornia, run on whatever device the batch is on."""

from __future__ import annotations

import kornia
import kornia.augmentation as K
import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class FaceAugment(nn.Module):
    """The paper's training augmentation: horizontal flip, rotation, zoom in/out and brightness.

    Input and output: ``(B, C, H, W)`` float in ``[0, 1]``; same shape, values clipped to ``[0, 1]``.
    """

    def __init__(
        self,
        hflip: float = 0.5,
        degrees: float = 15.0,
        zoom: tuple[float, float] = (0.9, 1.1),
        brightness: float = 0.2,
        p_affine: float = 1.0,
    ) -> None:
        super().__init__()
        self.aug = K.AugmentationSequential(
            K.RandomHorizontalFlip(p=hflip),
            K.RandomAffine(degrees=degrees, scale=tuple(zoom), padding_mode="border", p=p_affine),
            K.ColorJitter(brightness=brightness, p=1.0 if brightness > 0 else 0.0),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.aug(x).clamp_(0.0, 1.0)


def grey_to_imagenet() -> nn.Module:
    """``(B, 1, H, W)`` grey in ``[0, 1]`` -> ``(B, 3, H, W)`` normalised with the ImageNet mean and std."""
    return nn.Sequential(
        kornia.color.GrayscaleToRgb(),
        kornia.enhance.Normalize(mean=torch.tensor(IMAGENET_MEAN), std=torch.tensor(IMAGENET_STD)),
    )
