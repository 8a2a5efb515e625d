"""THE run folder: the one place that knows a run's file names, and how each file is read and written.

A training run's folder holds::

    config.yaml        the resolved configuration (written before training starts)
    run_info.json      command, start time, dataset, fingerprint, image folder, versions (and every resume)
    splits.csv         file, subject, label, split (train / val / test / unused) of every image
    checkpoints/       the best checkpoint (epoch_NNN.ckpt) and last.ckpt (the resume point); fitted-<digest>.pt,
                       the fitted z-score/PCA layers that every checkpoint of the run names (written once)
    tensorboard/       TensorBoard events
    metrics.json       test (and validation) metrics: the run is finished when it is there
    predictions.csv    file, subject, true, predicted, p_<class>... of every test image
    error.txt          a failed job of a sweep: why
    warnings.txt       the full lists that log lines cut short (every duplicate image, every small image, ...)

A pipeline's folder (``experiment=paper``) holds a folder per stage and ``summary.md`` / ``.csv`` / ``.json``. Every
file is written atomically (:mod:`fer_lightning.io.atomic`): whole or not at all, and a full disk ends with one line.
"""

from __future__ import annotations

import csv
import json
import platform
import sys
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from fer_lightning.errors import FERError
from fer_lightning.io.atomic import atomic_write_text, write_csv, write_json

CONFIG, RUN_INFO, SPLITS = "config.yaml", "run_info.json", "splits.csv"
METRICS, PREDICTIONS, ERROR = "metrics.json", "predictions.csv", "error.txt"
WARNINGS = "warnings.txt"
SUMMARY_MD, SUMMARY_CSV, SUMMARY_JSON = "summary.md", "summary.csv", "summary.json"
CHECKPOINTS, LAST, TENSORBOARD = "checkpoints", "last.ckpt", "tensorboard"
FITTED = "fitted-{digest}.pt"  # beside the checkpoints: their fitted layers, content-addressed (runs.checkpoints)
# a run (metrics.json) or a pipeline (summary.json) that finished: never written into again
FINISHED = (METRICS, SUMMARY_JSON)
SPLIT_FIELDS = ["file", "subject", "label", "split"]

PACKAGES = (
    "fer-lightning", "torch", "torchvision", "pytorch-lightning", "torchmetrics", "kornia",
    "scikit-image", "scikit-learn", "hydra-core", "numpy", "tensorboard",
)


def versions() -> dict[str, str]:
    """Python, platform and the versions of the packages that decide a run's numbers."""
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    out["cuda"] = torch.version.cuda or "none"
    return out


def prediction_fields(class_names: Sequence[str]) -> list[str]:
    return ["file", "subject", "true", "predicted", *[f"p_{c}" for c in class_names]]


def prediction_rows(
    outputs: Mapping[str, torch.Tensor], files: Sequence[str], subjects: Sequence[str], class_names: Sequence[str]
) -> list[dict[str, Any]]:
    """Rows ``file, subject, true, predicted, p_<class>...`` ordered by dataset index (``outputs``: ``index``,
    ``probs``, ``target`` of the tested images; ``files``, ``subjects``: of every image of the dataset)."""
    order = torch.argsort(outputs["index"])
    rows = []
    for k in order.tolist():
        i = int(outputs["index"][k])
        probs = outputs["probs"][k]
        row = {
            "file": files[i],
            "subject": subjects[i],
            "true": class_names[int(outputs["target"][k])],
            "predicted": class_names[int(probs.argmax())],
        }
        row.update({f"p_{c}": f"{float(p):.6f}" for c, p in zip(class_names, probs, strict=True)})
        rows.append(row)
    return rows


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


