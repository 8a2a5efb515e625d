"""Summarise many runs (a multirun, or several run dirs) into paper-ready tables, tests and figures.

    fer-report DIR [DIR ...] [report.output=DIR] [report.match=data|images]
    python -m fer_lightning.report outputs/paper/multiruns/2026-11-24_10-00-00

A plain command line (not a Hydra app: it composes no config): folders, and two options spelled like overrides.

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
  Grad-CAM maps of a few test images per class for the models with a CNN.

Jobs that failed (``error.txt``) are counted and listed; the report covers the runs that exist.
"""

from __future__ import annotations

import sys
from pathlib import Path

from fer_lightning.engine.startup import fail, start_command
from fer_lightning.errors import FERError
from fer_lightning.reporting.document import ReportWhenSweepEnds, report
from fer_lightning.runs.survey import MATCHES

__all__ = ["ReportWhenSweepEnds", "main", "report"]


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
