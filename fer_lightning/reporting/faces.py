"""Labelled figures of faces for the report: misclassified images and Grad-CAM overlays (the training pictures of
many faces are in :mod:`~fer_lightning.reporting.mosaics`).

Every builder returns a :class:`matplotlib.figure.Figure` made without pyplot (no global figure state, no backend
switch), sized for a printed page (at most 7.5 inches wide, text of 7 points or more at 150 dpi). Images are
``(N, H, W)`` grey arrays, uint8 or float in ``[0, 1]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Patch

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