class RunFolder:
    """A run's folder (which need not exist yet): its files by name, read and written here only."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @classmethod
    def of_checkpoint(cls, ckpt_path: str | Path) -> RunFolder:
        """The folder of the run that wrote ``<run>/checkpoints/<name>.ckpt``."""
        return cls(Path(ckpt_path).expanduser().resolve().parent.parent)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # ------------------------------------------------------------------ what is there
    @property
    def checkpoint_dir(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def last_checkpoint(self) -> Path:
        return self.path / CHECKPOINTS / LAST

    @property
    def warnings_file(self) -> Path:
        """Where the full lists of the log's shortened warnings go (:mod:`fer_lightning.runtime.listing`)."""
        return self.path / WARNINGS

    @staticmethod
    def fitted_file(checkpoint_dir: str | Path, digest: str) -> Path:
        """The file beside the checkpoints in ``checkpoint_dir`` that holds the fitted layers with this digest."""
        return Path(checkpoint_dir) / FITTED.format(digest=digest)

    def checkpoints(self) -> list[Path]:
        return sorted(self.checkpoint_dir.glob("*.ckpt"))

    def best_checkpoint(self) -> Path | None:
        """The checkpoint this run tested (``best_checkpoint`` of ``metrics.json``, looked up in this folder's
        ``checkpoints/``, so a moved or copied run folder still works); for a run that has not finished, its
        newest ``epoch_*.ckpt``, else ``last.ckpt``; None without checkpoints."""
        metrics = _read_json(self.path / METRICS) or {}
        named = metrics.get("best_checkpoint")
        if isinstance(named, str) and (self.checkpoint_dir / Path(named).name).is_file():
            return self.checkpoint_dir / Path(named).name
        best = [p for p in self.checkpoints() if p.name != LAST]
        if best:
            return max(best, key=lambda p: (p.stat().st_mtime, p.name))
        return self.last_checkpoint if self.last_checkpoint.is_file() else None

    def holds(self, ckpt_path: str | Path) -> bool:
        """Whether ``ckpt_path`` is one of this run's checkpoints (a resume in place)."""
        return Path(ckpt_path).expanduser().resolve().parent == self.checkpoint_dir.resolve()

    def finished(self) -> str | None:
        """The file that says this run (or pipeline) finished, or None."""
        return next((name for name in FINISHED if (self.path / name).is_file()), None)

    # ------------------------------------------------------------------ writing
    def write_config(self, yaml_text: str) -> None:
        atomic_write_text(self.path / CONFIG, yaml_text)

    def write_run_info(self, info: dict[str, Any]) -> None:
        write_json(self.path / RUN_INFO, {**info, "versions": versions()})

    def record_resume(self, resume: dict[str, Any]) -> None:
        """Append a resume (command, time, checkpoint, changed settings) to ``run_info.json``."""
        info = self.read_run_info() or {}
        info.setdefault("resumed", []).append(resume)
        write_json(self.path / RUN_INFO, info)

    def write_splits(self, rows: Sequence[Mapping[str, str]]) -> None:
        write_csv(self.path / SPLITS, rows, SPLIT_FIELDS)

    def write_results(self, metrics: dict[str, Any], predictions: Sequence[Mapping[str, Any]],
                      class_names: Sequence[str]) -> None:
        """``predictions.csv`` then ``metrics.json`` (written last: it marks the run finished)."""
        write_csv(self.path / PREDICTIONS, predictions, prediction_fields(class_names))
        write_json(self.path / METRICS, metrics)

    def write_error(self, text: str) -> None:
        atomic_write_text(self.path / ERROR, text)

    def write_summary(self, rows: Sequence[Mapping[str, Any]], fields: Sequence[str], record: dict[str, Any],
                      markdown: str) -> None:
        """A pipeline's ``summary.csv``, ``summary.md`` and ``summary.json`` (last: it marks the pipeline finished)."""
        write_csv(self.path / SUMMARY_CSV, [{k: r[k] for k in fields} for r in rows], fields)
        atomic_write_text(self.path / SUMMARY_MD, markdown)
        write_json(self.path / SUMMARY_JSON, record)

    # ------------------------------------------------------------------ reading
    def read_metrics(self) -> dict[str, Any]:
        """``metrics.json`` (ValueError saying why it cannot be used)."""
        try:
            metrics = json.loads((self.path / METRICS).read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"not valid JSON ({e})") from e
        if not isinstance(metrics, dict):
            raise ValueError("not a JSON object")
        return metrics

    def read_predictions(self) -> list[dict[str, str]]:
        """``predictions.csv`` rows (none when the file is not there; ValueError when it is unreadable)."""
        path = self.path / PREDICTIONS
        if not path.is_file():
            return []
        try:
            with open(path, newline="", encoding="utf-8") as f:
                return list(csv.DictReader(f))
        except (ValueError, UnicodeDecodeError, csv.Error) as e:
            raise ValueError(f"{PREDICTIONS} is unreadable ({e})") from e

    def read_run_info(self) -> dict[str, Any] | None:
        """``run_info.json``, or None when it is missing or not readable JSON."""
        return _read_json(self.path / RUN_INFO)

    def read_splits(self, errors: str = "strict") -> dict[str, str]:
        """``splits.csv`` as ``{file: train | val | test | unused}`` (empty when the file is not there)."""
        path = self.path / SPLITS
        if not path.is_file():
            return {}
        with open(path, newline="", encoding="utf-8", errors=errors) as f:
            return {r["file"]: r["split"] for r in csv.DictReader(f) if r.get("file")}

    def read_config(self) -> Any:
        """``config.yaml`` as an OmegaConf node, or None without one (errors of a damaged file propagate)."""
        from omegaconf import OmegaConf

        path = self.path / CONFIG
        return OmegaConf.load(path) if path.is_file() else None


