"""The exact fast path of uniform LBP (``P=8, R=1``) for 8-bit images: patterns in uint8/int16 arithmetic, only the
exact non-flat ties replayed with scikit-image's float64 formula, and per-cell histograms counted from the patterns.

The four axis neighbours are pixels: their bits are ``neighbour >= centre``. A diagonal neighbour is interpolated
from its two side pixels ``a, d`` (equal weights), the far corner ``b`` and the centre ``c``, so ``V - c`` has the
sign of ``s + rho * t`` with integers ``s = a + d - 2c``, ``t = b - c`` and ``rho = 2.41425...`` (the far weight
over a side weight), which is at least 0.002 away from 0 unless ``s = t = 0``. Two int16 steps decide it:
``u = 29 * s + 70 * t`` (``|u| <= 32640``) is within ``|29 rho - 70| * 255 = 3.39`` of ``29 * (s + rho * t)``, so
``|u| >= 4`` decides; for ``|u| <= 3``, ``29 * (s + rho * t) = u + 0.01328 t`` has the sign of ``75 u + t``. So
``z = 75 * clamp(u, -4, 4) + t`` has the bit's sign everywhere and is 0 exactly at the ties ``s = t = 0`` (both
checked over every integer pair at import). At a tie scikit-image's float64 rounding decides: the flat ties
(``a = b = d = c``) it always sets (checked per size), the others are replayed.
"""

from __future__ import annotations

import math
import threading
from functools import lru_cache

import numpy as np
import torch

_SIDE, _FAR = 29, 70  # u = 29 * (a + d - 2c) + 70 * (b - c): 70 / 29 approximates rho
_NEAR = 4  # |u| >= _NEAR decides a diagonal bit
_STEP = 75  # z = 75 * clamp(u, -4, 4) + t decides it everywhere but at s = t = 0 (checked at import)


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


@lru_cache(maxsize=64)
def fractions_np(n: int, offset: float) -> tuple[int, int, np.ndarray]:
    pos = np.arange(n, dtype=np.float64) + offset
    low = np.floor(pos)
    frac = pos - low
    frac.flags.writeable = False
    return int(low[0]), int(np.ceil(pos[0])), frac


@lru_cache(maxsize=64)
@torch.inference_mode(False)  # plain tensors, also when first made under inference mode
def _fractions(n: int, offset: float, device: str) -> tuple[int, int, torch.Tensor]:
    """For positions ``0..n-1`` shifted by ``offset``: (floor offset, ceil offset, scikit-image's float64
    fraction ``(p + offset) - floor(p + offset)`` per position)."""
    low, high, frac = fractions_np(n, offset)
    return low, high, torch.from_numpy(frac.copy()).to(device)


def _check_two_steps(rho: float) -> None:
    """Every integer pair ``s`` in -510..510, ``t`` in -255..255 other than (0, 0): ``z = 75 * clamp(29 s + 70 t,
    -4, 4) + t`` is non-zero and has the sign of ``s + rho * t`` (which is at least 0.002 away from 0, far more
    than float64's rounding), so ``z >= 0`` is scikit-image's bit and ``z = 0`` marks exactly the ties."""
    s, t = np.meshgrid(np.arange(-510, 511), np.arange(-255, 256), indexing="ij")
    z = _STEP * np.clip(_SIDE * s + _FAR * t, -_NEAR, _NEAR) + t
    exact = s + rho * t
    tie = (s == 0) & (t == 0)
    if not (np.abs(exact[~tie]).min() > 1e-3 and ((z > 0) == (exact > 0))[~tie].all() and (z[~tie] != 0).all()):
        raise AssertionError("the two-step int16 LBP decision does not hold for these offsets")


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
        _check_two_steps(rho)
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


def uniform8(pattern: torch.Tensor) -> torch.Tensor:
    """:func:`uniform_table` ``(8)`` applied to a uint8 pattern tensor with bit arithmetic (no gather): the number
    of ones where bits 0..7 change at most twice, else 9."""
    changes = (pattern ^ (pattern >> 1)).bitwise_and_(0x7F)
    changes &= changes - 1
    changes &= changes - 1  # zero when at most two changes
    ones = pattern - ((pattern >> 1) & 0x55)
    ones = (ones & 0x33).add_((ones >> 2) & 0x33)
    ones = ones.add_(ones >> 4).bitwise_and_(0x0F)
    return torch.maximum(ones, (changes != 0).view(torch.uint8) * 9)  # ones <= 8


