"""The training command: one model or a pipeline of models (``experiment=paper``).

    python -m fer_lightning.train                     # deep-only MobileNetV2 on the synthetic set
    python -m fer_lightning.train data.root=/data/jaffe data.split=loso data.fold=3
    python -m fer_lightning.train -m data.seed=0,1,2  # a Hydra multirun, one run dir per job
    python -m fer_lightning.train experiment=paper    # deep -> hybrid -> handcrafted + summary

Returns ``optimized_metric`` to Hydra sweepers. Bad input: one line on stderr, exit code 2; in a multirun a
failing job writes ``error.txt`` into its directory and the others go on (:mod:`fer_lightning.engine.jobs`).
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from fer_lightning.engine.configs import config_dir
from fer_lightning.engine.jobs import run_job
from fer_lightning.engine.startup import command, start_command
from fer_lightning.engine.training import train

__all__ = ["main", "train"]


@command
@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point: returns ``cfg.optimized_metric`` for sweepers; one-line errors, exit code 2."""
    start_command(cfg)
    return run_job(cfg)


if __name__ == "__main__":
    main()
