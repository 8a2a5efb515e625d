"""Test-time augmentation (``model.tta``): class probabilities averaged over transformed copies of each face.

A mode is a function ``images -> [views]`` in :data:`TTA_VIEWS`; :func:`tta_probs` runs a model once on all the
views of a batch (stacked along the batch) and averages their probabilities. Every transform is a fixed slice, flip
or pad of the tensor, so it traces into exported graphs (ONNX, ``torch.export``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn import functional as F

from fer_lightning.runtime.registry import Registry


def shifted(images: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``images`` moved by ``(dy, dx)`` pixels, the uncovered border repeating the edge (no wrap-around).

    Examples:
        >>> shifted(torch.arange(4.0).reshape(1, 1, 1, 4), 0, 1)
        tensor([[[[0., 0., 1., 2.]]]])
    """
    s = max(abs(dy), abs(dx))
    h, w = images.shape[-2:]
    padded = F.pad(images, (s, s, s, s), mode="replicate")
    return padded[..., s - dy: s - dy + h, s - dx: s - dx + w]


def _none(images: torch.Tensor) -> list[torch.Tensor]:
    return [images]


def _flip(images: torch.Tensor) -> list[torch.Tensor]:
    return [images, images.flip(-1)]


def _flip_shift(images: torch.Tensor) -> list[torch.Tensor]:
    s = max(1, images.shape[-1] // 32)  # 2 px at 64, 3 px at 112 and 7 px at 224
    return [*_flip(images), *(shifted(images, dy, dx) for dy, dx in ((s, 0), (-s, 0), (0, s), (0, -s)))]


# model.tta: none | flip (the face and its mirror image) | flip_shift (those and four copies shifted by 1/32 of
# the side, up, down, left and right)
TTA_VIEWS: Registry[Callable[[torch.Tensor], list[torch.Tensor]]] = Registry(
    "model.tta", {"none": _none, "flip": _flip, "flip_shift": _flip_shift})


def tta_probs(probs_of: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, mode: str) -> torch.Tensor:
    """The mean of ``probs_of`` over the views of ``images`` that ``mode`` makes; ``probs_of`` maps ``(B', ...)``
    images to ``(..., B', C)`` probabilities (the batch second to last), and runs once on all the views.

    Shape:
        - images: :math:`(B, 1, H, W)`.
        - Output: like ``probs_of(images)``.

    Examples:
        >>> x = torch.rand(3, 1, 8, 8)
        >>> f = lambda im: im.mean((1, 2)).softmax(-1)  # (B, 8): probabilities from the column means
        >>> torch.allclose(tta_probs(f, x, "flip"), (f(x) + f(x.flip(-1))) / 2)
        True
    """
    views = TTA_VIEWS.get(mode)(images)
    if len(views) == 1:
        return probs_of(images)
    probs = probs_of(torch.cat(views))
    b = images.shape[0]
    return probs.unflatten(-2, (len(views), b)).mean(-3)


def tta_log_probs(logits_of: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, mode: str) -> torch.Tensor:
    """A single model with test-time augmentation: the log of its mean class probabilities over the views of
    ``images`` (``logits_of``: images -> logits); ``mode="none"``: ``logits_of(images)`` itself.

    Shape:
        - images: :math:`(B, 1, H, W)`.
        - Output: :math:`(B, C)` logits (log-probabilities with TTA: their softmax is the mean probability).

    Examples:
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
        >>> x = torch.rand(2, 1, 4, 4)
        >>> p = tta_log_probs(net, x, "flip").softmax(-1)
        >>> torch.allclose(p, (net(x).softmax(-1) + net(x.flip(-1)).softmax(-1)) / 2)
        True
    """
    if TTA_VIEWS.get(mode) is _none:
        return logits_of(images)
    p = tta_probs(lambda x: logits_of(x).float().softmax(-1), images, mode)
    return p.clamp_min(torch.finfo(p.dtype).tiny).log()
