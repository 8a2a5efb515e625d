"""The training command: one model (``fer_lightning.training``) or a pipeline of models (``experiment=paper``).

    python -m fer_lightning.train                     # deep-only MobileNetV2 on the synthetic set
    python -m fer_lightning.train data.root=/data/jaffe data.split=loso data.fold=3
    python -m fer_lightning.train -m data.seed=0,1,2  # a Hydra multirun, one run dir per job
    python -m fer_lightning.train experiment=paper    # deep -> hybrid -> handcrafted + summary

Returns ``optimized_metric`` to Hydra sweepers. Bad input: one line on stderr, exit code 2; in a multirun a
failing job writes ``error.txt`` into its directory and the others go on.
"""

from __future__ import annotations

import logging
import traceback
from pathlib import Path

import hydra
from omegaconf import DictConfig

from fer_lightning.cli import check_objective, fail, is_multirun, start_command
from fer_lightning.config import config_dir
from fer_lightning.distributed import job_processes
from fer_lightning.errors import FERError
from fer_lightning.pipeline import run_pipeline
from fer_lightning.training import train

log = logging.getLogger("fer_lightning.train")


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point: returns ``cfg.optimized_metric`` for sweepers; one-line errors, exit code 2."""
    start_command(cfg)
    try:
        check_objective(cfg.get("optimized_metric"))
    except FERError as e:
        fail(e)
    try:
        with job_processes():  # DDP processes this job starts end with it
            metrics = run_pipeline(cfg) if cfg.get("pipeline") else train(cfg)
    except FERError as e:
        if is_multirun():  # record the failure and let the other jobs of the sweep go on
            Path(cfg.paths.output_dir, "error.txt").write_text(f"{e}\n")
            log.error("job failed: %s", e)
            return None
        fail(e)
    except Exception:
        if not is_multirun():
            raise
        Path(cfg.paths.output_dir, "error.txt").write_text(traceback.format_exc())
        log.exception("job failed")
        return None
    name = cfg.get("optimized_metric")
    if not name:
        return None
    if name not in metrics:
        options = ", ".join(k for k in metrics if k.startswith(("val/", "test/")))
        fail(f"optimized_metric={name} is not a metric; choose one of: {options}")
    return float(metrics[name])


if __name__ == "__main__":
    main()
