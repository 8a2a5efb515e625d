"""Uniform local binary patterns on batches, matching ``skimage.feature.local_binary_pattern(..., 'uniform')``.

scikit-image samples ``P`` neighbours on a circle of radius ``R`` (offsets rounded to 5 decimals), reads them with
float64 bilinear interpolation (zero outside the image), sets bit ``i`` when ``neighbour - centre >= 0``, and maps a
pattern with at most two 0/1 changes *along i = 0..P-1 (the wrap-around is not counted)* to its number of ones,
every other pattern to ``P + 1``. Codes are ``0..P+1``.

Two paths give scikit-image's codes exactly:

* the general path replays scikit-image's float64 arithmetic operation by operation, for any ``P``, ``R`` and
  any input dtype;
* a fast path for 8-bit images with ``P=8, R=1`` (:mod:`~fer_lightning.features.lbp_uint8`), in int16 and uint8
  arithmetic, which replays only the rare near-ties in float64 and counts the histograms straight from the
  8-bit patterns.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

from fer_lightning.features.hog import thread_pool
from fer_lightning.features.lbp_uint8 import offsets, pattern_counts, patterns_uint8, uniform8, uniform_table


def _bilinear_minus_centre(xpad: torch.Tensor, pad: int, b, r, c, rp: float, cp: float) -> torch.Tensor:
    """scikit-image's float64 ``bilinear_interpolation(r + rp, c + cp) - image[r, c]`` at integer positions."""
    rr = r.to(torch.float64) + rp
    cc = c.to(torch.float64) + cp
    minr, maxr, minc, maxc = torch.floor(rr), torch.ceil(rr), torch.floor(cc), torch.ceil(cc)
    dr, dc = rr - minr, cc - minc

    def px(y, x):
        return xpad[b, y.long() + pad, x.long() + pad]

    top = (1 - dc) * px(minr, minc) + dc * px(minr, maxc)
    bottom = (1 - dc) * px(maxr, minc) + dc * px(maxr, maxc)
    return ((1 - dr) * top + dr * bottom) - xpad[b, r + pad, c + pad]


def _codes_general(x: torch.Tensor, P: int, R: float) -> torch.Tensor:
    """Any dtype, any P and R: scikit-image's float64 arithmetic on whole images. ``(B, H, W)`` -> uint8."""
    b, h, w = x.shape
    pad = int(math.ceil(R)) + 1
    xpad = F.pad(x.to(torch.float64), (pad, pad, pad, pad))
    rows = torch.arange(h, device=x.device).view(1, h, 1).expand(b, h, w)
    cols = torch.arange(w, device=x.device).view(1, 1, w).expand(b, h, w)
    batch = torch.arange(b, device=x.device).view(b, 1, 1).expand(b, h, w)
    pattern = torch.zeros(b, h, w, dtype=torch.int32, device=x.device)
    for i, (rp, cp) in enumerate(offsets(P, R)):
        bit = _bilinear_minus_centre(xpad, pad, batch, rows, cols, rp, cp) >= 0
        pattern |= bit.to(torch.int32) << i
    return uniform_table(P).to(x.device)[pattern.long()]


