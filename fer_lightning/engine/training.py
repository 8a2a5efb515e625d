"""Train, validate and test one model on one split: :func:`train` (the command is ``fer_lightning.train``).

The run folder (:mod:`fer_lightning.runs.folder`) gets config.yaml, run_info.json and splits.csv before training
starts, checkpoints/ and tensorboard/ while it trains, metrics.json and predictions.csv when it is tested.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint

from fer_lightning.engine.build import build, build_data, build_trainer
from fer_lightning.engine.checks import check_config as check_options
from fer_lightning.engine.loggers import finish, flat_params, log_run
from fer_lightning.engine.outputs import metrics_of_test, write_test_outputs
from fer_lightning.engine.progress import StopRecord
from fer_lightning.engine.resume import check_same_split, record_resume, resume_hint
from fer_lightning.errors import FERError
from fer_lightning.io.lock import one_at_a_time
from fer_lightning.models.init_from import read_source, start_from
from fer_lightning.runs.checkpoints import checkpoint_file, read_checkpoint
from fer_lightning.runs.folder import RunFolder, resume_checkpoint
from fer_lightning.runs.guard import check_output_dir
from fer_lightning.runtime.listing import list_into
from fer_lightning.runtime.optional import check_config
from fer_lightning.runtime.ranks import is_global_zero

log = logging.getLogger("fer_lightning.training")


def write_run_description(cfg: DictConfig, dm: Any, run: RunFolder, started_from: dict[str, Any] | None = None
                          ) -> None:
    """Resolved config, versions, dataset fingerprint and the split assignment, before training starts; resuming in
    the run's own folder, the resume is recorded instead."""
    if cfg.get("ckpt_path") and run.holds(cfg.ckpt_path):
        before = run.read_config()
        record_resume(run, cfg.ckpt_path, flat_params(before) if before is not None else {}, flat_params(cfg))
        return
    run.write_config(OmegaConf.to_yaml(cfg, resolve=True))
    run.write_run_info({
        "command": " ".join(sys.argv),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "dataset": dm.dataset_name,
        "dataset_root": str(dm.source.root) if dm.source.root is not None else None,
        # where the files of splits.csv and predictions.csv lie (None: rows of a CSV file)
        "image_root": None if dm.image_root() is None else str(dm.image_root()),
        "dataset_fingerprint": dm.fingerprint,
        "n_images": len(dm.decoded.labels),
        **({"init_from": started_from} if started_from else {}),
    })
    run.write_splits(dm.split_rows())


def best_checkpoint(trainer: pl.Trainer) -> str | None:
    """The best checkpoint of the first checkpoint callback that monitors a metric (else of the first one:
    ``last.ckpt``, the final weights)."""
    callbacks = [cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint)]
    for cb in sorted(callbacks, key=lambda cb: cb.monitor is None):
        if cb.best_model_path and Path(cb.best_model_path).is_file():
            return cb.best_model_path
    return None


def prepare_data(cfg: DictConfig) -> Any:
    """The data module, its store built and its split drawn (processes sharing the cache take turns)."""
    dm = build_data(cfg)
    with one_at_a_time(dm.store_settings.cache_dir):  # processes sharing the cache: one builds, the others read
        dm.prepare_data()
        dm.setup()
    if len(dm.split.val) == 0:
        raise FERError(
            f"data.val_size={cfg.data.get('val_size')} leaves no validation images, but early stopping and the "
            "choice of the best checkpoint monitor val/loss; give data.val_size of at least 1 (the paper: 23)"
        )
    return dm


def stop_summary(trainer: pl.Trainer) -> dict[str, Any]:
    """Why fitting stopped and how many training images it saw (``metrics.json`` fields), said in the log."""
    record = next((cb for cb in trainer.callbacks if isinstance(cb, StopRecord)), None)
    if record is None:
        return {}
    summary = record.summary(trainer)
    if trainer.is_global_zero:
        log.info("%s", StopRecord.sentence(summary))
    return summary


