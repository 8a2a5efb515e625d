"""Figures: labelled matplotlib figures for TensorBoard and reports.

Figures are built with :class:`matplotlib.figure.Figure` directly: no pyplot state, no backend switch, so
importing this module (or making a figure) leaves the user's matplotlib as it was. ``Figure.savefig`` renders
with the Agg canvas by itself, and TensorBoard's ``add_figure`` accepts such a figure.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure


def _fractions(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    cm = np.asarray(cm, dtype=float)
    rows = cm.sum(axis=1, keepdims=True)
    return cm, np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)


def confusion_matrix_figure(cm: np.ndarray, class_names: Sequence[str], title: str = "Confusion matrix") -> Figure:
    """Row-normalised confusion matrix (rows = true class) with the counts written in each cell."""
    cm, frac = _fractions(cm)
    n = len(class_names)
    fig = Figure(figsize=(1.0 + 0.75 * n, 0.8 + 0.7 * n), dpi=100)
    ax = fig.subplots()
    im = ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(n), labels=class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), labels=class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center",
                    color="white" if frac[i, j] > 0.5 else "black", fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    fig.tight_layout()
    return fig


def redraw_confusion_matrix_figure(fig: Figure, cm: np.ndarray, title: str) -> Figure:
    """``fig``, made by :func:`confusion_matrix_figure` for the same classes, showing ``cm`` and ``title`` instead:
    the picture a new figure would give, without building one and its layout again (most of a figure's time)."""
    cm, frac = _fractions(cm)
    ax = fig.axes[0]
    ax.images[0].set_data(frac)
    ax.set_title(title)
    for text, count, share in zip(ax.texts, cm.ravel(), frac.ravel(), strict=True):
        text.set_text(f"{int(count)}")
        text.set_color("white" if share > 0.5 else "black")
    return fig


def report_figures(runs: list[Any], classes: list[str], t3: list[dict[str, Any]]) -> dict[str, Any]:
    from sklearn.metrics import auc, roc_curve

    out = {}
    fig = Figure(figsize=(1.2 + 1.0 * len(classes), 0.9 + 0.6 * len(t3)), dpi=120)
    ax = fig.subplots()
    grid = np.array([[r[c] if r[c] is not None else np.nan for c in classes] for r in t3])
    im = ax.imshow(grid, cmap="Blues", vmin=0, vmax=100)
    ax.set_xticks(range(len(classes)), labels=classes, rotation=30, ha="right")
    ax.set_yticks(range(len(t3)), labels=[r["model"] for r in t3])
    for i, j in itertools.product(range(grid.shape[0]), range(grid.shape[1])):
        cell = "n/a" if np.isnan(grid[i, j]) else f"{grid[i, j]:.1f}"  # a class with no test image
        ax.text(j, i, cell, ha="center", va="center", color="white" if grid[i, j] > 60 else "black")
    ax.set_title("Per-class test accuracy (%), mean over runs")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    out["per_class_accuracy_heatmap"] = fig

    ncols = min(4, len(t3))
    nrows = math.ceil(len(t3) / ncols)
    fig = Figure(figsize=(4.2 * ncols, 4.0 * nrows), dpi=120)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.flat[len(t3):]:
        ax.set_visible(False)
    for ax, model in zip(axes.flat, [r["model"] for r in t3], strict=False):
        preds = [p for r in runs if r.model == model for p in r.predictions]
        if preds:
            y = np.array([classes.index(p["true"]) for p in preds])
            scores = np.array([[float(p[f"p_{c}"]) for c in classes] for p in preds])
            for k, c in enumerate(classes):
                if 0 < (y == k).sum() < len(y):
                    fpr, tpr, _ = roc_curve(y == k, scores[:, k])
                    ax.plot(fpr, tpr, label=f"{c} (AUC {auc(fpr, tpr):.3f})")
        ax.plot([0, 1], [0, 1], "k--", lw=0.8)
        ax.set(title=f"{model}: one-vs-rest ROC", xlabel="false positive rate", ylabel="true positive rate")
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    out["roc_curves"] = fig

    for model in [r["model"] for r in t3]:
        mats = [np.array(r.metrics["confusion_matrix"]) for r in runs if r.model == model]
        out[f"confusion_{model}"] = confusion_matrix_figure(sum(mats), classes,
                                                            f"{model}: confusion matrix ({len(mats)} runs pooled)")
    return out