def lbp_codes(x: torch.Tensor, P: int = 8, R: float = 1.0, chunk: int = 16) -> torch.Tensor:
    """Uniform local binary pattern codes of each image (not differentiable), equal to scikit-image's.

    Equals ``skimage.feature.local_binary_pattern(img, P, R, method='uniform')`` on the same image, for 8-bit
    images exactly (``P=8, R=1`` through the fast path). Images are processed ``chunk`` at a time to stay in cache.

    Args:
        x: grey images, uint8 or float.
        P: neighbours on the circle.
        R: the circle's radius in pixels.
        chunk: images per step on the CPU.

    Shape:
        - Input: :math:`(B, 1, H, W)`.
        - Output: :math:`(B, 1, H, W)` uint8 codes in ``0..P+1`` (``P + 1``: not uniform).

    Examples:
        >>> from skimage.feature import local_binary_pattern
        >>> x = torch.randint(0, 256, (2, 1, 20, 24), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        >>> codes = lbp_codes(x)
        >>> codes.shape, codes.dtype
        (torch.Size([2, 1, 20, 24]), torch.uint8)
        >>> reference = local_binary_pattern(x[1, 0].numpy(), 8, 1.0, method="uniform")
        >>> bool((codes[1, 0].numpy() == reference).all())
        True
    """
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"lbp_codes expects (B, 1, H, W) grey images, got {tuple(x.shape)}")
    fast = x.dtype == torch.uint8 and P == 8 and R == 1
    fn = (lambda t: uniform8(patterns_uint8(t))) if fast else (lambda t: _codes_general(t, P, R))
    chunk = max(1, x.shape[0]) if x.is_cuda else chunk
    parts = [fn(x[i : i + chunk, 0]) for i in range(0, x.shape[0], chunk)]
    return torch.cat(parts).unsqueeze(1) if parts else x.new_zeros(x.shape, dtype=torch.uint8)


