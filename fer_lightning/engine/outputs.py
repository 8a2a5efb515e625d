"""What a test leaves: the ``metrics.json`` fields of a tested model and its ``predictions.csv`` rows, written into
the run folder (:class:`~fer_lightning.runs.folder.RunFolder`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fer_lightning.runs.folder import RunFolder, prediction_rows


def metrics_of_test(model: Any, dm: Any, seed: int, class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """The ``metrics.json`` fields every test of a model on a data module has: ``test/*`` scalars, the
    confusion matrix, and what was tested (classes, data, split, fold, seed, model). ``class_names``: those scored
    (default: the data's; the shared classes of a cross-dataset test)."""
    metrics: dict[str, Any] = {f"test/{k}": v for k, v in model.results["test"].items()}
    split = dm.split_settings
    metrics.update(
        {
            "confusion_matrix": model.confusion["test"].tolist(),
            "class_names": list(dm.class_names if class_names is None else class_names),
            "n_test": len(model.outputs["test"]["index"]),
            "dataset": dm.dataset_name,
            "dataset_fingerprint": dm.decoded.fingerprint,
            "split": split.name,
            "fold": split.fold if split.subject_independent else None,
            "inner_fold": f"{split.inner_fold}/{split.inner_folds}" if split.inner_folds else None,
            "seed": int(seed),
            "model": model.model_name,
        }
    )
    metrics.update(getattr(model, "fit_record", dict)())  # a late fusion's fitted weights
    return metrics


def write_test_outputs(run: RunFolder, model: Any, dm: Any, metrics: dict[str, Any]) -> None:
    """``predictions.csv`` (one row per test image, a column per class of ``metrics["class_names"]``) and
    ``metrics.json`` in the run folder."""
    classes = metrics["class_names"]
    rows = prediction_rows(model.outputs["test"], dm.file_names(), dm.decoded.subjects, classes)
    run.write_results(metrics, rows, classes)
