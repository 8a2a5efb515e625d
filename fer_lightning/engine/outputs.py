"""What a test leaves: the ``metrics.json`` fields of a tested model and its ``predictions.csv`` rows, written into
the run folder (:class:`~fer_lightning.runs.folder.RunFolder`)."""

from __future__ import annotations

from typing import Any

from fer_lightning.runs.folder import RunFolder, prediction_rows


def metrics_of_test(model: Any, dm: Any, seed: int) -> dict[str, Any]:
    """The ``metrics.json`` fields every test of a model on a data module has: ``test/*`` scalars, the
    confusion matrix, and what was tested (classes, data, split, fold, seed, model)."""
    metrics: dict[str, Any] = {f"test/{k}": v for k, v in model.results["test"].items()}
    split = dm.split_settings
    metrics.update(
        {
            "confusion_matrix": model.confusion["test"].tolist(),
            "class_names": list(dm.class_names),
            "n_test": len(model.outputs["test"]["index"]),
            "dataset": dm.dataset_name,
            "dataset_fingerprint": dm.decoded.fingerprint,
            "split": split.name,
            "fold": split.fold if split.name != "paper" else None,
            "inner_fold": f"{split.inner_fold}/{split.inner_folds}" if split.inner_folds else None,
            "seed": int(seed),
            "model": model.model_name,
        }
    )
    return metrics


def write_test_outputs(run: RunFolder, model: Any, dm: Any, metrics: dict[str, Any]) -> None:
    """``predictions.csv`` (one row per test image) and ``metrics.json`` in the run folder."""
    rows = prediction_rows(model.outputs["test"], dm.file_names(), dm.decoded.subjects, dm.class_names)
    run.write_results(metrics, rows, dm.class_names)
