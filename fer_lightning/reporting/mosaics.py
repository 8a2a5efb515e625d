"""Pictures of many faces at once, each row of faces one image (a mosaic) in one axes: the TensorBoard pictures of
training (:class:`~fer_lightning.engine.callbacks.TrainingPictures`), a grid of what the model sees and the HOG and
LBP of a few faces.

They are drawn beside the first epochs of training, and a head on fixed features trains in seconds: with an axes
per face (ticks, spines, a layout engine placing each) they cost more CPU than many of its epochs. A mosaic costs a
few axes per picture and is placed by hand. Figures are made without pyplot and sized like
:mod:`~fer_lightning.reporting.faces`' (at most 7.5 inches wide, 150 dpi). Faces are ``(N, H, W)`` grey arrays,
uint8 or float in ``[0, 1]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import matplotlib
import numpy as np
import torch
from matplotlib.cm import ScalarMappable
from matplotlib.collections import LineCollection
from matplotlib.colors import Colormap, Normalize
from matplotlib.figure import Figure

from fer_lightning.features.hog import hog_glyphs
from fer_lightning.features.lbp import grid_edges, lbp_codes, lbp_histograms
from fer_lightning.reporting.faces import DPI, PAGE_WIDTH

GAP = 4  # pixels between two faces of a mosaic
LABEL_BAND = 0.18  # the band above each row of the grid for its labels, as a fraction of a face's height
TITLE_IN = 0.35  # inches above the mosaics for the figure's title
LEFT_IN = 0.22  # inches left of them for the row labels


def mosaic(tiles: np.ndarray, ncols: int, gap: int = GAP, band: int = 0) -> np.ndarray:
    """``(N, H, W)`` tiles in rows of ``ncols``, as one float image: NaN (drawn as the background) between them
    and in a band of ``band`` pixels above each row (for labels). Tile ``i`` lies at :func:`tile_at`.

    Examples:
        >>> m = mosaic(np.ones((3, 2, 2)), ncols=2, gap=1)
        >>> m.shape, int(np.isnan(m).sum())
        ((5, 5), 13)
    """
    n, h, w = tiles.shape
    ncols = max(1, min(int(ncols), n))
    nrows = math.ceil(n / ncols)
    out = np.full((nrows * (band + h + gap) - gap, ncols * (w + gap) - gap), np.nan, dtype=np.float32)
    for i, tile in enumerate(tiles):
        out[tile_at(i, (h, w), ncols, gap, band)] = tile
    return out


def tile_at(i: int, shape: tuple[int, int], ncols: int, gap: int = GAP, band: int = 0) -> tuple[slice, slice]:
    """Rows and columns of tile ``i`` (of ``shape``) in a :func:`mosaic`."""
    (h, w), (r, c) = shape, divmod(i, ncols)
    top, left = r * (band + h + gap) + band, c * (w + gap)
    return slice(top, top + h), slice(left, left + w)


def _unit(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    return images / 255.0 if images.dtype == np.uint8 else images


def _show(ax: Any, image: np.ndarray, cmap: str | Colormap, vmin: float, vmax: float, aspect: str = "equal") -> None:
    cmap = matplotlib.colormaps[cmap] if isinstance(cmap, str) else cmap
    ax.imshow(image, cmap=cmap.with_extremes(bad="white"), vmin=vmin, vmax=vmax, interpolation="nearest",
              aspect=aspect)
    ax.set_axis_off()


def _figure(title: str, width: float, heights: Sequence[float], right: float = 0.05) -> tuple[Figure, list[Any]]:
    """A figure ``width`` inches wide with one axes per row of ``heights`` inches (top to bottom), ``title`` above
    them, room for row labels left of them and ``right`` inches to their right."""
    total = sum(heights) + TITLE_IN + 0.05
    fig = Figure(figsize=(width, total), dpi=DPI)
    fig.suptitle(title, fontsize=9, y=1 - 0.08 / total, va="top")
    axes, top = [], total - TITLE_IN
    for h in heights:
        top -= h
        axes.append(fig.add_axes((LEFT_IN / width, top / total, (width - LEFT_IN - right) / width, h / total)))
    return fig, axes


def _row_label(ax: Any, text: str, y: float = 0.5) -> None:
    ax.text(-0.004, y, text, transform=ax.transAxes, rotation=90, ha="right", va="center", fontsize=8)


def _at_most(images: np.ndarray, side: int) -> np.ndarray:
    """Images whose longer side is over ``side`` pixels shrunk to it (antialiased, the aspect kept): what a figure
    shows of them anyway, at a fraction of the pixels to colour and resample."""
    h, w = images.shape[-2:]
    if max(h, w) <= side:
        return images
    size = (max(1, round(h * side / max(h, w))), max(1, round(w * side / max(h, w))))
    x = torch.as_tensor(np.ascontiguousarray(images), dtype=torch.float32).unsqueeze(1)
    return torch.nn.functional.interpolate(x, size=size, mode="bilinear", antialias=True)[:, 0].numpy()


def image_grid_figure(images: np.ndarray, titles: Sequence[str], title: str, ncols: int = 8) -> Figure:
    """Grey images in rows of ``ncols``, each titled (e.g. with its label) in the band above it; images larger than
    they are shown are shrunk first (their size in pixels belongs in ``title``)."""
    n = len(images)
    ncols = max(1, min(ncols, n))
    width = min(PAGE_WIDTH, ncols * 1.4)
    images = _at_most(_unit(images), int((width - LEFT_IN - 0.05) * DPI / ncols) - GAP)
    h, w = images.shape[1:]
    band = max(1, round(LABEL_BAND * h))
    m = mosaic(images, ncols, GAP, band)
    fig, (ax,) = _figure(title, width, [(width - LEFT_IN - 0.05) * m.shape[0] / m.shape[1]])
    _show(ax, m, "gray", 0.0, 1.0)
    for i, text in enumerate(titles):
        rows, cols = tile_at(i, (h, w), ncols, GAP, band)
        ax.text((cols.start + cols.stop - 1) / 2, rows.start - 1, text, ha="center", va="bottom", fontsize=7)
    return fig


def hog_figure(faces: np.ndarray, cfg: dict[str, Any], title: str = "") -> Figure:
    """Each face over its HOG (:func:`~fer_lightning.features.hog.hog_glyphs`, scikit-image's ``hog(visualize=True)``):
    per cell, one line per orientation bin, as bright as that bin's gradient-magnitude sum (each face's glyphs
    scaled to their 99.5th percentile). ``cfg``: the HOG settings (``orientations``, ``pixels_per_cell``)."""
    faces = np.asarray(faces)
    n, ppc = len(faces), int(cfg["pixels_per_cell"])
    glyphs = hog_glyphs(torch.as_tensor(faces).unsqueeze(1), int(cfg["orientations"]), ppc)
    top = np.maximum(np.percentile(glyphs.reshape(n, -1), 99.5, axis=1), 1e-12)
    m = mosaic(np.concatenate([_unit(faces), np.clip(glyphs / top[:, None, None], 0, 1)]), n)
    col = min(1.8, (PAGE_WIDTH - LEFT_IN) / n)
    title = title or f"HOG: {cfg['orientations']} orientations, {ppc}x{ppc}-pixel cells, {faces.shape[-1]} px"
    fig, (ax,) = _figure(title, col * n + LEFT_IN + 0.05, [col * n * m.shape[0] / m.shape[1]])
    _show(ax, m, "gray", 0.0, 1.0)
    _row_label(ax, "face", 0.75)
    _row_label(ax, "HOG", 0.25)
    return fig


def lbp_figure(faces: np.ndarray, cfg: dict[str, Any], title: str = "") -> Figure:
    """Three rows: the faces; their uniform LBP code maps (codes ``0..P``: the number of brighter-or-equal
    neighbours of a uniform pattern; ``P + 1``: non-uniform) with the histogram cells drawn; and their per-cell
    code histograms (rows: cells in row-major order, columns: codes) as the descriptor holds them. Computed with the
    project's LBP. ``cfg``: ``P``, ``R``, ``grid``."""
    faces = np.asarray(faces)
    P, R, grid = int(cfg["P"]), float(cfg["R"]), tuple(int(g) for g in cfg["grid"])
    n, n_codes = len(faces), P + 2
    codes = lbp_codes(torch.as_tensor(faces).unsqueeze(1), P, R)
    hists = lbp_histograms(codes, n_codes, grid).view(n, grid[0] * grid[1], n_codes).numpy()
    codes = codes[:, 0].numpy().astype(np.float32)
    h, w = codes.shape[-2:]
    col = min(1.8, (PAGE_WIDTH - LEFT_IN - 0.9) / n)
    width = col * n + LEFT_IN + 0.9
    title = title or f"Uniform LBP (P={P}, R={R:g}), {w} px"
    fig, axes = _figure(title, width, [col * h / w, col * h / w, col * 0.9], right=0.9)
    _show(axes[0], mosaic(_unit(faces), n), "gray", 0.0, 1.0)
    cmap = matplotlib.colormaps["tab10" if n_codes <= 10 else "viridis"].resampled(n_codes)
    _show(axes[1], mosaic(codes, n), cmap, -0.5, n_codes - 0.5)
    lines = []  # the histogram cells' edges inside each face
    for i in range(n):
        rows, cols = tile_at(i, (h, w), n)
        lines += [[(cols.start - 0.5, rows.start + e - 0.5), (cols.stop - 0.5, rows.start + e - 0.5)]
                  for e in grid_edges(h, grid[0])[1:-1]]
        lines += [[(cols.start + e - 0.5, rows.start - 0.5), (cols.start + e - 0.5, rows.stop - 0.5)]
                  for e in grid_edges(w, grid[1])[1:-1]]
    axes[1].add_collection(LineCollection(lines, colors="white", linewidths=0.5))
    top = float(hists.max())
    wide = hists[:, :, np.arange(w) * n_codes // w]  # each code's column widened: the faces' columns above
    _show(axes[2], mosaic(wide, n), "magma", 0.0, top, aspect="auto")
    for ax, text in zip(axes, ("face", f"codes, {grid[0]}x{grid[1]} cells", "cells x codes"), strict=True):
        _row_label(ax, text)
    bar_left = (width - 0.82) / width
    for ax, mappable, label in ((axes[1], ScalarMappable(Normalize(-0.5, n_codes - 0.5), cmap), "uniform LBP code"),
                                (axes[2], ScalarMappable(Normalize(0.0, top), "magma"), "fraction of the cell")):
        box = ax.get_position()
        cb = fig.colorbar(mappable, cax=fig.add_axes((bar_left, box.y0, 0.08 / width, box.height)))
        cb.ax.tick_params(labelsize=6)
        cb.set_label(label, fontsize=7)
        if label.startswith("uniform"):
            cb.set_ticks(range(n_codes), labels=[str(c) for c in range(P + 1)] + ["non-unif."])
    return fig
