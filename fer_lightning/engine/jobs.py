"""One job of the training command: a single model (:func:`~fer_lightning.engine.training.train`), a pipeline of
models (:func:`~fer_lightning.engine.pipeline.run_pipeline`) or a cross-dataset job
(:func:`~fer_lightning.engine.cross_dataset.run_cross_dataset`), with what a Hydra job owes its sweep.

In a multirun, a job that fails writes ``error.txt`` into its folder and the other jobs go on; a single run fails
with its one line. The job returns ``optimized_metric`` to Hydra's sweepers.
"""

from __future__ import annotations

import logging
import traceback
from typing import Any

from omegaconf import DictConfig

from fer_lightning.engine.cross_dataset import run_cross_dataset
from fer_lightning.engine.ddp import job_processes
from fer_lightning.engine.pipeline import run_pipeline
from fer_lightning.engine.startup import check_objective, fail, is_multirun
from fer_lightning.engine.training import train
from fer_lightning.errors import FERError
from fer_lightning.runs.folder import RunFolder

log = logging.getLogger("fer_lightning.train")


def objective(cfg: DictConfig, metrics: dict[str, Any]) -> float | None:
    """The value of ``optimized_metric`` (None without one); one line naming the metrics when it is none of them."""
    name = cfg.get("optimized_metric")
    if not name:
        return None
    if name not in metrics:
        options = ", ".join(k for k in metrics if k.startswith(("val/", "test/")))
        raise FERError(f"optimized_metric={name} is not a metric; choose one of: {options}")
    return float(metrics[name])


def run_job(cfg: DictConfig) -> float | None:
    """Train what ``cfg`` says, in this job's folder; returns ``optimized_metric`` for sweepers."""
    try:
        check_objective(cfg.get("optimized_metric"))
    except FERError as e:
        fail(e)
    try:
        with job_processes():  # DDP processes this job starts end with it
            if cfg.get("cross_dataset"):
                metrics = run_cross_dataset(cfg)
            else:
                metrics = run_pipeline(cfg) if cfg.get("pipeline") else train(cfg)
    except FERError as e:
        if is_multirun():  # record the failure and let the other jobs of the sweep go on
            RunFolder(cfg.paths.output_dir).write_error(f"{e}\n")
            log.error("job failed: %s", e)
            return None
        fail(e)
    except Exception:
        if not is_multirun():
            raise
        RunFolder(cfg.paths.output_dir).write_error(traceback.format_exc())
        log.exception("job failed")
        return None
    try:
        return objective(cfg, metrics)
    except FERError as e:
        fail(e)
