"""The evaluate command: re-evaluate a checkpoint, writing the same metrics.json and predictions.csv as training.

    python -m fer_lightning.evaluate ckpt_path=<run>/checkpoints/<best>.ckpt
    python -m fer_lightning.evaluate ckpt_path=... data=folder data.root=/data/kdef

How the data, the preprocessing and the test images are chosen (and kept honest):
:mod:`fer_lightning.engine.evaluation`.
"""

from __future__ import annotations

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from fer_lightning.engine.configs import config_dir
from fer_lightning.engine.evaluation import evaluate
from fer_lightning.engine.startup import checkpoint_option, command, fail, start_command
from fer_lightning.errors import FERError
from fer_lightning.runs.folder import RunFolder
from fer_lightning.runtime.listing import list_into

__all__ = ["evaluate", "main"]


@command
@hydra.main(version_base="1.3", config_path=config_dir(), config_name="eval")
def main(cfg: DictConfig) -> float | None:
    start_command(cfg)
    try:
        checkpoint_option(cfg)
        list_into(RunFolder(HydraConfig.get().runtime.output_dir).warnings_file)  # the full lists of warnings
        metrics = evaluate(cfg, list(HydraConfig.get().overrides.task))
    except FERError as e:
        fail(e)
    return float(metrics["test/acc"])


if __name__ == "__main__":
    main()
