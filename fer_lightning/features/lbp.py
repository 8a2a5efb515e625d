"""Uniform local binary patterns on batches, matching ``skimage.feature.local_binary_pattern(..., 'uniform')``.

scikit-image samples ``P`` neighbours on a circle of radius ``R`` (offsets rounded to 5 decimals), reads them with
float64 bilinear interpolation (zero outside the image), sets bit ``i`` when ``neighbour - centre >= 0``, and maps a
pattern with at most two 0/1 changes *along i = 0..P-1 (the wrap-around is not counted)* to its number of ones,
every other pattern to ``P + 1``. Codes are ``0..P+1``.

Two paths give scikit-image's codes exactly:

* the general path replays scikit-image's float64 arithmetic operation by operation, for any ``P``, ``R`` and
  any input dtype;
* a fast path for 8-bit images with ``P=8, R=1``: each diagonal neighbour's test ``V - centre >= 0`` reduces to the
  sign of ``s + rho * t`` with integers ``s = a + d - 2 * centre`` (the two side corners) and ``t = b - centre`` (the
  far corner), ``rho = w_far / w_side``. Over all 8-bit values the smallest non-zero ``|V - centre|`` is 5.0e-4, so a
  fixed-point ``rho`` (17 fractional bits, error < 1e-5 x 255) decides every case except exact ties (``s = t = 0``),
  whose outcome depends on float64 rounding. Flat ties (all four corners equal to the centre ``v``) are read from a
  table of scikit-image's float64 outcome per ``(v, row, column)``, built once per image size; other ties (such as
  linear ramps) are recomputed with scikit-image's float64 formula from the few pixels they need. Photos with
  smooth regions have many ties and run slower than textured faces (see ``bench/features.py``).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

_FIXED_POINT = 1 << 17


def offsets(P: int, R: float) -> list[tuple[float, float]]:
    angles = [2 * math.pi * i / P for i in range(P)]
    return [(round(-R * math.sin(a), 5), round(R * math.cos(a), 5)) for a in angles]


@lru_cache(maxsize=16)
def _uniform_codes(P: int) -> np.ndarray:
    table = np.empty(1 << P, dtype=np.uint8)
    for pattern in range(1 << P):
        bits = [(pattern >> i) & 1 for i in range(P)]
        changes = sum(bits[i] != bits[i + 1] for i in range(P - 1))
        table[pattern] = sum(bits) if changes <= 2 else P + 1
    table.flags.writeable = False
    return table


def uniform_table(P: int) -> torch.Tensor:
    """``table[pattern]`` = scikit-image's uniform code of a ``P``-bit pattern (bit i = neighbour i).

    Cached as a NumPy array (a tensor cached while ``torch.export`` traces would be a fake one)."""
    return torch.from_numpy(_uniform_codes(P).copy())


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


@lru_cache(maxsize=64)
def fractions_np(n: int, offset: float) -> tuple[int, int, np.ndarray]:
    pos = np.arange(n, dtype=np.float64) + offset
    low = np.floor(pos)
    frac = pos - low
    frac.flags.writeable = False
    return int(low[0]), int(np.ceil(pos[0])), frac


@lru_cache(maxsize=64)
def _fractions(n: int, offset: float, device: str) -> tuple[int, int, torch.Tensor]:
    """For positions ``0..n-1`` shifted by ``offset``: (floor offset, ceil offset, scikit-image's float64
    fraction ``(p + offset) - floor(p + offset)`` per position)."""
    low, high, frac = fractions_np(n, offset)
    return low, high, torch.from_numpy(frac.copy()).to(device)


def _tie_bits(xpad: torch.Tensor, ties: torch.Tensor, h: int, w: int, rp: float, cp: float) -> torch.Tensor:
    """scikit-image's float64 test ``bilinear(r + rp, c + cp) - centre >= 0`` at the tie positions ``(K, 3)`` of
    an 8-bit chunk padded by 1; reads only the needed pixels."""
    r0, r1, dr_all = _fractions(h, rp, str(xpad.device))
    c0, c1, dc_all = _fractions(w, cp, str(xpad.device))
    b, r, c = ties.unbind(1)
    stride = w + 2
    base = (b * (h + 2) + r + 1) * stride + c + 1
    flat = xpad.reshape(-1)

    def px(dy: int, dx: int) -> torch.Tensor:
        return flat[base + (dy * stride + dx)].to(torch.float64)

    dr, dc = dr_all[r], dc_all[c]
    top = (1 - dc) * px(r0, c0) + dc * px(r0, c1)
    bottom = (1 - dc) * px(r1, c0) + dc * px(r1, c1)
    return ((1 - dr) * top + dr * bottom) - px(0, 0) >= 0


@lru_cache(maxsize=16)
def _flat_tie_table(h: int, w: int, rp: float, cp: float, device: str) -> torch.Tensor:
    """``(256 * h * w,)`` bool: scikit-image's float64 outcome at a *flat* tie (all four corners equal to the
    centre value ``v``) at ``(r, c)``, indexed by ``v * h * w + r * w + c``. Computed once per image size."""
    dr, dc = _fractions(h, rp, "cpu")[2], _fractions(w, cp, "cpu")[2]
    v = torch.arange(256, dtype=torch.float64).view(256, 1, 1)
    dr, dc = dr.view(1, h, 1), dc.view(1, 1, w)
    top = (1 - dc) * v + dc * v  # the same operations as the general formula with equal corners
    value = (1 - dr) * top + dr * top
    return (value - v >= 0).reshape(-1).to(device)


def _resolve_ties(xpad, centre, ties, side1, h, w, rp, cp) -> torch.Tensor:
    """Bits at tie positions (flat indices into the chunk): flat ties from the table, the rest computed."""
    b, rc = ties // (h * w), ties % (h * w)
    r, c = rc // w, rc % w
    stride = w + 2
    padded = (b * (h + 2) + r + 1) * stride + c + 1
    flat_pad = xpad.reshape(-1)
    v = flat_pad[padded]
    flat = flat_pad[padded + side1[0] * stride + side1[1]] == v  # side equals centre, so all four corners do
    out = _flat_tie_table(h, w, rp, cp, str(xpad.device))[v.long() * (h * w) + rc]
    if not bool(flat.all()):
        other = (~flat).nonzero().squeeze(1)
        out[other] = _tie_bits(xpad, torch.stack([b[other], r[other], c[other]], 1), h, w, rp, cp)
    return out


def _fast_plan() -> list[tuple]:
    """For P=8, R=1: per neighbour either ('axis', (dy, dx)) or ('diag', side1, side2, far, rho_fixed_point)."""
    plan = []
    for rp, cp in offsets(8, 1):
        r0, r1, c0, c1 = math.floor(rp), math.ceil(rp), math.floor(cp), math.ceil(cp)
        if r0 == r1 and c0 == c1:
            plan.append(("axis", (r0, c0)))
            continue
        dr, dc = rp - r0, cp - c0
        corners = {(r0, c0): (1 - dr) * (1 - dc), (r0, c1): (1 - dr) * dc, (r1, c0): dr * (1 - dc), (r1, c1): dr * dc}
        corners.pop((0, 0))  # the centre itself: its difference to the centre is 0
        far = max(corners, key=corners.get)
        side1, side2 = (k for k in corners if k != far)
        plan.append(("diag", side1, side2, far, round(corners[far] / corners[side1] * _FIXED_POINT)))
    return plan


_PLAN = _fast_plan()


def _codes_uint8_p8r1(x: torch.Tensor) -> torch.Tensor:
    """The exact fast path for 8-bit images, P=8, R=1. ``(B, H, W)`` uint8 -> uint8 codes."""
    b, h, w = x.shape
    xpad = F.pad(x, (1, 1, 1, 1))
    wide = xpad.to(torch.int32)

    def at(t: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
        return t[:, 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]

    centre, centre32 = at(xpad, 0, 0), at(wide, 0, 0)
    twice_centre = 2 * centre32
    pattern = torch.zeros(b, h, w, dtype=torch.uint8, device=x.device)
    for i, step in enumerate(_PLAN):
        if step[0] == "axis":
            bit = at(xpad, *step[1]) >= centre
        else:
            _, side1, side2, far, rho = step
            s = at(wide, *side1) + at(wide, *side2) - twice_centre
            u = s.mul_(_FIXED_POINT).add_(at(wide, *far) - centre32, alpha=rho)
            bit = u >= 0
            ties = (u == 0).view(-1).nonzero().squeeze(1)
            if len(ties):  # exact ties: scikit-image's float64 rounding decides
                bit.view(-1)[ties] = _resolve_ties(xpad, centre, ties, side1, h, w, *offsets(8, 1)[i])
        pattern.add_(bit.view(torch.uint8), alpha=1 << i)
    return uniform_table(8).to(x.device)[pattern.long()]


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
    fn = _codes_uint8_p8r1 if fast else (lambda t: _codes_general(t, P, R))
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
    ey, ex = grid_edges(h, gy), grid_edges(w, gx)
    row_cell = torch.bucketize(torch.arange(h), torch.tensor(ey[1:-1]), right=True)
    col_cell = torch.bucketize(torch.arange(w), torch.tensor(ex[1:-1]), right=True)
    cell = (row_cell.view(-1, 1) * gx + col_cell.view(1, -1)).to(codes.device)  # (H, W)
    area = torch.bincount(cell.reshape(-1), minlength=n_cells).to(torch.float32)  # pixels per cell
    base = (cell * n_codes).unsqueeze(0)
    chunk = b if codes.is_cuda else 16
    parts = []
    for i in range(0, b, chunk):
        part = codes[i : i + chunk, 0]
        n = part.shape[0]
        key = part.long().add_(base).add_((torch.arange(n, device=codes.device) * (n_cells * n_codes)).view(n, 1, 1))
        parts.append(torch.bincount(key.view(-1), minlength=n * n_cells * n_codes).view(n, n_cells, n_codes))
    counts = torch.cat(parts)
    return (counts.to(torch.float32) / area.view(1, -1, 1)).reshape(b, -1)


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
        return lbp_histograms(lbp_codes(x, self.P, self.R), self.P + 2, self.grid)