def fit(cfg: DictConfig, trainer: pl.Trainer, model: Any, dm: Any, run: RunFolder) -> str:
    """Fit (or, for a model with nothing to train, validate and save) and return the checkpoint that is tested; the
    model holds its weights and its validation results afterwards."""
    if model.needs.trains:
        trainer.fit(model, datamodule=dm, ckpt_path=cfg.get("ckpt_path"), weights_only=True)
        if trainer.interrupted:
            stop_summary(trainer)
            raise FERError(resume_hint(run.path))
        best = best_checkpoint(trainer)
        if best:  # read once; validated and tested in memory
            model.load_state_dict(read_checkpoint(best, option="best checkpoint")["state_dict"])
        trainer.validate(model, datamodule=dm, verbose=False)
        return best
    # nothing to fit (late fusion): validation fixes what it needs, and the result is saved as it is
    trainer.validate(model, datamodule=dm, verbose=False)
    best = str(run.checkpoint_dir / f"{model.model_name}.ckpt")
    trainer.save_checkpoint(best)
    return best


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit on train, pick the best checkpoint on ``val/loss``, test it, and write the run outputs.

    Returns the metrics written to ``metrics.json``. With several processes (``trainer=ddp``) every process runs
    this; caches are built by one and read by the others, and only rank 0 writes the run's files.
    """
    run = RunFolder(cfg.paths.output_dir)
    if cfg.get("ckpt_path"):  # a run folder: its last.ckpt
        cfg.ckpt_path = str(resume_checkpoint(cfg.ckpt_path))
    check_output_dir(run.path, cfg.get("ckpt_path"))
    check_options(cfg)  # every option's name, type and range, before anything is built
    check_config(cfg)  # a logger or callback whose extra is not installed stops the run here, not mid-way
    run.path.mkdir(parents=True, exist_ok=True)
    list_into(run.warnings_file if is_global_zero() else None)  # the full lists of shortened warnings
    pl.seed_everything(cfg.seed, workers=True)

    # model.init_from: read (and refused) before the data is prepared; applied only when training starts
    source = read_source(cfg.model.init_from) if cfg.model.get("init_from") and not cfg.get("ckpt_path") else None
    dm = prepare_data(cfg)
    model = build(cfg.model, class_names=list(dm.class_names))
    if cfg.get("ckpt_path"):  # read once, by Lightning in fit (safely: CheckedCheckpointIO); the model checks it
        checkpoint_file(cfg.ckpt_path, option="ckpt_path")
        check_same_split(cfg.ckpt_path, dm.split_rows())
        if cfg.model.get("init_from"):
            log.info("model.init_from is not applied on a resume: ckpt_path=%s holds the weights", cfg.ckpt_path)
    elif source is not None:
        start_from(model, source)
    trainer = build_trainer(cfg, model, dm)
    if is_global_zero():
        write_run_description(cfg, dm, run, model.started_from)

    start = time.perf_counter()
    best = fit(cfg, trainer, model, dm, run)
    fit_seconds = time.perf_counter() - start
    trainer.test(model, datamodule=dm, verbose=False)

    metrics = metrics_of_test(model, dm, cfg.seed)
    metrics.update({f"val/{k}": v for k, v in model.results["val"].items()})
    metrics.update(
        {
            "n_train": len(dm.split.train),
            "n_val": len(dm.split.val),
            "epochs": int(trainer.current_epoch),
            "variant": cfg.get("variant") or model.model_name,
            "recipe": (cfg.get("recipe") or {}).get("name"),
            "best_checkpoint": best,
            "fit_seconds": round(fit_seconds, 2),
            **(stop_summary(trainer) if model.needs.trains else {"stop_reason": "nothing to train"}),
        }
    )
    if model.started_from:  # model.init_from (restored from the checkpoint on a resume)
        metrics["init_from"] = model.started_from["checkpoint"]
    if is_global_zero():
        write_test_outputs(run, model, dm, metrics)

    scalars = {k: v for k, v in metrics.items() if k.startswith("test/") and isinstance(v, float)}
    log_run(trainer.loggers, flat_params(cfg), scalars)
    finish(trainer.loggers)
    log.info(
        "%s on %s (%s split%s): test acc %.4f, macro F1 %.4f on %d images; outputs in %s",
        model.model_name, dm.dataset_name, dm.split_settings.name,
        f", fold {dm.split_settings.fold}" if dm.split_settings.subject_independent else "",
        metrics["test/acc"], metrics["test/f1_macro"], metrics["n_test"], run.path,
    )
    log.info("best checkpoint: %s", best)
    return metrics
