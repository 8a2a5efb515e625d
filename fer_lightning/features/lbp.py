"""Uniform local binary patterns on batches, matching ``skimage.feature.local_binary_pattern(..., 'uniform')``.

scikit-image samples ``P`` neighbours on a circle of radius ``R`` (offsets rounded to 5 decimals), reads them with
float64 bilinear interpolation (zero outside the image), sets bit ``i`` when ``neighbour - centre >= 0``, and maps a
pattern with at most two 0/1 changes *along i = 0..P-1 (the wrap-around is not counted)* to its number of ones,
every other pattern to ``P + 1``. Codes are ``0..P+1``.

Two paths give scikit-image's codes exactly:

* the general path replays scikit-image's float64 arithmetic operation by operation, for any ``P``, ``R`` and
  any input dtype;
* a fast path for 8-bit images with ``P=8, R=1``, in int16 and uint8 arithmetic. The four axis neighbours are
  pixels: their bits are ``neighbour >= centre``. A diagonal neighbour is interpolated from its two side pixels
  ``a, d`` (equal weights), the far corner ``b`` and the centre ``c``, so ``V - c`` has the sign of
  ``s + rho * t`` with integers ``s = a + d - 2c``, ``t = b - c`` and ``rho = 2.41425...`` (the far weight over
  a side weight). ``u = 29 * s + 70 * t`` (in int16: ``|u| <= 32640``) is within ``|29 rho - 70| * 255 = 3.39``
  of ``29 * (s + rho * t)``, so ``|u| >= 4`` decides the bit. The few pixels with ``|u| <= 3`` (near-ties,
  mostly exact ties ``s = t = 0`` where scikit-image's float64 rounding decides) are replayed with scikit-image's
  float64 formula, except flat ties (``a = b = d = c``), which scikit-image always sets (checked per size).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

_SIDE, _FAR = 29, 70  # u = 29 * (a + d - 2c) + 70 * (b - c): 70 / 29 approximates rho
_NEAR = 4  # |u| >= _NEAR decides a diagonal bit


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


def _fast_plan() -> list[tuple]:
    """For P=8, R=1: per neighbour either ('axis', (dy, dx)) or ('diag', side1, side2, far) (pixel offsets)."""
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
        rho = corners[far] / corners[side1]
        if abs(corners[side1] - corners[side2]) > 1e-12 or abs(_SIDE * rho - _FAR) * 255 >= _NEAR - 0.5:
            raise AssertionError("the int16 LBP decision does not hold for these offsets")
        plan.append(("diag", side1, side2, far))
    return plan


_PLAN = _fast_plan()
_AXIS_BITS = sum(1 << i for i, step in enumerate(_PLAN) if step[0] == "axis")


@lru_cache(maxsize=64)
def _flat_ties_set(h: int, w: int) -> bool:
    """Whether scikit-image's float64 bilinear value is ``>=`` the centre at every *flat* diagonal tie (the four
    corners equal to the centre, any value 0..255) of an ``h x w`` image (True for all sizes up to 65536)."""
    v = np.arange(256, dtype=np.float64).reshape(-1, 1, 1)
    for i, (rp, cp) in enumerate(offsets(8, 1)):
        if _PLAN[i][0] == "diag":
            dr = np.unique(fractions_np(h, rp)[2]).reshape(1, -1, 1)
            dc = np.unique(fractions_np(w, cp)[2]).reshape(1, 1, -1)
            top = (1 - dc) * v + dc * v  # the same operations as the general formula with equal corners
            if not bool((((1 - dr) * top + dr * top) - v >= 0).all()):
                return False
    return True


def _flagged(buffer: torch.Tensor) -> torch.Tensor:
    """Flat indices of the non-zero entries of a 1-d integer or bool tensor of a multiple of 8 bytes: the 8-byte
    words holding one are found first (a search over fewer entries), then the entries inside those words."""
    per = 8 // buffer.element_size()
    words = buffer.view(torch.int64).nonzero().squeeze(1)
    lanes = buffer.view(-1, per).index_select(0, words).nonzero()
    return words.index_select(0, lanes[:, 0]) * per + lanes[:, 1]


def _diagonal_bits_at(xpad: torch.Tensor, idx: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """scikit-image's float64 bits of the diagonal neighbours (a uint8 pattern holding only those bits) at the flat
    positions ``idx`` of a ``(B, h, w)`` 8-bit chunk; ``xpad`` is the chunk zero-padded by 1."""
    row = idx // w  # image * h + r
    col = idx - row * w
    r = row - (row // h) * h
    stride = w + 2
    base = (row + 2 * (row // h) + 1) * stride + col + 1
    flat = xpad.view(-1)
    shifts = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    near = torch.stack([flat.index_select(0, base + (dy * stride + dx)) for dy, dx in shifts]).to(torch.float64)
    px = dict(zip(shifts, near, strict=True))  # the 3x3 neighbourhood in float64

    out = torch.zeros(len(idx), dtype=torch.uint8, device=idx.device)
    for i, (rp, cp) in enumerate(offsets(8, 1)):
        if _PLAN[i][0] == "diag":
            r0, r1, dr_all = _fractions(h, rp, str(xpad.device))
            c0, c1, dc_all = _fractions(w, cp, str(xpad.device))
            dr, dc = dr_all.index_select(0, r), dc_all.index_select(0, col)
            top = (1 - dc) * px[r0, c0] + dc * px[r0, c1]
            bottom = (1 - dc) * px[r1, c0] + dc * px[r1, c1]
            # value - centre >= 0 is value >= centre for finite doubles (the difference is 0 only when equal)
            out.add_(((1 - dr) * top + dr * bottom >= px[0, 0]).view(torch.uint8), alpha=1 << i)
    return out


def _uniform8(pattern: torch.Tensor) -> torch.Tensor:
    """:func:`uniform_table` ``(8)`` applied to a uint8 pattern tensor with bit arithmetic (no gather): the number
    of ones where bits 0..7 change at most twice, else 9."""
    changes = (pattern ^ (pattern >> 1)).bitwise_and_(0x7F)
    changes &= changes - 1
    changes &= changes - 1  # zero when at most two changes
    ones = pattern - ((pattern >> 1) & 0x55)
    ones = (ones & 0x33).add_((ones >> 2) & 0x33)
    ones = ones.add_(ones >> 4).bitwise_and_(0x0F)
    return torch.maximum(ones, (changes != 0).view(torch.uint8) * 9)  # ones <= 8


def _codes_uint8_p8r1(x: torch.Tensor) -> torch.Tensor:
    """The exact fast path for 8-bit images, P=8, R=1, ``(B, H, W)`` uint8 -> uint8 codes: element-wise uint8/int16
    arithmetic, shifts and uint8 comparisons only (the vectorised kernels); an int16 sign is ``u >> 15``."""
    (b, h, w), n = x.shape, x.numel()
    xpad = F.pad(x, (1, 1, 1, 1))

    def at(t: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
        return t[:, 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]

    centre = at(xpad, 0, 0)
    wide = xpad.to(torch.int16)
    side, far = wide * _SIDE, wide * _FAR
    minus_centre = at(wide, 0, 0) * -(2 * _SIDE + _FAR)
    skip_flat = _flat_ties_set(h, w)
    near_all = torch.zeros(-(-n // 8) * 8, dtype=torch.uint8, device=x.device)
    near = near_all[:n].view(b, h, w)
    negative = torch.zeros(b, h, w, dtype=torch.int16, device=x.device)  # minus the diagonal bits that are 0
    pattern = torch.zeros(b, h, w, dtype=torch.uint8, device=x.device)
    for i, step in enumerate(_PLAN):
        if step[0] == "axis":
            pattern.add_((at(xpad, *step[1]) >= centre).view(torch.uint8), alpha=1 << i)
            continue
        _, side1, side2, far_at = step
        u = (at(side, *side1) + at(side, *side2)).add_(at(far, *far_at)).add_(minus_centre)
        negative.add_(u >> 15, alpha=1 << i)
        close = u.abs_().sub_(_NEAR).bitwise_right_shift_(15).to(torch.uint8)  # 255 where |u| < _NEAR
        if skip_flat:  # a flat tie (side1 = far = centre, so side2 = centre too): its bit is 1, as u >= 0 says
            close &= ((at(xpad, *side1) != centre) | (at(xpad, *far_at) != centre)).view(torch.uint8)
        near |= close
    pattern += negative.to(torch.uint8).add_(0xFF ^ _AXIS_BITS)
    idx = _flagged(near_all)
    if len(idx):  # near-ties: scikit-image's float64 rounding decides
        flat = pattern.view(-1)
        axis = flat.index_select(0, idx).bitwise_and_(_AXIS_BITS)
        flat.index_copy_(0, idx, axis | _diagonal_bits_at(xpad, idx, h, w))
    return _uniform8(pattern)


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


@lru_cache(maxsize=16)
def _cells(h: int, w: int, gy: int, gx: int, n_codes: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(1, h, w)`` int32 ``cell * n_codes`` of every pixel of a ``gy x gx`` grid, and each cell's area."""
    ey, ex = grid_edges(h, gy), grid_edges(w, gx)
    row_cell = torch.bucketize(torch.arange(h), torch.tensor(ey[1:-1]), right=True)
    col_cell = torch.bucketize(torch.arange(w), torch.tensor(ex[1:-1]), right=True)
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
        return lbp_histograms(lbp_codes(x, self.P, self.R), self.P + 2, self.grid)
