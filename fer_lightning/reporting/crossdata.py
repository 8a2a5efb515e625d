"""The source x target matrix of cross-dataset results: accuracy of models trained on one dataset (rows) and tested
on another (columns; the diagonal: the source's own test split), with 95% intervals.

A cell of one run gets the Wilson interval of its accuracy over its test images; a cell of several runs (seeds,
folds) the Student's t interval of their mean. Cross-dataset cells score the classes both datasets share
(``cross_dataset`` in ``metrics.json``, written by ``fer-eval`` and ``experiment=cross_dataset``).
"""

from __future__ import annotations

from typing import Any

from matplotlib.figure import Figure

from fer_lightning.reporting.statistics import mean_ci, proportion_ci
from fer_lightning.runs.survey import Run

CELL_FIELDS = ["model", "source", "target", "n_runs", "n_test", "n_classes", "acc", "ci_low", "ci_high"]


def is_cross(run: Run) -> bool:
    """Whether ``run`` tested a checkpoint on other data than its training run's."""
    return isinstance(run.metrics.get("cross_dataset"), dict)


def source_target(run: Run) -> tuple[str, str]:
    """(source, target) dataset names of a run: a training run's test is (dataset, dataset)."""
    m = run.metrics
    if is_cross(run):
        cross = m["cross_dataset"]
        source, target = str(cross.get("source") or "unknown"), str(cross.get("target") or m.get("dataset"))
        return source, target if target != source else f"{target} (other data)"  # e.g. another synthetic set
    return str(m.get("dataset")), str(m.get("dataset"))


def cross_matrix(runs: list[Run]) -> list[dict[str, Any]]:
    """One cell per (model, source, target): accuracy (%) with its 95% interval (see the module docstring).

    Examples:
        >>> from pathlib import Path
        >>> own = Run(Path("a"), {"model": "deep", "dataset": "fer2013", "test/acc": 0.7, "n_test": 100,
        ...                       "class_names": list("abcdefg")})
        >>> other = Run(Path("b"), {"model": "deep", "dataset": "jaffe", "test/acc": 0.5, "n_test": 200,
        ...                         "class_names": list("abc"), "cross_dataset": {"source": "fer2013",
        ...                                                                      "target": "jaffe"}})
        >>> [(c["source"], c["target"], c["acc"], c["ci_low"], c["ci_high"]) for c in cross_matrix([own, other])]
        [('fer2013', 'fer2013', 70.0, 60.42, 78.11), ('fer2013', 'jaffe', 50.0, 43.14, 56.86)]
    """
    groups: dict[tuple[str, str, str], list[Run]] = {}
    for r in runs:
        if r.auxiliary:
            continue
        groups.setdefault((r.model, *source_target(r)), []).append(r)
    cells = []
    for (model, source, target), mine in sorted(groups.items()):
        accs = [100 * float(r.metrics["test/acc"]) for r in mine]
        n_test = [int(r.metrics.get("n_test", 0)) for r in mine]
        if len(mine) == 1:
            lo, hi = (100 * v for v in proportion_ci(round(accs[0] * n_test[0] / 100), n_test[0]))
            acc = accs[0]
        else:
            acc, _, lo, hi = mean_ci(accs)
        cells.append({"model": model, "source": source, "target": target, "n_runs": len(mine), "n_test": sum(n_test),
                      "n_classes": len(mine[0].metrics.get("class_names", [])), "acc": round(acc, 2),
                      "ci_low": round(max(lo, 0.0), 2), "ci_high": round(min(hi, 100.0), 2)})
    return cells


def matrix_markdown(cells: list[dict[str, Any]]) -> list[str]:
    """The matrix as markdown lines: a table per model, sources as rows, targets as columns."""
    lines = ["## Cross-dataset accuracy: source (rows, trained on) x target (columns, tested on)", "",
             "Accuracy (%) [95% interval: Wilson over the test images for one run, Student's t over runs for "
             "several] (test images, classes scored). The diagonal is the source's own test split; off the diagonal "
             "only the classes both datasets share are scored (the model's probabilities restricted to them and "
             "renormalised).", ""]
    for model in sorted({c["model"] for c in cells}):
        mine = {(c["source"], c["target"]): c for c in cells if c["model"] == model}
        sources = sorted({s for s, _ in mine})
        targets = sources + sorted({t for _, t in mine} - set(sources))
        lines += [f"### {model}", "", "| trained on \\ tested on | " + " | ".join(targets) + " |",
                  "|" + " --- |" * (len(targets) + 1)]
        for s in sources:
            row = [_cell(mine.get((s, t))) for t in targets]
            lines.append(f"| {s} | " + " | ".join(row) + " |")
        lines.append("")
    return lines


def _cell(c: dict[str, Any] | None) -> str:
    if c is None:
        return "n/a"
    runs = f", {c['n_runs']} runs" if c["n_runs"] > 1 else ""
    return f"{c['acc']:.2f} [{c['ci_low']:.2f}, {c['ci_high']:.2f}] ({c['n_test']} img, {c['n_classes']} cl{runs})"


def matrix_figure(cells: list[dict[str, Any]], model: str) -> Figure:
    """A heatmap of one model's matrix (accuracy %, n/a where a pair was not run)."""
    mine = {(c["source"], c["target"]): c["acc"] for c in cells if c["model"] == model}
    sources = sorted({s for s, _ in mine})
    targets = sources + sorted({t for _, t in mine} - set(sources))
    fig = Figure(figsize=(2.0 + 1.3 * len(targets), 2.4 + 0.6 * len(sources)), dpi=120)
    ax = fig.subplots()
    grid = [[mine.get((s, t), float("nan")) for t in targets] for s in sources]
    im = ax.imshow(grid, cmap="Blues", vmin=0, vmax=100)
    ax.set_xticks(range(len(targets)), labels=targets, rotation=30, ha="right")
    ax.set_yticks(range(len(sources)), labels=sources)
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            ax.text(j, i, "n/a" if v != v else f"{v:.1f}", ha="center", va="center",
                    color="white" if v > 60 else "black")
    ax.set(xlabel="tested on", ylabel="trained on", title=f"{model}: cross-dataset accuracy (%)")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return fig