@lru_cache(maxsize=4)
@torch.inference_mode(False)
def _workspace(b: int, h: int, w: int, device: str, thread: int) -> dict[str, torch.Tensor]:
    """The buffers of :func:`patterns_uint8` for ``(b, h, w)`` chunks, reused from chunk to chunk (fresh
    multi-megabyte tensors cost their page faults on every call, more than the arithmetic on them). Always plain
    tensors, also when first asked for under ``torch.inference_mode`` (as Lightning validates and tests): an
    inference tensor could not be written to afterwards, outside that mode."""
    n = b * h * w
    new = lambda *shape, dtype: torch.empty(*shape, dtype=dtype, device=device)  # noqa: E731
    space = {"xpad": torch.zeros(b, h + 2, w + 2, dtype=torch.uint8, device=device),  # its zero border stays
             "near_all": torch.zeros(-(-n // 8) * 8, dtype=torch.uint8, device=device)}  # its tail stays 0
    for name in ("wide", "side", "far"):
        space[name] = new(b, h + 2, w + 2, dtype=torch.int16)
    for name in ("minus_centre", "signs", "decided", "u", "sign"):
        space[name] = new(b, h, w, dtype=torch.int16)
    for name in ("close", "bit", "nonflat"):
        space[name] = new(b, h, w, dtype=torch.uint8)
    return space


def patterns_uint8(x: torch.Tensor) -> torch.Tensor:
    """scikit-image's 8-bit LBP patterns (bit ``i`` = neighbour ``i`` of :func:`offsets` ``(8, 1)``) of ``(B, H, W)``
    uint8 images, exactly: element-wise uint8/int16 arithmetic in reused buffers (no int16 comparison or shift,
    whose kernels are slow). Each diagonal's ``z`` (module docstring), clamped to -1..1, is summed as ``z`` and
    ``|z|``: their difference gives the bits, ``|z| = 0`` the ties; the exact non-flat ties are replayed in
    float64."""
    (b, h, w), n = x.shape, x.numel()
    ws = _workspace(b, h, w, str(x.device), threading.get_ident())
    xpad, u, sign, close, bit = (ws[k] for k in ("xpad", "u", "sign", "close", "bit"))

    def at(t: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
        return t[:, 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]

    centre = at(xpad, 0, 0)
    centre.copy_(x)
    wide = ws["wide"].copy_(xpad)
    side, far = torch.mul(wide, _SIDE, out=ws["side"]), torch.mul(wide, _FAR, out=ws["far"])
    wide_centre = at(wide, 0, 0)
    minus_centre = torch.mul(wide_centre, -(2 * _SIDE + _FAR), out=ws["minus_centre"])
    signs, decided = ws["signs"].zero_(), ws["decided"].zero_()  # sum of z_i 2^i, sum of |z_i| 2^i
    pattern = torch.zeros(b, h, w, dtype=torch.uint8, device=x.device)
    nonflat = ws["nonflat"].zero_()  # bit i - 1: side1 of diagonal i differs from the centre (its tie is not flat)
    for i, step in enumerate(_PLAN):
        if step[0] == "axis":
            pattern.add_(torch.ge(at(xpad, *step[1]), centre, out=bit.view(torch.bool)).view(torch.uint8),
                         alpha=1 << i)
            continue
        _, side1, side2, far_at = step
        torch.add(at(side, *side1), at(side, *side2), out=u).add_(at(far, *far_at)).add_(minus_centre)
        z = torch.add(at(wide, *far_at), u.clamp_(-_NEAR, _NEAR), alpha=_STEP, out=sign).sub_(wide_centre)
        signs.add_(z.clamp_(-1, 1), alpha=1 << (i - 1))  # z_i in -1, 0 (an exact tie s = t = 0), 1 (i is odd)
        decided.add_(z.abs_(), alpha=1 << (i - 1))
        if _flat_ties_set(h, w):  # a flat tie (side1 = far = centre, so side2 = centre too) is set, as z >= 0 says
            nonflat.add_(torch.ne(at(xpad, *side1), centre, out=bit.view(torch.bool)).view(torch.uint8),
                         alpha=1 << (i - 1))
        else:
            nonflat.add_(1 << (i - 1))
    # diagonal bit i = 1 + min(z_i, 0), and sum_i min(z_i, 0) 2^i = sum_i (z_i - |z_i|) 2^(i-1); near-ties: the
    # exact ties that are not flat
    pattern.add_(close.copy_(signs.sub_(decided)).add_(0xFF ^ _AXIS_BITS))
    near = ws["near_all"][:n].view(b, h, w)
    torch.bitwise_and(nonflat, close.copy_(decided).bitwise_not_(), out=near)
    idx = _flagged(ws["near_all"])
    if len(idx):  # near-ties: scikit-image's float64 rounding decides
        flat = pattern.view(-1)
        axis = flat.index_select(0, idx).bitwise_and_(_AXIS_BITS)
        flat.index_copy_(0, idx, axis | _diagonal_bits_at(xpad, idx, h, w))
    return pattern


@lru_cache(maxsize=8)
@torch.inference_mode(False)  # plain tensors, also when first made under inference mode
def _cell_keys(n: int, h: int, w: int, row_cell: tuple, col_cell: tuple, device: str) -> torch.Tensor:
    """``(n, h, w)`` int32 ``(image * cells + cell) * 256`` of every pixel (the cell of each row and column given)."""
    cells = (max(row_cell) + 1) * (max(col_cell) + 1)
    cell = torch.tensor(row_cell).view(-1, 1) * (max(col_cell) + 1) + torch.tensor(col_cell).view(1, -1)
    keys = (torch.arange(n).view(n, 1, 1) * cells + cell) * 256
    return keys.to(torch.int32).to(device)


def pattern_counts(pattern: torch.Tensor, row_cell: tuple, col_cell: tuple) -> torch.Tensor:
    """Uniform-code counts per cell, ``(B, cells, 10)`` int64, of ``(B, H, W)`` uint8 patterns: one ``bincount`` of
    ``cell * 256 + pattern`` (no per-pixel code lookup), then the 256 pattern counts of each cell summed into the
    10 uniform codes."""
    b = pattern.shape[0]
    keys = _cell_keys(b, *pattern.shape[1:], row_cell, col_cell, str(pattern.device)) + pattern
    cells = (max(row_cell) + 1) * (max(col_cell) + 1)
    counts = torch.bincount(keys.view(-1), minlength=b * cells * 256).view(b, cells, 256)
    codes = uniform_table(8).to(device=pattern.device, dtype=torch.int64)
    return torch.zeros(b, cells, 10, dtype=counts.dtype, device=pattern.device).index_add_(2, codes, counts)