def grid_edges(size: int, cells: int) -> list[int]:
    """Cell boundaries of a ``cells``-way split of ``size`` pixels: ``[0, ..., size]`` (``floor(k * size / cells)``).

    Examples:
        >>> grid_edges(10, 3)
        [0, 3, 6, 10]
    """
    if not 1 <= cells <= size:
        raise ValueError(f"cannot split {size} pixels into {cells} LBP cells")
    return [k * size // cells for k in range(cells + 1)]


def lbp_histograms(codes: torch.Tensor, n_codes: int, grid: tuple[int, int] = (7, 7)) -> torch.Tensor:
    """Per-cell normalised histograms of LBP codes.

    The image is split into a ``gy x gx`` grid (boundaries :func:`grid_edges`); each cell's histogram sums to 1.
    Order: cell row, cell column, code.

    Args:
        codes: LBP codes (:func:`lbp_codes`).
        n_codes: codes per histogram (``P + 2`` for uniform LBP).
        grid: cells per column and per row ``(gy, gx)``.

    Shape:
        - Input: :math:`(B, 1, H, W)` integer codes in ``0..n_codes-1``.
        - Output: :math:`(B, gy \\cdot gx \\cdot n\\_codes)` float32.

    Examples:
        >>> codes = torch.zeros(1, 1, 4, 4, dtype=torch.uint8)
        >>> codes[0, 0, :2, :2] = 3
        >>> lbp_histograms(codes, n_codes=4, grid=(2, 2)).view(4, 4)
        tensor([[0., 0., 0., 1.],
                [1., 0., 0., 0.],
                [1., 0., 0., 0.],
                [1., 0., 0., 0.]])
    """
    b, _, h, w = codes.shape
    gy, gx = grid
    n_cells = gy * gx
    cell_base, area = _cells(h, w, gy, gx, n_codes, str(codes.device))
    chunk = b if codes.is_cuda else 16
    parts = []
    for i in range(0, b, chunk):
        part = codes[i : i + chunk, 0]
        n = part.shape[0]
        key = cell_base + part  # int32 keys (half the bytes of int64), the same counts
        key += (torch.arange(n, device=codes.device, dtype=torch.int32) * (n_cells * n_codes)).view(n, 1, 1)
        parts.append(torch.bincount(key.view(-1), minlength=n * n_cells * n_codes).view(n, n_cells, n_codes))
    counts = torch.cat(parts)
    return (counts.to(torch.float32) / area.view(1, -1, 1)).reshape(b, -1)


def uniform_lbp(x: torch.Tensor, P: int = 8, R: float = 1.0, grid: tuple[int, int] = (7, 7),  # noqa: N803
                chunk: int = 16) -> torch.Tensor:
    """Per-cell uniform-LBP histograms of each image: :func:`lbp_histograms` of :func:`lbp_codes`, the same values.

    For 8-bit images with ``P=8, R=1`` the histograms are counted straight from the 8-bit patterns (one
    ``bincount`` of ``cell * 256 + pattern`` per chunk of ``chunk`` images, the 256 counts of each cell then summed
    into the 10 uniform codes): no code image is made.

    Args:
        x: grey images, uint8 or float.
        P, R: as :func:`lbp_codes`.
        grid: as :func:`lbp_histograms`.
        chunk: images per step on the CPU.

    Shape:
        - Input: :math:`(B, 1, H, W)`.
        - Output: :math:`(B, gy \\cdot gx \\cdot (P + 2))` float32.

    Examples:
        >>> x = torch.randint(0, 256, (3, 1, 30, 26), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        >>> torch.equal(uniform_lbp(x, grid=(4, 3)), lbp_histograms(lbp_codes(x), 10, (4, 3)))
        True
    """
    if x.ndim != 4 or x.shape[1] != 1 or x.dtype != torch.uint8 or P != 8 or R != 1:
        return lbp_histograms(lbp_codes(x, P, R, chunk), P + 2, grid)
    b, _, h, w = x.shape
    rows, cols = (tuple(int(c) for c in _cell_of(size, cells)) for size, cells in ((h, grid[0]), (w, grid[1])))
    chunk = max(1, b) if x.is_cuda else chunk

    def counts_of(start: int) -> torch.Tensor:
        return pattern_counts(patterns_uint8(x[start : start + chunk, 0]), rows, cols)

    starts = range(0, b, chunk)  # on the CPU: the chunks on threads (the tie replay and bincount use one core)
    parts = list(thread_pool().map(counts_of, starts)) if len(starts) > 1 else [counts_of(0)] if b else []
    counts = torch.cat(parts) if parts else torch.zeros(0, grid[0] * grid[1], 10, dtype=torch.int64)
    area = _cells(h, w, grid[0], grid[1], 10, str(x.device))[1]
    return (counts.to(torch.float32) / area.view(1, -1, 1)).reshape(b, -1)


def _cell_of(size: int, cells: int) -> torch.Tensor:
    """The cell (``0..cells-1``) of each of ``size`` pixels in a :func:`grid_edges` split."""
    return torch.bucketize(torch.arange(size), torch.tensor(grid_edges(size, cells)[1:-1]), right=True)


@lru_cache(maxsize=16)
@torch.inference_mode(False)  # plain tensors, also when first made under inference mode
def _cells(h: int, w: int, gy: int, gx: int, n_codes: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(1, h, w)`` int32 ``cell * n_codes`` of every pixel of a ``gy x gx`` grid, and each cell's area."""
    row_cell, col_cell = _cell_of(h, gy), _cell_of(w, gx)
    cell = row_cell.view(-1, 1) * gx + col_cell.view(1, -1)  # (H, W)
    area = torch.bincount(cell.reshape(-1), minlength=gy * gx).to(torch.float32)  # pixels per cell
    return (cell * n_codes).to(torch.int32).unsqueeze(0).to(device), area.to(device)


class LBP(torch.nn.Module):
    """Uniform-LBP histograms as a module (no parameters): :func:`lbp_codes` then :func:`lbp_histograms`.

    Args:
        P, R: as :func:`lbp_codes`.
        grid: as :func:`lbp_histograms`.

    Shape:
        - Input: :math:`(B, 1, H, W)` uint8 or float.
        - Output: :math:`(B, gy \\cdot gx \\cdot (P + 2))` float32.

    Examples:
        >>> LBP(grid=(7, 7))(torch.zeros(2, 1, 48, 48, dtype=torch.uint8)).shape
        torch.Size([2, 490])
    """

    def __init__(self, P: int = 8, R: float = 1.0, grid: tuple[int, int] = (7, 7)) -> None:  # noqa: N803
        super().__init__()
        self.P, self.R, self.grid = int(P), float(R), (int(grid[0]), int(grid[1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return uniform_lbp(x, self.P, self.R, self.grid)
