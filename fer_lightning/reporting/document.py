"""The report of many runs (``fer-report``): tables, paired tests and figures written into a folder as ``report.md``,
CSV files, PNG figures and a TensorBoard event file; and the Hydra callback that writes it when a sweep ends."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from fer_lightning.errors import FERError
from fer_lightning.io.atomic import atomic_write_text, write_csv
from fer_lightning.reporting.crossdata import CELL_FIELDS, cross_matrix, is_cross, matrix_figure, matrix_markdown
from fer_lightning.reporting.figures import report_figures
from fer_lightning.reporting.run_pictures import report_pictures
from fer_lightning.reporting.tables import (
    BEST_ON_VAL,
    METRICS,
    _fmt,
    _models,
    _p,
    _pct,
    _selection_row,
    fusion_weights,
    paired_tests,
    select_on_validation,
    table2,
    table3,
)
from fer_lightning.runs.survey import MATCHES, Run, Survey, _require_runs, survey
from fer_lightning.runtime.registry import choose

log = logging.getLogger("fer_lightning.report")


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


def split_fingerprints(runs: list[Run]) -> list[str]:
    """One line per test set (dataset name, split, fold, seed) whose runs carry different dataset fingerprints: the
    files were copied, touched or relabelled between the runs (the fingerprint covers names, sizes, modification
    times and labels), so ``report.match=data`` neither pairs them nor selects among them on validation."""
    seen: dict[tuple, set] = {}
    for r in runs:
        m = r.metrics
        seen.setdefault((m.get("dataset"), m.get("split"), m.get("fold"), m.get("seed")), set()).add(
            m.get("dataset_fingerprint"))
    split = {k: v for k, v in seen.items() if len(v) > 1}
    if not split:
        return []
    names = sorted({str(k[0]) for k in split})
    return [f"runs of {', '.join(names)} on {len(split)} test set(s) carry different dataset fingerprints (the "
            "files were copied, touched or relabelled between runs), so they are not compared with each other; "
            "if the images are the same, run the report again with report.match=images"]


def report(dirs: list[Path], output: Path | None = None, match: str = "data") -> Path:
    """Write the report for the runs under ``dirs`` into ``output`` (default: the first dir); returns it.
    ``match``: runs share a test set when they share dataset fingerprint, split, fold and seed (``data``), or
    dataset name, split, fold, seed and the names of their test images (``images``: for runs made by versions whose
    fingerprints differ; only where the images themselves are known to be the same)."""
    choose(match, MATCHES, "report.match")
    found = survey(dirs)
    for path, why in found.unreadable:
        print(f"fer-lightning: skipped {path}: {why}", file=sys.stderr)
    _require_runs(found, dirs)
    for r in found.runs:
        r.match = match
    unpaired = split_fingerprints([r for r in found.runs if not r.auxiliary]) if match == "data" else []
    for line in unpaired:
        print(f"fer-lightning: warning: {line}", file=sys.stderr)
    runs, failed = found.runs, found.failed
    auxiliary = [r for r in runs if r.auxiliary]
    runs = [r for r in runs if not r.auxiliary]
    if not runs:
        raise FERError(f"only inner-fold runs under {', '.join(map(str, dirs))}: nothing tested on a test split")
    cells = cross_matrix(runs) if any(is_cross(r) for r in runs) else []
    n_cross = sum(is_cross(r) for r in runs)
    runs = [r for r in runs if not is_cross(r)] or runs  # the tables: tests on each run's own data
    out = output or dirs[0]
    out.mkdir(parents=True, exist_ok=True)
    if cells:
        write_csv(out / "cross_matrix.csv", cells, CELL_FIELDS)
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
    figs = report_figures(runs, classes, shown)
    figs.update(report_pictures(runs, [r["model"] for r in shown], classes))
    figs.update({f"cross_matrix_{m}": matrix_figure(cells, m) for m in sorted({c["model"] for c in cells})})
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
    lines += [f"Warning: {line}.", ""] if (line := "; ".join(unpaired)) else []
    if cells and len(runs) < len(found.runs) - len(auxiliary):
        lines += [f"{n_cross} cross-dataset result(s) (a checkpoint tested on other data) are in the source x target "
                  "matrix below, not in Tables 2-3.", ""]
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
    lines += ["| " + " | ".join([r["model"], *[_pct(r[c]) for c in classes], _pct(r["average"])]) + " |" for r in t3]
    lines += ["", "n/a: no test image of that class in these runs (no recall to report, not 0)."] if any(
        r[c] is None for r in t3 for c in classes) else []
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
    weights = fusion_weights(runs)
    if weights:
        write_csv(out / "fusion_weights.csv", weights, list(weights[0]))
        lines += ["", "## Fusion weights (fitted on validation; docs: \"Fusion weights\")", "",
                  "| Model | dataset | split | fold | seed | weighting | weights | temperatures |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        lines += ["| " + " | ".join(str(w[k] if w[k] is not None else "") for k in w) + " |" for w in weights]
    lines += ["", *matrix_markdown(cells)] if cells else []
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

