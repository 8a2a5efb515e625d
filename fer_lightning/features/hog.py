"""Histogram of Oriented Gradients on batches, matching ``skimage.feature.hog``.

Same algorithm as scikit-image (``channel_axis=None``, ``transform_sqrt=False``): central-difference gradients
with zero rows/columns at the border, unsigned orientation ``rad2deg(atan2(g_row, g_col)) % 180`` hard-binned into
``[180 i / n, 180 (i + 1) / n)``, per-cell magnitude sums divided by the cell area over the full cells only,
overlapping blocks of ``cells_per_block`` cells with one-cell stride, normalised per block, and flattened in
scikit-image's ``(block_row, block_col, cell_row, cell_col, orientation)`` order.

Integer images take an exact path (gradients are integers in -255..255, so the orientation bin comes from a
table computed with scikit-image's own float64 formula); floating images take a differentiable path (the
gradient magnitudes carry gradients back to the input).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numpy as np
import torch

INT_RANGE = 255  # 8-bit images: gradients lie in -255..255
_CPU_CHUNK = 16


@lru_cache(maxsize=1)
def thread_pool() -> ThreadPoolExecutor:
    """The threads that CPU chunks of HOG and LBP run on (as many as torch uses)."""
    return ThreadPoolExecutor(max_workers=max(1, torch.get_num_threads()), thread_name_prefix="fer-hog")


def orientation_table(orientations: int) -> torch.Tensor:
    """``table[(g_row + 255) * 511 + g_col + 255]`` = scikit-image's bin of that gradient, or ``orientations``
    when it votes nowhere (an orientation that rounds to 180 degrees). Cached as a NumPy array (a tensor cached
    while ``torch.export`` traces would be a fake one)."""
    return torch.from_numpy(_orientation_bins(orientations).copy())


@lru_cache(maxsize=8)
def _orientation_bins(orientations: int) -> np.ndarray:
    g = np.arange(-INT_RANGE, INT_RANGE + 1, dtype=np.float64)
    g_row, g_col = np.meshgrid(g, g, indexing="ij")
    ori = np.rad2deg(np.arctan2(g_row, g_col)) % 180
    per = 180.0 / orientations
    table = np.full(ori.shape, orientations, dtype=np.int64)
    for i in range(orientations):
        table[(ori < per * (i + 1)) & (ori >= per * i)] = i
    table = table.reshape(-1)
    table.flags.writeable = False
    return table


def hog_dim(height: int, width: int, orientations: int = 9, pixels_per_cell: int = 8, cells_per_block: int = 2) -> int:
    """Length of the HOG vector of a ``height x width`` image.

    Examples:
        >>> hog_dim(224, 224)
        26244
        >>> hog_dim(48, 48, orientations=8)
        800
    """
    n_r, n_c = height // pixels_per_cell - cells_per_block + 1, width // pixels_per_cell - cells_per_block + 1
    return max(n_r, 0) * max(n_c, 0) * cells_per_block**2 * orientations


def _gradients(x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.to(dtype)
    g_row = torch.zeros_like(x)
    g_col = torch.zeros_like(x)
    g_row[:, 1:-1, :] = x[:, 2:, :] - x[:, :-2, :]
    g_col[:, :, 1:-1] = x[:, :, 2:] - x[:, :, :-2]
    return g_row, g_col


@lru_cache(maxsize=32)
@torch.inference_mode(False)  # plain tensors, also when first made under inference mode
def _cell_keys(hh: int, ww: int, cell: int, bins_total: int, device: str) -> torch.Tensor:
    """``(hh, ww)`` int64: ``cell_index * bins_total`` for every pixel of the full-cell area."""
    n_c = ww // cell
    rows = (torch.arange(hh) // cell).view(-1, 1) * n_c
    return ((rows + torch.arange(ww) // cell) * bins_total).to(device)


def _cell_histograms(x: torch.Tensor, orientations: int, cell: int) -> torch.Tensor:
    """``(B, H, W)`` -> ``(B, n_cells_row, n_cells_col, orientations)`` magnitude sums / cell area."""
    b, h, w = x.shape
    n_r, n_c = h // cell, w // cell
    hh, ww = n_r * cell, n_c * cell
    bins_total = orientations + 1  # the last bin collects "no vote"
    if not x.is_floating_point():
        if int(x.min()) < 0 or int(x.max()) > INT_RANGE:
            raise ValueError("integer images for HOG must hold values in 0..255")
        g_row, g_col = _gradients(x, torch.int32)
        g_row, g_col = g_row[:, :hh, :ww], g_col[:, :hh, :ww]
        table = orientation_table(orientations).to(x.device)
        index = (g_row + INT_RANGE).mul_(2 * INT_RANGE + 1).add_(g_col + INT_RANGE)
        key = table.index_select(0, index.view(-1)).view(index.shape)  # int32 indices: no int64 copy of them
        magnitude = torch.hypot(g_row.float(), g_col.float())
    else:
        g_row, g_col = _gradients(x, x.dtype)
        g_row, g_col = g_row[:, :hh, :ww], g_col[:, :hh, :ww]
        if g_row.requires_grad:  # hypot's gradient is NaN at 0; this differs from it by < 1e-12
            magnitude = torch.sqrt(g_row.square() + g_col.square() + 1e-24)
        else:
            magnitude = torch.hypot(g_row, g_col)
        ori = torch.rad2deg(torch.atan2(g_row.detach(), g_col.detach())).remainder(180.0)
        edges = torch.arange(1, orientations, dtype=ori.dtype, device=ori.device) * (180.0 / orientations)
        key = torch.bucketize(ori, edges, right=True)
        key = torch.where(ori >= 180.0, orientations, key)
    key += _cell_keys(hh, ww, cell, bins_total, str(x.device))
    key += (torch.arange(b, device=x.device) * (n_r * n_c * bins_total)).view(b, 1, 1)
    hist = torch.zeros(b * n_r * n_c * bins_total, dtype=magnitude.dtype, device=x.device)
    hist = hist.index_add(0, key.view(-1), magnitude.reshape(-1))
    return hist.view(b, n_r, n_c, bins_total)[..., :orientations] / float(cell * cell)


def normalize_blocks(blocks: torch.Tensor, method: str, eps: float) -> torch.Tensor:
    """Normalise ``(..., D)`` block vectors like scikit-image's ``_hog_normalize_block``."""
    if method == "L1":
        return blocks / (blocks.abs().sum(-1, keepdim=True) + eps)
    if method == "L1-sqrt":
        return torch.sqrt(blocks / (blocks.abs().sum(-1, keepdim=True) + eps))
    if method == "L2":
        return blocks / torch.sqrt(blocks.square().sum(-1, keepdim=True) + eps**2)
    if method == "L2-Hys":
        if blocks.requires_grad:
            out = (blocks / torch.sqrt(blocks.square().sum(-1, keepdim=True) + eps**2)).clamp(max=0.2)
            return out / torch.sqrt(out.square().sum(-1, keepdim=True) + eps**2)
        # in place: the same arithmetic without the temporaries
        norm = blocks.square().sum(-1, keepdim=True).add_(eps**2).sqrt_()
        out = (blocks / norm).clamp_(max=0.2)
        return out.div_(out.square().sum(-1, keepdim=True).add_(eps**2).sqrt_())
    raise ValueError(f"unknown HOG block_norm '{method}'; choose L1, L1-sqrt, L2 or L2-Hys")