def resolve_checkpoint(path: str | Path, option: str = "ckpt_path") -> Path:
    """``path`` as a checkpoint file: a file as it is; a run folder (or its ``checkpoints/``) as the checkpoint the
    run tested (:meth:`RunFolder.best_checkpoint`). A pipeline's folder, or a folder without checkpoints, is a
    :class:`~fer_lightning.errors.FERError` naming what to give instead.

    Examples:
        >>> import tempfile
        >>> run = RunFolder(tempfile.mkdtemp())
        >>> run.checkpoint_dir.mkdir(); (run.checkpoint_dir / "epoch_004.ckpt").write_bytes(b"")
        0
        >>> resolve_checkpoint(run.path).name
        'epoch_004.ckpt'
    """
    given = Path(path).expanduser()
    if not given.is_dir():
        return given  # a file (or nothing there: the reader says so)
    run = RunFolder(given.parent if given.name == CHECKPOINTS and not (given / CHECKPOINTS).is_dir() else given)
    best = run.best_checkpoint()
    if best is not None:
        return best
    stages = sorted(p.name for p in run.path.iterdir() if p.is_dir() and RunFolder(p).checkpoints())
    if stages:
        raise FERError(f"{option}={path} is a pipeline's folder; give one of its stage folders: "
                       + ", ".join(str(run.path / s) for s in stages[:6]))
    raise FERError(f"{option}={path}: a folder without checkpoints (a run folder holds {CHECKPOINTS}/*.ckpt); "
                   "give a run folder or a .ckpt file")


def resume_checkpoint(path: str | Path, option: str = "ckpt_path") -> Path:
    """``ckpt_path`` of a training run (a resume): a file as it is; a run folder (or its ``checkpoints/``) as its
    ``last.ckpt``, the point an interrupted run goes on from (:class:`~fer_lightning.errors.FERError` without one)."""
    given = Path(path).expanduser()
    if not given.is_dir():
        return given
    run = RunFolder(given.parent if given.name == CHECKPOINTS and not (given / CHECKPOINTS).is_dir() else given)
    if not run.last_checkpoint.is_file():
        raise FERError(f"{option}={path}: a folder without {CHECKPOINTS}/{LAST} to resume from; give a run folder "
                       "that holds one, or a .ckpt file")
    return run.last_checkpoint
