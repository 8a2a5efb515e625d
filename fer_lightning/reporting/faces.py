"""Labelled figures of faces: image grids, HOG and LBP visualisations, misclassified images, Grad-CAM overlays.

Every builder returns a :class:`matplotlib.figure.Figure` made without pyplot (no global figure state, no backend
switch), sized for a printed page (at most 7.5 inches wide, text of 7 points or more at 150 dpi). Images are
``(N, H, W)`` grey arrays, uint8 or float in ``[0, 1]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib
import numpy as np
import torch
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from fer_lightning.features.lbp import grid_edges, lbp_codes, lbp_histograms

PAGE_WIDTH = 7.5  # inches
DPI = 150
TRUE_COLOUR, PRED_COLOUR, OTHER_COLOUR = "#2ca02c", "#d62728", "#9e9e9e"


def _grey(ax: Any, image: np.ndarray) -> None:
    image = np.asarray(image)
    top = 255 if image.dtype == np.uint8 else 1.0
    ax.imshow(image, cmap="gray", vmin=0, vmax=top, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def short_names(class_names: Sequence[str]) -> list[str]:
    """Three-letter class labels for tight axes (the full names when three letters are ambiguous)."""
    short = [c[:3] for c in class_names]
    return short if len(set(short)) == len(short) else list(class_names)


def image_grid_figure(images: np.ndarray, titles: Sequence[str], title: str, ncols: int = 8) -> Figure:
    """A grid of grey images, each titled (e.g. with its label)."""
    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = max(1, math.ceil(n / ncols))
    side = PAGE_WIDTH / ncols
    fig = Figure(figsize=(PAGE_WIDTH, side * nrows + 0.45), dpi=DPI, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i < n:
            _grey(ax, images[i])
            ax.set_title(titles[i], fontsize=7, pad=2)
        else:
            ax.axis("off")
    fig.suptitle(title, fontsize=9)
    return fig


def hog_figure(faces: np.ndarray, cfg: dict[str, Any], title: str = "") -> Figure:
    """Each face and its HOG: per cell, one line per orientation bin, as bright as that bin's gradient-magnitude
    sum (scikit-image's ``hog(visualize=True)``, the reference the project's HOG equals). ``cfg``: the HOG
    settings (``orientations``, ``pixels_per_cell``, ``cells_per_block``, ``block_norm``)."""
    from skimage.feature import hog

    n = len(faces)
    col = min(1.8, PAGE_WIDTH / n)
    fig = Figure(figsize=(col * n, 2 * col + 0.5), dpi=DPI, layout="constrained")
    axes = fig.subplots(2, n, squeeze=False)
    ppc, cpb = int(cfg["pixels_per_cell"]), int(cfg["cells_per_block"])
    for i, face in enumerate(faces):
        _, glyphs = hog(np.asarray(face), orientations=int(cfg["orientations"]), pixels_per_cell=(ppc, ppc),
                        cells_per_block=(cpb, cpb), block_norm=cfg["block_norm"], visualize=True)
        _grey(axes[0, i], face)
        axes[1, i].imshow(glyphs, cmap="gray", vmin=0, vmax=max(float(np.percentile(glyphs, 99.5)), 1e-12))
        axes[1, i].set_xticks([])
        axes[1, i].set_yticks([])
    axes[0, 0].set_ylabel("face", fontsize=8)
    axes[1, 0].set_ylabel("HOG", fontsize=8)
    fig.suptitle(title or f"HOG: {cfg['orientations']} orientations, {ppc}x{ppc}-pixel cells, "
                 f"{faces.shape[-1]} px", fontsize=9)
    return fig


def lbp_figure(faces: np.ndarray, cfg: dict[str, Any], title: str = "") -> Figure:
    """Each face, its uniform LBP code map (codes ``0..P``: the number of brighter-or-equal neighbours of a
    uniform pattern; ``P + 1``: non-uniform) with the histogram cells drawn, and its per-cell code histograms
    (rows: cells in row-major order, columns: codes), as the descriptor holds them. Computed with the project's
    LBP. ``cfg``: ``P``, ``R``, ``grid``."""
    P, R, grid = int(cfg["P"]), float(cfg["R"]), tuple(int(g) for g in cfg["grid"])
    n_codes = P + 2
    x = torch.as_tensor(np.asarray(faces)).unsqueeze(1)
    codes = lbp_codes(x, P, R)
    hists = lbp_histograms(codes, n_codes, grid).view(len(faces), grid[0] * grid[1], n_codes).numpy()
    codes = codes[:, 0].numpy()
    h, w = codes.shape[-2:]
    n = len(faces)
    col = min(1.8, PAGE_WIDTH / (n + 0.3))
    fig = Figure(figsize=(col * n + 0.9, 3 * col + 0.6), dpi=DPI, layout="constrained")
    axes = fig.subplots(3, n, squeeze=False)
    cmap = matplotlib.colormaps["tab10" if n_codes <= 10 else "viridis"].resampled(n_codes)
    for i in range(n):
        _grey(axes[0, i], faces[i])
        im = axes[1, i].imshow(codes[i], cmap=cmap, vmin=-0.5, vmax=n_codes - 0.5, interpolation="nearest")
        for e in grid_edges(h, grid[0])[1:-1]:
            axes[1, i].axhline(e - 0.5, color="white", lw=0.5)
        for e in grid_edges(w, grid[1])[1:-1]:
            axes[1, i].axvline(e - 0.5, color="white", lw=0.5)
        axes[1, i].set_xticks([])
        axes[1, i].set_yticks([])
        hm = axes[2, i].imshow(hists[i], cmap="magma", aspect="auto", vmin=0, vmax=float(hists.max()),
                               interpolation="nearest")
        axes[2, i].set_xticks(range(0, n_codes, max(1, n_codes // 5)))
        axes[2, i].tick_params(labelsize=7)
        axes[2, i].set_xlabel("code", fontsize=7)
        if i:
            axes[2, i].set_yticks([])
    axes[0, 0].set_ylabel("face", fontsize=8)
    axes[1, 0].set_ylabel(f"codes, {grid[0]}x{grid[1]} cells", fontsize=8)
    axes[2, 0].set_ylabel("cell", fontsize=8)
    cb = fig.colorbar(im, ax=axes[1, :].tolist(), ticks=range(n_codes), fraction=0.05, pad=0.02)
    cb.ax.set_yticklabels([str(c) for c in range(P + 1)] + ["non-unif."], fontsize=6)
    cb.set_label("uniform LBP code", fontsize=7)
    cb2 = fig.colorbar(hm, ax=axes[2, :].tolist(), fraction=0.05, pad=0.02)
    cb2.ax.tick_params(labelsize=6)
    cb2.set_label("fraction of the cell", fontsize=7)
    fig.suptitle(title or f"Uniform LBP (P={P}, R={R:g}), {w} px", fontsize=9)
    return fig


@dataclass
class Labelled:
    """One test image with what the model said about it."""

    image: np.ndarray  # (H, W) grey
    true: str
    predicted: str
    probs: Sequence[float]  # per class, in the figure's class order


def misclassified_figure(items: Sequence[Labelled], class_names: Sequence[str], title: str,
                         ncols: int = 4) -> Figure:
    """Misclassified images in a grid: each titled with its true and predicted labels and the predicted
    probability, over a bar chart of all class probabilities (true class green, predicted red)."""
    n = len(items)
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    tile = PAGE_WIDTH / ncols
    fig = Figure(figsize=(PAGE_WIDTH, nrows * tile * 1.55 + 0.6), dpi=DPI, layout="constrained")
    outer = fig.add_gridspec(nrows, ncols)
    short = short_names(class_names)
    for i in range(nrows * ncols):
        inner = outer[i // ncols, i % ncols].subgridspec(2, 1, height_ratios=[3, 1.3], hspace=0.05)
        ax_img, ax_bar = fig.add_subplot(inner[0]), fig.add_subplot(inner[1])
        if i >= n:
            ax_img.axis("off")
            ax_bar.axis("off")
            continue
        it = items[i]
        k_true, k_pred = class_names.index(it.true), class_names.index(it.predicted)
        _grey(ax_img, it.image)
        ax_img.set_title(f"true: {it.true}\npred: {it.predicted} ({it.probs[k_pred]:.2f})", fontsize=7.5, pad=2)
        colours = [TRUE_COLOUR if k == k_true else PRED_COLOUR if k == k_pred else OTHER_COLOUR
                   for k in range(len(class_names))]
        ax_bar.bar(range(len(class_names)), it.probs, color=colours, width=0.8)
        ax_bar.set_ylim(0, 1)
        ax_bar.set_yticks([0, 0.5, 1])
        ax_bar.set_xticks(range(len(class_names)), labels=short, fontsize=6, rotation=90 if len(short) > 8 else 0)
        ax_bar.tick_params(axis="y", labelsize=6, length=2)
        ax_bar.tick_params(axis="x", length=0, pad=1)
    fig.legend(handles=[Patch(color=TRUE_COLOUR, label="true class"), Patch(color=PRED_COLOUR, label="predicted"),
                        Patch(color=OTHER_COLOUR, label="other classes")],
               loc="outside lower center", ncols=3, fontsize=7, frameon=False)
    fig.suptitle(title, fontsize=9)
    return fig


def grad_cam_figure(columns: dict[str, Sequence[tuple[Labelled, np.ndarray]]], class_names: Sequence[str],
                    title: str) -> Figure:
    """Grad-CAM heatmaps over faces: one column per true class (its header), up to the longest column's number
    of rows; each tile titled with the prediction (green when right, red when wrong). ``columns``:
    ``true class -> [(image, map in [0, 1] of the image's size)]``; ``class_names``: the order of ``probs``."""
    names = list(columns)
    ncols, nrows = len(names), max((len(v) for v in columns.values()), default=1)
    side = min(1.4, (PAGE_WIDTH - 0.6) / ncols)
    fig = Figure(figsize=(side * ncols + 0.6, side * 1.2 * nrows + 0.5), dpi=DPI, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for j, name in enumerate(names):
        for i in range(nrows):
            ax = axes[i, j]
            if i >= len(columns[name]):
                ax.axis("off")
                continue
            it, cam = columns[name][i]
            _grey(ax, it.image)
            ax.imshow(cam, cmap="jet", alpha=0.45, vmin=0, vmax=1, interpolation="bilinear")
            right = it.predicted == it.true
            p = it.probs[list(class_names).index(it.predicted)]
            ax.set_title(f"{'' if right else 'pred: '}{it.predicted} {p:.2f}", fontsize=7, pad=2,
                         color=TRUE_COLOUR if right else PRED_COLOUR)
        axes[0, j].annotate(name, (0.5, 1.0), xytext=(0, 12), xycoords="axes fraction", textcoords="offset points",
                            ha="center", va="bottom", fontsize=8, fontweight="bold")
    scale = ScalarMappable(Normalize(0, 1), cmap="jet")  # the colours at full strength, not as blended
    cb = fig.colorbar(scale, ax=axes.ravel().tolist(), fraction=0.03, pad=0.01)
    cb.ax.tick_params(labelsize=6)
    cb.set_label("Grad-CAM, scaled to 1 per image", fontsize=7)
    fig.suptitle(title, fontsize=9)
    return fig