def hog(
    x: torch.Tensor,
    orientations: int = 9,
    pixels_per_cell: int = 8,
    cells_per_block: int = 2,
    block_norm: str = "L2-Hys",
    eps: float = 1e-5,
) -> torch.Tensor:
    """Histogram of oriented gradients of each image, equal to scikit-image's.

    Equals ``skimage.feature.hog(img, orientations, (ppc, ppc), (cpb, cpb), block_norm, feature_vector=True)`` on
    the same image (26,244 values at 224x224 with the defaults). Integer images take an exact path; float images a
    differentiable one.

    Args:
        x: grey images, uint8 0..255 or float.
        orientations: orientation bins over 0..180 degrees.
        pixels_per_cell: side of a square cell in pixels.
        cells_per_block: side of a square block in cells (blocks overlap with a one-cell stride).
        block_norm: ``L1``, ``L1-sqrt``, ``L2`` or ``L2-Hys`` (scikit-image's names).
        eps: the normalisation's epsilon.

    Shape:
        - Input: :math:`(B, 1, H, W)`.
        - Output: :math:`(B, D)` float32 (float64 for float64 input), ``D = hog_dim(H, W, ...)``.

    Examples:
        >>> from skimage.feature import hog as sk_hog
        >>> x = torch.randint(0, 256, (2, 1, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        >>> h = hog(x)
        >>> h.shape
        torch.Size([2, 324])
        >>> reference = sk_hog(x[0, 0].numpy(), orientations=9, pixels_per_cell=(8, 8), cells_per_block=(2, 2))
        >>> bool(torch.allclose(h[0].double(), torch.from_numpy(reference), atol=1e-6))
        True
    """
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"hog expects (B, 1, H, W) grey images, got {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if hog_dim(h, w, orientations, pixels_per_cell, cells_per_block) == 0:
        need = pixels_per_cell * cells_per_block
        raise ValueError(f"images of {h}x{w} are too small for HOG: at least {need}x{need} pixels are needed")
    def one_chunk(start: int) -> torch.Tensor:
        hist = _cell_histograms(x[start : start + chunk, 0], orientations, pixels_per_cell)  # (b, nR, nC, O)
        k = cells_per_block
        n_r, n_c = hist.shape[1] - k + 1, hist.shape[2] - k + 1
        # block vector = its cells in (cell_row, cell_col, orientation) order, as scikit-image ravels it
        blocks = torch.cat([hist[:, dy : dy + n_r, dx : dx + n_c] for dy in range(k) for dx in range(k)], dim=-1)
        return normalize_blocks(blocks, block_norm, eps).reshape(blocks.shape[0], -1)

    if x.is_cuda or x.requires_grad or x.shape[0] <= _CPU_CHUNK:
        chunk = x.shape[0]
        return one_chunk(0)
    # On the CPU: chunks small enough to stay in cache, on as many threads as torch uses (index_add, the
    # histogram step, runs on one core); each chunk's result does not depend on the others.
    chunk = _CPU_CHUNK
    return torch.cat(list(thread_pool().map(one_chunk, range(0, x.shape[0], chunk))))


