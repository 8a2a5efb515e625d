"""Finding the runs below some folders: finished runs (their ``metrics.json`` and ``predictions.csv``), failed jobs,
incomplete runs, unreadable results and duplicates (the same checkpoint tested twice)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fer_lightning.errors import FERError
from fer_lightning.runs.folder import ERROR, METRICS, RUN_INFO, RunFolder

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


# what a metrics.json must hold to enter a report
REQUIRED = ("model", "class_names", "confusion_matrix", "test/acc", "test/precision_macro", "test/recall_macro",
            "test/f1_macro", "test/auroc")


@dataclass
class Survey:
    """What lies below the report's folders: finished runs (duplicates removed), failed jobs (``error.txt``),
    incomplete runs (started, no ``metrics.json``: killed or still running), unreadable results, duplicates."""

    runs: list[Run] = field(default_factory=list)
    failed: list[Path] = field(default_factory=list)
    incomplete: list[Path] = field(default_factory=list)
    unreadable: list[tuple[Path, str]] = field(default_factory=list)
    duplicates: list[tuple[Path, Path]] = field(default_factory=list)  # (left out, the run it repeats)


def _read_run(folder: RunFolder) -> Run:
    """The finished run in ``folder``; ValueError saying why it cannot be used."""
    metrics = folder.read_metrics()
    missing = [k for k in REQUIRED if k not in metrics]
    if missing:
        raise ValueError(f"no {', '.join(missing)}")
    return Run(folder.path, metrics, folder.read_predictions())


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
        for mpath in sorted(d.rglob(METRICS)):
            try:
                found.runs.append(_read_run(RunFolder(mpath.parent)))
            except ValueError as e:
                found.unreadable.append((mpath, str(e)))
        found.failed += sorted(p.parent for p in d.rglob(ERROR))
        found.incomplete += sorted(p.parent for p in d.rglob(RUN_INFO)
                                   if not any((p.parent / n).exists() for n in (METRICS, ERROR)))
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

