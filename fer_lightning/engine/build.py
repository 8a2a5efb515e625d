"""Building a job's parts from its composed config: data module, model, callbacks, loggers and trainer.

Every part is a ``_target_`` node instantiated by Hydra; a user-facing :class:`FERError` raised inside a constructor
comes through as it is (Hydra wraps constructor errors), so it reaches the user as its one line.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig
from pytorch_lightning.callbacks import ModelSummary
from pytorch_lightning.callbacks.progress import ProgressBar

from fer_lightning.data.contract import DataNeeds
from fer_lightning.engine.callbacks import ConfusionFigures
from fer_lightning.engine.progress import EpochLines, ModelTable, StopRecord
from fer_lightning.errors import FERError
from fer_lightning.runs.checkpoints import CheckedCheckpointIO
from fer_lightning.runtime.progress import as_lines


def build(node: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate``, letting a user-facing :class:`FERError` raised inside a constructor through
    (Hydra wraps every constructor error in an ``InstantiationException``)."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        while cause is not None and not isinstance(cause, FERError):
            cause = cause.__cause__
        if cause is not None:
            raise cause from None
        raise


def model_needs(model_cfg: Any) -> DataNeeds:
    """What the configured model's class declares it needs from the data (without building the model)."""
    needs = getattr(get_object(str(model_cfg._target_)), "needs", None)
    if not isinstance(needs, DataNeeds):
        raise FERError(f"model._target_={model_cfg._target_} is not a fer-lightning model: its class declares no "
                       "`needs` (subclass fer_lightning.models.base.FERClassifier)")
    return needs


def build_data(cfg: DictConfig) -> Any:
    """The data module, with the handcrafted blocks precomputed when the model declares it uses them (and
    ``features.source=precomputed``)."""
    precompute = model_needs(cfg.model).handcrafted_blocks and cfg.features.source == "precomputed"
    return build(cfg.data, features=cfg.features if precompute else None)


def readable_name(logger_cfg: Any, model: Any, dm: Any, seed: int) -> dict[str, str]:
    """TensorBoard runs named ``<model>/<split>[/fold<k>]/seed<s>`` (what a run is, at a glance)."""
    if not str(logger_cfg.get("_target_", "")).endswith("TensorBoardLogger") or logger_cfg.get("name"):
        return {}
    split = dm.split_settings
    fold = f"/fold{split.fold}" if split.subject_independent else ""
    return {"name": f"{model.model_name}/{split.name}{fold}/seed{seed}"}


def build_trainer(cfg: DictConfig, model: Any, dm: Any) -> pl.Trainer:
    """The trainer with the configured callbacks and loggers (plus the confusion-matrix figures, the stop record,
    one line per epoch in place of the progress bar when progress goes to a file, and the model summary without
    FLOPs), reading checkpoints only with ``weights_only``
    (:class:`~fer_lightning.runs.checkpoints.CheckedCheckpointIO`)."""
    callbacks = [build(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    loggers = [build(c, **readable_name(c, model, dm, cfg.seed)) for c in (cfg.get("logger") or {}).values()
               if c is not None]
    if "confusion_figures" not in (cfg.get("callbacks") or {}):  # e.g. callbacks=none: drawn every 10 epochs
        callbacks.append(ConfusionFigures())
    callbacks.append(StopRecord())
    if cfg.trainer.get("enable_progress_bar", True) and as_lines() and not any(
            isinstance(c, ProgressBar) for c in callbacks):
        callbacks.append(EpochLines())
    if cfg.trainer.get("enable_model_summary", True) and not any(isinstance(c, ModelSummary) for c in callbacks):
        callbacks.append(ModelTable(max_depth=1))
    trainer: pl.Trainer = build(cfg.trainer, callbacks=callbacks, logger=loggers or False,
                                enable_model_summary=False)  # the summary is a callback of the list, or none
    CheckedCheckpointIO.guard(trainer)
    return trainer