class HOG(torch.nn.Module):
    """:func:`hog` as a module (no parameters): the HOG of each image, equal to scikit-image's.

    Args:
        orientations, pixels_per_cell, cells_per_block, block_norm: as :func:`hog`.

    Shape:
        - Input: :math:`(B, 1, H, W)` uint8 or float.
        - Output: :math:`(B, D)`.

    Examples:
        >>> HOG(orientations=8)(torch.zeros(3, 1, 48, 48, dtype=torch.uint8)).shape
        torch.Size([3, 800])
    """

    def __init__(self, orientations: int = 9, pixels_per_cell: int = 8, cells_per_block: int = 2,
                 block_norm: str = "L2-Hys") -> None:
        super().__init__()
        self.orientations, self.pixels_per_cell = int(orientations), int(pixels_per_cell)
        self.cells_per_block, self.block_norm = int(cells_per_block), block_norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return hog(x, self.orientations, self.pixels_per_cell, self.cells_per_block, self.block_norm)


def hog_glyphs(x: torch.Tensor, orientations: int = 9, pixels_per_cell: int = 8) -> np.ndarray:
    """What each image's HOG holds, as a picture: scikit-image's ``hog(visualize=True)`` image, drawn at once.

    In every cell, one line through its centre per orientation bin (perpendicular to the bin's mid gradient
    direction, ``pixels_per_cell // 2 - 1`` pixels either side), as bright as that bin's gradient-magnitude sum per
    pixel of the cell (before block normalisation). The same lines and sums as scikit-image, added in its order;
    the sums are this module's (float32 rounding apart, scikit-image's).

    Shape:
        - Input: :math:`(B, 1, H, W)` uint8 or float.
        - Output: :math:`(B, H, W)` float64 numpy.

    Examples:
        >>> from skimage.feature import hog as sk_hog
        >>> x = torch.randint(0, 256, (1, 1, 32, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        >>> _, reference = sk_hog(x[0, 0].numpy(), 9, (8, 8), (2, 2), visualize=True)
        >>> bool(np.allclose(hog_glyphs(x)[0], reference, rtol=1e-5, atol=1e-9))
        True
    """
    from skimage.draw import line

    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"hog_glyphs expects (B, 1, H, W) grey images, got {tuple(x.shape)}")
    cell = int(pixels_per_cell)
    hist = _cell_histograms(x[:, 0], orientations, cell).double().cpu().numpy()  # (B, n_r, n_c, O)
    b, n_r, n_c, _ = hist.shape
    out = np.zeros((b, *x.shape[-2:]))
    radius = cell // 2 - 1
    middle = np.pi * (np.arange(orientations) + 0.5) / orientations  # scikit-image's float64 arithmetic, per centre
    rows, cols = np.arange(n_r) * cell + cell // 2, np.arange(n_c) * cell + cell // 2
    for o in range(orientations):
        dr, dc = radius * np.sin(middle[o]), radius * np.cos(middle[o])
        # the line's two ends relative to each cell's centre (the same for nearly every cell: grouped)
        row_ends = np.stack([np.trunc(rows - dc), np.trunc(rows + dc)], 1).astype(int) - rows[:, None]
        col_ends = np.stack([np.trunc(cols + dr), np.trunc(cols - dr)], 1).astype(int) - cols[:, None]
        for r_end in np.unique(row_ends, axis=0):
            r_sel = np.flatnonzero((row_ends == r_end).all(1))
            for c_end in np.unique(col_ends, axis=0):
                c_sel = np.flatnonzero((col_ends == c_end).all(1))
                rr, cc = line(int(r_end[0]), int(c_end[0]), int(r_end[1]), int(c_end[1]))
                at_r = rows[r_sel][:, None, None] + rr  # (cells' rows, 1, pixels)
                at_c = cols[c_sel][None, :, None] + cc  # (1, cells' columns, pixels)
                sums = hist[:, r_sel][:, :, c_sel, o][..., None]  # (B, rows, columns, 1)
                out[:, at_r, at_c] += sums
    return out
