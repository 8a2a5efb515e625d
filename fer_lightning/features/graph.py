"""HOG and uniform-LBP as static graphs: what ``torch.export`` traces and ONNX runs.

The batched ops of :mod:`~fer_lightning.features.hog` and :mod:`~fer_lightning.features.lbp` are fast on a CPU
through threads, a tie search and scatter-adds, none of which a graph can hold. These twins compute the same values
with shifted slices, one-hots and pooling only: LBP codes still exactly scikit-image's, HOG equal up to float32
summation order. :meth:`HandcraftedFeatures.graph <fer_lightning.features.extractor.HandcraftedFeatures.graph>` uses
them whenever a model is being exported.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fer_lightning.features.hog import INT_RANGE, normalize_blocks, orientation_table
from fer_lightning.features.lbp import grid_edges
from fer_lightning.features.lbp_uint8 import fractions_np, offsets, uniform_table

__all__ = ["hog_graph", "lbp_codes_graph", "lbp_histograms_graph"]


def hog_graph(x: torch.Tensor, orientations: int = 9, pixels_per_cell: int = 8, cells_per_block: int = 2,
              block_norm: str = "L2-Hys", eps: float = 1e-5) -> torch.Tensor:
    """:func:`hog` of 8-bit images as one static graph (for ``torch.export`` and ONNX), equal to :func:`hog` up to
    float32 summation order.

    The same exact orientation table (no ``atan2``); the per-cell histograms come from a one-hot of the bins
    average-pooled over each cell instead of a scatter-add, with no data-dependent control flow.

    Shape:
        - Input: :math:`(B, 1, H, W)` uint8.
        - Output: :math:`(B, D)` float32.

    Examples:
        >>> from fer_lightning.features.hog import hog
        >>> x = torch.randint(0, 256, (1, 1, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
        >>> bool(torch.allclose(hog_graph(x), hog(x), atol=1e-6))
        True
    """
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"hog expects (B, 1, H, W) grey images, got {tuple(x.shape)}")
    cell = pixels_per_cell
    h, w = x.shape[-2:]
    n_r, n_c = h // cell, w // cell
    hh, ww = n_r * cell, n_c * cell
    v = x[:, 0].to(torch.float32)  # integers: exact in float32
    zero_row, zero_col = v.new_zeros(v.shape[0], 1, w), v.new_zeros(v.shape[0], h, 1)
    g_row = torch.cat([zero_row, v[:, 2:, :] - v[:, :-2, :], zero_row], dim=1)[:, :hh, :ww]
    g_col = torch.cat([zero_col, v[:, :, 2:] - v[:, :, :-2], zero_col], dim=2)[:, :hh, :ww]
    index = ((g_row + INT_RANGE) * (2 * INT_RANGE + 1) + (g_col + INT_RANGE)).to(torch.int64)
    key = orientation_table(orientations).to(torch.uint8 if orientations < 255 else torch.int64)[index]
    magnitude = torch.sqrt(g_row * g_row + g_col * g_col)
    bins = torch.arange(orientations, dtype=key.dtype).view(1, orientations, 1, 1)
    votes = (key.unsqueeze(1) == bins).to(torch.float32) * magnitude.unsqueeze(1)  # (B, O, hh, ww)
    hist = torch.nn.functional.avg_pool2d(votes, cell).permute(0, 2, 3, 1)  # (B, nR, nC, O): sums / cell area
    k = cells_per_block
    n_r, n_c = n_r - k + 1, n_c - k + 1
    blocks = torch.cat([hist[:, dy : dy + n_r, dx : dx + n_c] for dy in range(k) for dx in range(k)], dim=-1)
    return normalize_blocks(blocks, block_norm, eps).reshape(blocks.shape[0], -1)



def lbp_codes_graph(x: torch.Tensor, P: int = 8, R: float = 1.0) -> torch.Tensor:
    """:func:`lbp_codes` as one static graph (for ``torch.export`` and ONNX), still exact: ``(B, 1, H, W)``
    (uint8 or float) -> ``(B, 1, H, W)`` uint8 codes equal to scikit-image's.

    Examples:
        >>> from fer_lightning.features.lbp import lbp_codes
        >>> x = torch.randint(0, 256, (1, 1, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
        >>> torch.equal(lbp_codes_graph(x), lbp_codes(x))
        True

    It replays scikit-image's float64 arithmetic at every pixel like the general path, with shifted slices of
    the zero-padded image instead of gathers and each position's interpolation fractions as constants (a
    function of the image size only), so there is no tie search and no data-dependent shape.
    """
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"lbp_codes expects (B, 1, H, W) grey images, got {tuple(x.shape)}")
    h, w = x.shape[-2:]
    pad = int(math.ceil(R)) + 1
    centre = x.to(torch.float64)
    xpad = F.pad(centre, (pad, pad, pad, pad))

    def shifted(dy: int, dx: int) -> torch.Tensor:
        return xpad[:, :, pad + dy : pad + dy + h, pad + dx : pad + dx + w]

    pattern = torch.zeros(x.shape, dtype=torch.int64, device=x.device)
    for i, (rp, cp) in enumerate(offsets(P, R)):
        r0, r1, dr = fractions_np(h, rp)
        c0, c1, dc = fractions_np(w, cp)
        dr = torch.from_numpy(dr.copy()).to(x.device).view(1, 1, h, 1)
        dc = torch.from_numpy(dc.copy()).to(x.device).view(1, 1, 1, w)
        top = (1 - dc) * shifted(r0, c0) + dc * shifted(r0, c1)
        bottom = (1 - dc) * shifted(r1, c0) + dc * shifted(r1, c1)
        bit = ((1 - dr) * top + dr * bottom) - centre >= 0
        pattern = pattern + bit.to(torch.int64) * (1 << i)
    return uniform_table(P).to(x.device)[pattern]


def lbp_histograms_graph(codes: torch.Tensor, n_codes: int, grid: tuple[int, int] = (7, 7)) -> torch.Tensor:
    """:func:`lbp_histograms` as one static graph: a one-hot of the codes summed over each cell by two 0/1
    matrix products (exact integer counts in float32), divided by the cell areas: the same values.

    Examples:
        >>> from fer_lightning.features.lbp import lbp_histograms
        >>> codes = torch.randint(0, 10, (2, 1, 14, 14), generator=torch.Generator().manual_seed(3)).to(torch.uint8)
        >>> torch.equal(lbp_histograms_graph(codes, 10), lbp_histograms(codes, 10))
        True
    """
    _, _, h, w = codes.shape
    gy, gx = grid
    ey, ex = grid_edges(h, gy), grid_edges(w, gx)
    rows = torch.zeros(gy, h)
    for k in range(gy):
        rows[k, ey[k] : ey[k + 1]] = 1
    cols = torch.zeros(w, gx)
    for k in range(gx):
        cols[ex[k] : ex[k + 1], k] = 1
    rows, cols = rows.to(codes.device), cols.to(codes.device)
    area = rows.sum(1).view(gy, 1) * cols.sum(0).view(1, gx)
    onehot = (codes == torch.arange(n_codes, dtype=codes.dtype, device=codes.device).view(1, n_codes, 1, 1))
    counts = rows @ onehot.to(torch.float32) @ cols  # (B, n_codes, gy, gx)
    return (counts / area).permute(0, 2, 3, 1).reshape(codes.shape[0], -1)

