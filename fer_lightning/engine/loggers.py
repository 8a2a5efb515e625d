"""What a run tells its loggers beyond Lightning's own logging, for every kind of logger in ``conf/logger``.

Lightning logs the metrics while training and testing; at the end of a run the resolved configuration goes
to each logger (TensorBoard shows it beside the final test metrics in its HPARAMS tab), and runs that would
stay open in the process (W&B) are finished, so the next job of a Hydra multirun gets a run of its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pytorch_lightning.loggers import Logger, TensorBoardLogger, WandbLogger


def log_run(loggers: Iterable[Logger], params: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
    """The run's flat configuration to every logger (with ``metrics`` where the logger pairs them), then save."""
    for lg in loggers:
        if isinstance(lg, TensorBoardLogger):
            lg.log_hyperparams(dict(params), metrics=dict(metrics))
        else:
            lg.log_hyperparams(dict(params))
        lg.save()


def finish(loggers: Iterable[Logger]) -> None:
    """Close every logger's run (W&B keeps one run per process open until it is finished)."""
    for lg in loggers:
        lg.finalize("success")
        if isinstance(lg, WandbLogger):
            lg.experiment.finish()


def flat_params(cfg: Any) -> dict[str, Any]:
    """The resolved config as flat ``a/b/c: value`` pairs for TensorBoard's HPARAMS tab (paths and Hydra left out)."""
    from omegaconf import OmegaConf

    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if not str(k).startswith("_"):
                    walk(v, f"{prefix}/{k}" if prefix else str(k))
        else:
            flat[prefix] = node if isinstance(node, int | float | str | bool) else str(node)

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return {k: v for k, v in flat.items() if not k.startswith(("paths/", "hydra/"))}
