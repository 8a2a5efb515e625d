"""Batch augmentation and input normalisation with kornia, run on whatever device the batch is on."""

from __future__ import annotations

import kornia
import kornia.augmentation as K
import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class FaceAugment(nn.Module):
    """The paper's training augmentation: horizontal flip, rotation, zoom in/out and brightness, batch-wise on the
    batch's device (kornia). Its parameters are drawn from torch's global generator of the device the *module* is
    on (kornia moves its generator with the module): the data module keeps it on the CPU, so a GPU run draws the
    CPU run's augmentations and kornia moves them to the batch; a module moved to CUDA would draw CUDA's numbers.

    Args:
        hflip: probability of a horizontal flip.
        degrees: rotations drawn from ``[-degrees, degrees]``.
        zoom: scale factors drawn from ``[zoom[0], zoom[1]]``.
        brightness: brightness jitter (kornia's ``ColorJitter``); 0: none.
        p_affine: probability of the rotation and zoom.

    Shape:
        - Input: :math:`(B, C, H, W)` float in ``[0, 1]``.
        - Output: :math:`(B, C, H, W)`, clipped to ``[0, 1]``.

    Examples:
        >>> _ = torch.manual_seed(0)
        >>> out = FaceAugment()(torch.rand(4, 1, 32, 32))
        >>> out.shape, bool(out.min() >= 0) and bool(out.max() <= 1)
        (torch.Size([4, 1, 32, 32]), True)
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

    def draw(self, x: torch.Tensor) -> None:
        """Draw what :meth:`forward` would draw for ``x`` and touch no pixel: the same random numbers from torch's
        global generator (kornia's ``forward_parameters``), so that a model that never reads the images (a head on
        stored features) skips their augmentation and every later draw stays what it was.

        Examples:
            >>> aug, x = FaceAugment(), torch.rand(4, 1, 32, 32)
            >>> _ = torch.manual_seed(0)
            >>> _ = aug(x)
            >>> after_forward = torch.get_rng_state()
            >>> _ = torch.manual_seed(0)
            >>> aug.draw(x)
            >>> torch.equal(torch.get_rng_state(), after_forward)
            True
        """
        self.aug.forward_parameters(x.shape)


class RecipeAugment(nn.Module):
    """The modern recipe's image augmentation, after :class:`FaceAugment`, batch-wise on the batch's device: kornia's
    ``RandAugment`` or ``TrivialAugment``, then ``RandomErasing``. Grey batches pass through the policies as three
    equal channels (some of their colour operations need RGB; on equal channels they keep them equal) and come back
    grey; RGB batches pass as they are.

    Args:
        auto_augment: ``none``, ``rand`` (RandAugment, 2 operations of magnitude 9, torchvision's defaults) or
            ``trivial`` (TrivialAugment).
        erasing: probability of erasing a random rectangle (2-33% of the image, value 0); 0: none.

    Shape:
        - Input: :math:`(B, C, H, W)` float in ``[0, 1]``, ``C`` 1 or 3.
        - Output: :math:`(B, C, H, W)`, clipped to ``[0, 1]``.

    Examples:
        >>> _ = torch.manual_seed(0)
        >>> out = RecipeAugment("rand", erasing=1.0)(torch.rand(4, 1, 32, 32))
        >>> out.shape, bool(out.min() >= 0) and bool(out.max() <= 1)
        (torch.Size([4, 1, 32, 32]), True)
    """

    def __init__(self, auto_augment: str = "none", erasing: float = 0.0) -> None:
        super().__init__()
        from kornia.augmentation.auto import RandAugment, TrivialAugment

        policies = {"none": None, "rand": lambda: RandAugment(n=2, m=9), "trivial": TrivialAugment}
        self.policy = policies[auto_augment]() if policies[auto_augment] is not None else None
        self.erasing = K.RandomErasing(p=erasing, scale=(0.02, 0.33), ratio=(0.3, 3.3)) if erasing > 0 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.policy is not None:
            grey = x.shape[1] == 1
            x = self.policy(x.expand(-1, 3, -1, -1) if grey else x)
            x = x[:, :1] if grey else x
        if self.erasing is not None:
            x = self.erasing(x)
        return x.clamp(0.0, 1.0)


def grey_to_imagenet() -> nn.Module:
    """Grey images as an ImageNet network's input: repeated to RGB and normalised with the ImageNet mean and std.

    Shape:
        - Input: :math:`(B, 1, H, W)` in ``[0, 1]``.
        - Output: :math:`(B, 3, H, W)`.

    Examples:
        >>> grey_to_imagenet()(torch.full((1, 1, 2, 2), 0.485))[0, :, 0, 0]
        tensor([0.0000, 0.1295, 0.3511])
    """
    return nn.Sequential(
        kornia.color.GrayscaleToRgb(),
        kornia.enhance.Normalize(mean=torch.tensor(IMAGENET_MEAN), std=torch.tensor(IMAGENET_STD)),
    )
