"""The handcrafted descriptor: HOG and uniform-LBP histograms at one or more scales, as named blocks."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fer_lightning.errors import FERError
from fer_lightning.features.graph import hog_graph, lbp_codes_graph, lbp_histograms_graph
from fer_lightning.features.hog import hog, hog_dim
from fer_lightning.features.lbp import lbp_histograms, uniform_lbp
from fer_lightning.runtime.registry import choose

log = logging.getLogger(__name__)
BACKENDS = ("torch", "skimage")
SOURCES = ("precomputed", "online")

HOG_DEFAULTS = {"orientations": 9, "pixels_per_cell": 8, "cells_per_block": 2, "block_norm": "L2-Hys", "scales": [224]}
LBP_DEFAULTS = {"P": 8, "R": 1.0, "grid": [7, 7], "scales": [224]}


def _normalised(cfg: dict[str, Any], int_keys: Sequence[str]) -> dict[str, Any]:
    """Plain Python values (config containers and numeric strings become lists and ints)."""
    out = dict(cfg)
    for k in int_keys:
        out[k] = int(out[k])
    out["scales"] = [int(s) for s in out["scales"]]
    return out


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Float images in ``[0, 1]`` -> uint8 0..255 (rounded); uint8 stays as it is.

    Shape:
        - Input: :math:`(*)` float in ``[0, 1]`` or uint8.
        - Output: :math:`(*)` uint8.

    Examples:
        >>> to_uint8(torch.tensor([0.0, 0.5, 1.0]))
        tensor([  0, 128, 255], dtype=torch.uint8)
    """
    if x.dtype == torch.uint8:
        return x
    if not x.is_floating_point():
        raise ValueError(f"images must be uint8 or float in [0, 1], got {x.dtype}")
    return x.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 in ``[0, 1]`` (``x / 255``); float images are returned as they are.

    Shape:
        - Input: :math:`(*)` uint8 or float.
        - Output: :math:`(*)` float32 (or the input's float dtype).

    Examples:
        >>> to_unit(torch.tensor([0, 51, 255], dtype=torch.uint8))
        tensor([0.0000, 0.2000, 1.0000])
    """
    if images.dtype == torch.uint8:
        return images.float().div(255.0)
    return images


def resize_uint8(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize 8-bit images (antialiased bilinear, rounded), as the multi-scale descriptors do.

    Shape:
        - Input: :math:`(B, 1, H, W)` uint8.
        - Output: :math:`(B, 1, size, size)` uint8.

    Examples:
        >>> resize_uint8(torch.full((1, 1, 8, 8), 200, dtype=torch.uint8), 4).unique()
        tensor([200], dtype=torch.uint8)
    """
    if x.shape[-2:] == (size, size):
        return x
    y = F.interpolate(x.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return y.round_().clamp_(0, 255).to(torch.uint8)


class HandcraftedFeatures(nn.Module):
    """HOG and uniform-LBP descriptors of grey images, as named blocks ``hog@<scale>`` and ``lbp@<scale>``.

    Input ``(B, 1, H, W)``: uint8, or float in ``[0, 1]`` (quantised to 8 bits, like the stored images). Each scale
    resizes the image to ``scale x scale`` first (the paper's single 224 scale needs no resizing at 224). Output:
    ``{name: (B, D_name)}`` float32, computed in uint8/float32 whatever autocast is on. ``backend='skimage'``
    computes the same blocks with scikit-image, one image at a time, as the reference; ``source`` says whether
    the data module precomputes them once (``precomputed``) or a model computes them on each augmented batch on
    its device (``online``).

    Args:
        hog: HOG settings (``orientations``, ``pixels_per_cell``, ``cells_per_block``, ``block_norm``, ``scales``),
            or None for no HOG.
        lbp: LBP settings (``P``, ``R``, ``grid``, ``scales``), or None for no LBP.
        backend: ``torch`` (batched, CPU or CUDA) or ``skimage`` (the reference).
        source: ``precomputed`` or ``online``.
        batch_size: images per batch when a whole dataset's blocks are computed.
        store_dtype: ``float32`` or ``float16`` for precomputed blocks on disk.

    Shape:
        - Input: :math:`(B, 1, H, W)` uint8 or float in ``[0, 1]``.
        - Output: ``{"hog@<s>": (B, D_hog), "lbp@<s>": (B, gy * gx * (P + 2))}`` float32.

    Examples:
        >>> extractor = HandcraftedFeatures(hog={"scales": [48]}, lbp={"scales": [48]})
        >>> extractor.block_dims()
        {'hog@48': 900, 'lbp@48': 490}
        >>> {k: tuple(v.shape) for k, v in extractor(torch.zeros(2, 1, 48, 48, dtype=torch.uint8)).items()}
        {'hog@48': (2, 900), 'lbp@48': (2, 490)}
    """

    def __init__(
        self,
        hog: dict[str, Any] | None = None,
        lbp: dict[str, Any] | None = None,
        backend: str = "torch",
        source: str = "precomputed",
        batch_size: int = 256,
        store_dtype: str = "float32",
    ) -> None:
        super().__init__()
        choose(backend, BACKENDS, "features.backend")
        choose(source, SOURCES, "features.source")
        if source == "online" and backend != "torch":
            raise FERError("features.source=online needs features.backend=torch (scikit-image runs on the CPU only)")
        self.hog_cfg = None if hog is None else _normalised({**HOG_DEFAULTS, **hog}, ("orientations", "pixels_per_cell",
                                                                                      "cells_per_block"))
        self.lbp_cfg = None if lbp is None else _normalised({**LBP_DEFAULTS, **lbp}, ("P",))
        if self.lbp_cfg is not None:
            self.lbp_cfg["R"] = float(self.lbp_cfg["R"])
            self.lbp_cfg["grid"] = [int(g) for g in self.lbp_cfg["grid"]]
        if self.hog_cfg is None and self.lbp_cfg is None:
            raise FERError("features: both hog and lbp are off; enable at least one descriptor")
        self.backend, self.source, self.batch_size = backend, source, int(batch_size)
        self.store_dtype = store_dtype  # precomputed blocks on disk: float32, or float16 (half the size)
        for name, cfg in (("hog", self.hog_cfg), ("lbp", self.lbp_cfg)):
            if cfg is not None and (not cfg["scales"] or any(int(s) < 16 for s in cfg["scales"])):
                raise FERError(f"features.{name}.scales={cfg['scales']}: give one or more image sizes of 16 px or more")

    @classmethod
    def build(cls, spec: HandcraftedFeatures | dict[str, Any]) -> HandcraftedFeatures:
        """An extractor from an instance or a config dict (a ``_target_`` key is ignored)."""
        if isinstance(spec, cls):
            return spec
        spec = {k: v for k, v in dict(spec).items() if k != "_target_"}
        return cls(**spec)

    def full_config(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this extractor (stored in checkpoints)."""
        return {"hog": self.hog_cfg, "lbp": self.lbp_cfg, "backend": self.backend, "source": self.source,
                "batch_size": self.batch_size, "store_dtype": self.store_dtype}

    # ------------------------------------------------------------------ layout
    def config(self) -> dict[str, Any]:
        """Everything that changes the values (the cache key and the checkpoint record)."""
        return {"hog": self.hog_cfg, "lbp": self.lbp_cfg, "backend": self.backend}

    def block_dims(self) -> dict[str, int]:
        dims = {}
        if self.hog_cfg is not None:
            h = self.hog_cfg
            for s in h["scales"]:
                dims[f"hog@{s}"] = hog_dim(s, s, h["orientations"], h["pixels_per_cell"], h["cells_per_block"])
        if self.lbp_cfg is not None:
            gy, gx = self.lbp_cfg["grid"]
            for s in self.lbp_cfg["scales"]:
                dims[f"lbp@{s}"] = gy * gx * (self.lbp_cfg["P"] + 2)
        return dims

    def describe(self) -> str:
        dims = self.block_dims()
        return ", ".join(f"{k}: {v}" for k, v in dims.items()) + f" (total {sum(dims.values())})"

    # ------------------------------------------------------------------ compute
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.autocast(x.device.type, enabled=False):  # exact values under mixed precision too
            x = to_uint8(x)
            if torch.compiler.is_exporting():
                return self.graph(x)
            if self.backend == "skimage":
                return self._skimage(x)
            return self._blocks(x, hog, uniform_lbp)

    def graph(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The same blocks as one static graph (what ``torch.export`` and the ONNX export trace): no threads,
        tie search or scatter; LBP codes still exactly scikit-image's, HOG equal up to float32 summation order."""
        return self._blocks(to_uint8(x), hog_graph, lambda im, P, R, grid: lbp_histograms_graph(  # noqa: N803
            lbp_codes_graph(im, P, R), P + 2, grid))

    def _blocks(self, x: torch.Tensor, hog_fn, lbp_fn) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        if self.hog_cfg is not None:
            h = self.hog_cfg
            for s in h["scales"]:
                out[f"hog@{s}"] = hog_fn(
                    resize_uint8(x, s), h["orientations"], h["pixels_per_cell"], h["cells_per_block"], h["block_norm"]
                )
        if self.lbp_cfg is not None:
            lb = self.lbp_cfg
            for s in lb["scales"]:
                out[f"lbp@{s}"] = lbp_fn(resize_uint8(x, s), lb["P"], lb["R"], tuple(lb["grid"]))
        return out

    def _skimage(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        from skimage.feature import hog as sk_hog
        from skimage.feature import local_binary_pattern

        out: dict[str, list] = {}
        if self.hog_cfg is not None:
            h = self.hog_cfg
            for s in h["scales"]:
                imgs = resize_uint8(x, s)[:, 0].cpu().numpy()
                out[f"hog@{s}"] = [
                    sk_hog(im, orientations=h["orientations"], pixels_per_cell=(h["pixels_per_cell"],) * 2,
                           cells_per_block=(h["cells_per_block"],) * 2, block_norm=h["block_norm"], feature_vector=True)
                    for im in imgs
                ]
        if self.lbp_cfg is not None:
            lb = self.lbp_cfg
            for s in lb["scales"]:
                imgs = resize_uint8(x, s)[:, 0].cpu().numpy()
                codes = np.stack([local_binary_pattern(im, lb["P"], lb["R"], method="uniform") for im in imgs])
                codes_t = torch.from_numpy(codes.astype(np.uint8)).unsqueeze(1)
                out[f"lbp@{s}"] = lbp_histograms(codes_t, lb["P"] + 2, tuple(lb["grid"]))
        return {
            k: (v if isinstance(v, torch.Tensor) else torch.from_numpy(np.stack(v))).to(torch.float32).to(x.device)
            for k, v in out.items()
        }


@torch.no_grad()
def blocks_in_batches(
    compute: Callable[[torch.Tensor], dict[str, torch.Tensor]],
    images: torch.Tensor,
    batch_size: int,
    device: torch.device | str = "cpu",
) -> dict[str, torch.Tensor]:
    """Named blocks of many images, ``batch_size`` at a time on ``device``, gathered on the CPU as float32.

    Args:
        compute: ``(b, 1, S, S)`` images on ``device`` -> ``{block: (b, D)}`` (an extractor, a backbone's GAP, ...).
        images: the images, on any device (a memory-mapped store stays where it is; each batch is moved).
        batch_size: images per call of ``compute``.
        device: where ``compute`` runs.

    Shape:
        - images: :math:`(N, 1, S, S)`.
        - Output: ``{block: (N, D_block)}`` float32 on the CPU.

    Examples:
        >>> x = torch.arange(6, dtype=torch.uint8).view(6, 1, 1, 1)
        >>> blocks_in_batches(lambda b: {"sum": b.flatten(1).float()}, x, batch_size=4)["sum"].flatten()
        tensor([0., 1., 2., 3., 4., 5.])
    """
    parts: dict[str, list[torch.Tensor]] = {}
    for i in range(0, len(images), batch_size):
        for k, v in compute(images[i : i + batch_size].to(device)).items():
            parts.setdefault(k, []).append(v.detach().float().cpu())
    return {k: torch.cat(v) for k, v in parts.items()}
