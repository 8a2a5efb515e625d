"""Summarise many runs (a multirun, or several run dirs) into paper-ready tables, tests and figures.

    python -m fer_lightning.report outputs/paper/multiruns/2026-11-24_10-00-00 [more dirs] [report.output=DIR]
        [report.match=data|images]

Reads every ``metrics.json`` (with its ``predictions.csv``) below the given directories and writes into the
first one (or ``report.output``):

* ``report.md``; ``table2.csv``: per model, accuracy, macro precision / recall / F1 and AUROC as mean +/- SD
  over runs with a 95% confidence interval (Student's t) and the number of runs; ``table3.csv``: per-class
  accuracy per model;
* ``paired_tests.csv``: each pair of models compared on the same test images (pooled over runs that share
  dataset, split, fold and seed) with McNemar's exact test;
* figures (PNG, also logged to ``tensorboard/``): per-class accuracy heatmap, one-vs-rest ROC curves per model
  with AUC, a confusion matrix per model (pooled over runs); from the runs' images and checkpoints (left out,
  with a log line, where those are gone): the most confidently misclassified test images per model, and
  Grad-CAM maps of a few test images per class for the models with a CNN (see :mod:`fer_lightning.report_pictures`).

Jobs that failed (``error.txt``) are counted and listed; the report covers the runs that exist.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import logging
import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from hydra.experimental.callback import Callback
from matplotlib.figure import Figure
from omegaconf import DictConfig
from scipy import stats

from fer_lightning.cli import fail, start_command
from fer_lightning.errors import FERError
from fer_lightning.plots import confusion_matrix_figure
from fer_lightning.report_pictures import report_pictures
from fer_lightning.results import write_csv
from fer_lightning.storage import atomic_write_text

log = logging.getLogger(__name__)
METRICS = [("acc", "Accuracy"), ("precision_macro", "Precision"), ("recall_macro", "Recall"),
           ("f1_macro", "F1"), ("auroc", "AUROC")]
ORDER = ("deep", "handcrafted", "hybrid")


# how runs are matched to test sets: by dataset fingerprint (default), or by the names of their test images
MATCHES = ("data", "images")


@dataclass
class Run:
    path: Path
    metrics: dict[str, Any]
    predictions: list[dict[str, str]] = field(default_factory=list)
    match: str = "data"
    _names: str | None = field(default=None, init=False, repr=False)  # digest of the test image names, once

    @property
    def model(self) -> str:
        """What the tables group by: the variant (a pipeline stage's name, e.g. ``hybrid_block``), else the model."""
        return self.metrics.get("variant") or self.metrics["model"]

    @property
    def auxiliary(self) -> bool:
        """A run on an inner fold of a training split (out-of-fold backbones): not a result on the test split."""
        return bool(self.metrics.get("inner_fold"))

    @property
    def key(self) -> tuple:
        """What identifies the test set: runs with the same key saw the same test images, prepared the same way
        (the dataset fingerprint covers the files, image size and face crop)."""
        m = self.metrics
        if self.match == "images" and self.predictions:
            # report.match=images: runs of different versions, whose fingerprints are not comparable
            if self._names is None:
                names = "\n".join(sorted(p["file"] for p in self.predictions)).encode()
                self._names = hashlib.sha256(names).hexdigest()
            return m.get("dataset"), m.get("split"), m.get("fold"), m.get("seed"), self._names
        return m.get("dataset_fingerprint"), m.get("split"), m.get("fold"), m.get("seed")


REQUIRED = ("model", "class_names", "confusion_matrix", *[f"test/{k}" for k, _ in METRICS])


@dataclass
class Survey:
    """What lies below the report's folders: finished runs (duplicates removed), failed jobs (``error.txt``),
    incomplete runs (started, no ``metrics.json``: killed or still running), unreadable results, duplicates."""

    runs: list[Run] = field(default_factory=list)
    failed: list[Path] = field(default_factory=list)
    incomplete: list[Path] = field(default_factory=list)
    unreadable: list[tuple[Path, str]] = field(default_factory=list)
    duplicates: list[tuple[Path, Path]] = field(default_factory=list)  # (left out, the run it repeats)


def _read_run(mpath: Path) -> Run:
    """The run whose ``metrics.json`` is ``mpath``; ValueError saying why it cannot be used."""
    try:
        metrics = json.loads(mpath.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"not valid JSON ({e})") from e
    if not isinstance(metrics, dict):
        raise ValueError("not a JSON object")
    missing = [k for k in REQUIRED if k not in metrics]
    if missing:
        raise ValueError(f"no {', '.join(missing)}")
    pred = mpath.parent / "predictions.csv"
    rows: list[dict[str, str]] = []
    if pred.is_file():
        try:
            with open(pred, newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
        except (ValueError, UnicodeDecodeError, csv.Error) as e:
            raise ValueError(f"{pred.name} is unreadable ({e})") from e
    return Run(mpath.parent, metrics, rows)


def _identity(run: Run) -> tuple | None:
    """The same checkpoint tested on the same data and split is one run, whether by training or by a later
    ``evaluate`` (None: no checkpoint recorded, never a duplicate)."""
    m = run.metrics
    ckpt = m.get("checkpoint") or m.get("best_checkpoint")
    if not ckpt:
        return None
    return str(ckpt), m.get("dataset_fingerprint"), m.get("split"), m.get("fold")


def survey(dirs: list[Path]) -> Survey:
    """Everything below ``dirs`` that a report says something about (see :class:`Survey`)."""
    found = Survey()
    for d in dirs:
        if not d.is_dir():
            raise FERError(f"{d} is not a folder: give a multirun folder or run folders")
        for mpath in sorted(d.rglob("metrics.json")):
            try:
                found.runs.append(_read_run(mpath))
            except ValueError as e:
                found.unreadable.append((mpath, str(e)))
        found.failed += sorted(p.parent for p in d.rglob("error.txt"))
        found.incomplete += sorted(p.parent for p in d.rglob("run_info.json")
                                   if not any((p.parent / n).exists() for n in ("metrics.json", "error.txt")))
    kept: dict[tuple, Run] = {}
    runs: list[Run] = []
    # a training run is kept over the evaluations of its checkpoint that repeat it
    for run in sorted(found.runs, key=lambda r: "best_checkpoint" not in r.metrics):
        key = _identity(run)
        if key is not None and key in kept:
            found.duplicates.append((run.path, kept[key].path))
            continue
        if key is not None:
            kept[key] = run
        runs.append(run)
    found.runs = sorted(runs, key=lambda r: r.path)
    return found


def find_runs(dirs: list[Path]) -> tuple[list[Run], list[Path]]:
    """Every finished run (``metrics.json``, duplicates removed) and every failed job (``error.txt``) below
    ``dirs``."""
    found = survey(dirs)
    _require_runs(found, dirs)
    return found.runs, found.failed


def _require_runs(found: Survey, dirs: list[Path]) -> None:
    if not found.runs:
        raise FERError(f"no results (metrics.json) under {', '.join(map(str, dirs))}: nothing to report")


def mean_ci(values: list[float], level: float = 0.95) -> tuple[float, float, float, float]:
    """Mean, sample SD, and the ``level`` confidence interval of the mean (Student's t; a point for one run)."""
    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return mean, 0.0, mean, mean
    sd = statistics.stdev(values)
    half = stats.t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    return mean, sd, mean - half, mean + half


def mcnemar(a_correct: np.ndarray, b_correct: np.ndarray) -> tuple[int, int, float]:
    """McNemar's exact (binomial) test: (a right & b wrong, a wrong & b right, two-sided p-value)."""
    b = int(np.sum(a_correct & ~b_correct))
    c = int(np.sum(~a_correct & b_correct))
    p = 1.0 if b + c == 0 else float(stats.binomtest(b, b + c, 0.5).pvalue)
    return b, c, p


def _models(runs: list[Run]) -> list[str]:
    present = {r.model for r in runs}
    return [m for m in ORDER if m in present] + sorted(present - set(ORDER) - {BEST_ON_VAL}) + (
        [BEST_ON_VAL] if BEST_ON_VAL in present else [])


def table2(runs: list[Run]) -> list[dict[str, Any]]:
    rows = []
    for model in _models(runs):
        mine = [r for r in runs if r.model == model]
        row: dict[str, Any] = {"model": model, "n_runs": len(mine)}
        for key, _ in METRICS:
            mean, sd, lo, hi = mean_ci([100 * r.metrics[f"test/{key}"] for r in mine])
            lo, hi = max(lo, 0.0), min(hi, 100.0)  # percentages: the interval is clipped to 0..100
            row.update({f"{key}_mean": round(mean, 2), f"{key}_sd": round(sd, 2), f"{key}_ci_low": round(lo, 2),
                        f"{key}_ci_high": round(hi, 2)})
        rows.append(row)
    return rows


def table3(runs: list[Run], classes: list[str]) -> list[dict[str, Any]]:
    rows = []
    for model in _models(runs):
        mine = [r for r in runs if r.model == model]
        row: dict[str, Any] = {"model": model}
        for c in classes:
            values = [100 * r.metrics[f"test/acc_{c}"] for r in mine if f"test/acc_{c}" in r.metrics]
            row[c] = round(statistics.fmean(values), 2) if values else None
        row["average"] = round(statistics.fmean(v for v in (row[c] for c in classes) if v is not None), 2)
        rows.append(row)
    return rows


def _correct_by_image(runs: list[Run], model: str) -> dict[tuple, bool]:
    return {(r.key, p["file"]): p["true"] == p["predicted"] for r in runs if r.model == model for p in r.predictions}


BEST_ON_VAL = "best on val"


def select_on_validation(runs: list[Run]) -> tuple[list[Run], dict[str, int]]:
    """Per test set (runs sharing :attr:`Run.key`), the variant with the highest validation accuracy (ties: the
    lower validation NLL, then the table order), as runs of the variant ``best on val`` carrying that run's test
    results; and how often each variant was chosen. Test results never enter the choice."""
    order = {m: i for i, m in enumerate(_models(runs))}
    groups: dict[tuple, list[Run]] = {}
    for r in runs:
        groups.setdefault(r.key, []).append(r)
    chosen, counts = [], {}
    for group in groups.values():
        if len({r.model for r in group}) < 2 or any("val/acc" not in r.metrics for r in group):
            continue  # nothing to choose from, or runs without validation results
        best = min(group, key=lambda r: (-r.metrics["val/acc"], r.metrics.get("val/nll", float("inf")),
                                         order[r.model]))
        counts[best.model] = counts.get(best.model, 0) + 1
        chosen.append(Run(best.path, {**best.metrics, "variant": BEST_ON_VAL, "selected": best.model},
                          best.predictions, best.match))
    return chosen, counts


def _selection_row(chosen: Run, runs: list[Run]) -> dict[str, Any]:
    m = chosen.metrics
    deep = [r for r in runs if r.key == chosen.key and r.model == "deep"]
    return {"dataset": m.get("dataset"), "split": m.get("split"), "fold": m.get("fold"), "seed": m.get("seed"),
            "selected": m["selected"], "val_acc": round(100 * m.get("val/acc", float("nan")), 2),
            "val_nll": round(m.get("val/nll", float("nan")), 4), "test_acc": round(100 * m["test/acc"], 2),
            "test_acc_deep": round(100 * deep[0].metrics["test/acc"], 2) if deep else None}


def paired_tests(runs: list[Run], reference: str | None = None) -> list[dict[str, Any]]:
    """McNemar's test for each pair of models (or, with ``reference``, each model against it)."""
    rows = []
    models = _models(runs)
    pairs = ([(reference, m) for m in models if m != reference] if reference in models
             else itertools.combinations(models, 2))
    for a, b in pairs:
        ca, cb = _correct_by_image(runs, a), _correct_by_image(runs, b)
        shared = sorted(set(ca) & set(cb), key=str)
        if not shared:
            continue
        ya, yb = np.array([ca[k] for k in shared]), np.array([cb[k] for k in shared])
        only_a, only_b, p = mcnemar(ya, yb)
        rows.append({"model_a": a, "model_b": b, "n_images": len(shared), "acc_a": round(100 * ya.mean(), 2),
                     "acc_b": round(100 * yb.mean(), 2), "a_right_b_wrong": only_a, "a_wrong_b_right": only_b,
                     "mcnemar_p": p})
    return rows


def figures(runs: list[Run], classes: list[str], t3: list[dict[str, Any]]) -> dict[str, Any]:
    from sklearn.metrics import auc, roc_curve

    out = {}
    fig = Figure(figsize=(1.2 + 1.0 * len(classes), 0.9 + 0.6 * len(t3)), dpi=120)
    ax = fig.subplots()
    grid = np.array([[r[c] if r[c] is not None else np.nan for c in classes] for r in t3])
    im = ax.imshow(grid, cmap="Blues", vmin=0, vmax=100)
    ax.set_xticks(range(len(classes)), labels=classes, rotation=30, ha="right")
    ax.set_yticks(range(len(t3)), labels=[r["model"] for r in t3])
    for i, j in itertools.product(range(grid.shape[0]), range(grid.shape[1])):
        ax.text(j, i, f"{grid[i, j]:.1f}", ha="center", va="center", color="white" if grid[i, j] > 60 else "black")
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


def _survey_notes(found: Survey) -> list[str]:
    """report.md lines on what is left out besides failed jobs."""
    lines = []
    if found.incomplete:
        lines += [f"{len(found.incomplete)} run(s) are incomplete (started, no metrics.json: killed or still "
                  "running) and are left out: " + ", ".join(str(p) for p in found.incomplete), ""]
    if found.unreadable:
        lines += [f"{len(found.unreadable)} result file(s) are unreadable and are left out: "
                  + ", ".join(f"{p} ({why})" for p, why in found.unreadable), ""]
    if found.duplicates:
        lines += [f"{len(found.duplicates)} result(s) repeat a run (the same checkpoint on the same data and split) "
                  "and are counted once: " + ", ".join(f"{a} (= {b})" for a, b in found.duplicates), ""]
    return lines


def _p(value: float) -> str:
    return f"{value:.2e}" if value < 1e-3 else f"{value:.4f}"


def _fmt(row: dict[str, Any], key: str) -> str:
    mean, sd, lo, hi = (row[f"{key}_{part}"] for part in ("mean", "sd", "ci_low", "ci_high"))
    return f"{mean:.2f} ± {sd:.2f} [{lo:.2f}, {hi:.2f}]"


def report(dirs: list[Path], output: Path | None = None, match: str = "data") -> Path:
    """Write the report for the runs under ``dirs`` into ``output`` (default: the first dir); returns it.
    ``match``: runs share a test set when they share dataset fingerprint, split, fold and seed (``data``), or
    dataset name, split, fold, seed and the names of their test images (``images``: for runs made by versions whose
    fingerprints differ; only where the images themselves are known to be the same)."""
    if match not in MATCHES:
        raise FERError(f"report.match={match} is unknown; choose one of: {', '.join(MATCHES)}")
    found = survey(dirs)
    for path, why in found.unreadable:
        print(f"fer-lightning: skipped {path}: {why}", file=sys.stderr)
    _require_runs(found, dirs)
    for r in found.runs:
        r.match = match
    runs, failed = found.runs, found.failed
    auxiliary = [r for r in runs if r.auxiliary]
    runs = [r for r in runs if not r.auxiliary]
    if not runs:
        raise FERError(f"only inner-fold runs under {', '.join(map(str, dirs))}: nothing tested on a test split")
    out = output or dirs[0]
    out.mkdir(parents=True, exist_ok=True)
    classes = runs[0].metrics["class_names"]
    chosen, counts = select_on_validation(runs)
    every = runs + chosen
    models = _models(every)
    reference = "deep" if "deep" in models and len(models) > 4 else None
    t2, t3, pairs = table2(every), table3(every, classes), paired_tests(every, reference)
    write_csv(out / "table2.csv", t2, list(t2[0]))
    write_csv(out / "table3.csv", t3, list(t3[0]))
    if pairs:
        write_csv(out / "paired_tests.csv", pairs, list(pairs[0]))
    if chosen:
        write_csv(out / "selection.csv", [_selection_row(r, runs) for r in chosen],
                  ["dataset", "split", "fold", "seed", "selected", "val_acc", "val_nll", "test_acc", "test_acc_deep"])
    shown = [r for r in t3 if r["model"] != BEST_ON_VAL]
    figs = figures(runs, classes, shown)
    figs.update(report_pictures(runs, [r["model"] for r in shown], classes))
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(out / "tensorboard"))
    for name, fig in figs.items():
        fig.savefig(out / f"{name}.png", bbox_inches="tight")
        writer.add_figure(f"report/{name}", fig, close=False)
    writer.close()

    datasets = sorted({str(r.metrics.get("dataset")) for r in runs})
    splits = sorted({str(r.metrics.get("split")) for r in runs})
    lines = [f"# Report: {len(runs)} runs ({', '.join(datasets)}; split {', '.join(splits)})", ""]
    if failed:
        lines += [f"{len(failed)} job(s) failed and are left out: " + ", ".join(str(p) for p in failed), ""]
    lines += _survey_notes(found)
    if match == "images":
        lines += ["Runs are matched to test sets by dataset name, split, fold, seed and the names of their test images "
                  "(report.match=images), not by the dataset fingerprint.", ""]
    if auxiliary:
        lines += [f"{len(auxiliary)} inner-fold run(s) (out-of-fold backbones) are not test results and are left "
                  "out of the tables.", ""]
    lines += ["## Table 2: test performance (%, mean ± SD over runs [95% CI of the mean, Student's t, clipped "
              "to 0-100])", "",
              "| Model | runs | " + " | ".join(t for _, t in METRICS) + " |", "|" + " --- |" * (len(METRICS) + 2)]
    lines += [f"| {r['model']} | {r['n_runs']} | " + " | ".join(_fmt(r, k) for k, _ in METRICS) + " |" for r in t2]
    lines += ["", "## Table 3: per-class test recall (accuracy within each class, %, mean over runs)", "",
              "| Model | " + " | ".join(classes) + " | average |", "|" + " --- |" * (len(classes) + 2)]
    lines += ["| " + " | ".join([r["model"], *[f"{r[c]:.2f}" if r[c] is not None else "" for c in classes],
                                 f"{r['average']:.2f}"]) + " |" for r in t3]
    if pairs:
        lines += ["", "## Paired comparisons on the same test images (McNemar's exact test, pooled over runs)", "",
                  "| A | B | images | acc A | acc B | A right, B wrong | A wrong, B right | p |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {p['model_a']} | {p['model_b']} | {p['n_images']} | {p['acc_a']:.2f} | {p['acc_b']:.2f} | "
                  f"{p['a_right_b_wrong']} | {p['a_wrong_b_right']} | {_p(p['mcnemar_p'])} |" for p in pairs]
    if chosen:
        picks = ", ".join(f"{m} {n}x" for m, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
        lines += ["", f"## Selection on validation ({BEST_ON_VAL})", "",
                  f"On each of the {len(chosen)} test sets, the variant with the highest validation accuracy (ties: "
                  "lower validation NLL) was chosen and its test result is the `best on val` row: the selection "
                  f"never sees a test image, so that row is an honest estimate of choosing this way. Chosen: {picks} "
                  "(per test set in selection.csv)."]
    lines += ["", "## Figures", ""] + [f"![{n}]({n}.png)" for n in figs]
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
    return out


class ReportWhenSweepEnds(Callback):
    """Hydra callback: write the report of a multirun into its sweep folder when the last job has ended
    (``hydra.callbacks.report._target_=fer_lightning.report.ReportWhenSweepEnds``)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = Path(config.hydra.sweep.dir)
        try:
            log.info("report written to %s", report([sweep]) / "report.md")
        except FERError as e:
            log.error("no report for %s: %s", sweep, e)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if {"-h", "--help"} & set(args):
        print(__doc__)
        return
    options = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in args if a.startswith("report.") and "=" in a}
    dirs = [Path(a) for a in args if not (a.startswith("report.") and "=" in a)]
    unknown = set(options) - {"report.output", "report.match"}
    start_command()
    try:
        if unknown:
            raise FERError(f"unknown option(s) {', '.join(sorted(unknown))}; the options are report.output=DIR and "
                           f"report.match={'|'.join(MATCHES)}")
        if not dirs:
            raise FERError("give a multirun folder or run folders: python -m fer_lightning.report DIR [DIR ...]")
        out = report(dirs, Path(options["report.output"]) if "report.output" in options else None,
                     options.get("report.match", "data"))
    except FERError as e:
        fail(e)
    print(f"report written to {out / 'report.md'}")


if __name__ == "__main__":
    main()
