"""Train, validate and test one model on one split: :func:`train` (the command is ``fer_lightning.train``).

Each run dir holds config.yaml (resolved), run_info.json, splits.csv, checkpoints/, tensorboard/,
metrics.json and predictions.csv.
"""

from __future__ import annotations

import csv
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint

from fer_lightning.checkpoints import CheckedCheckpointIO, checkpoint_file, read_checkpoint
from fer_lightning.checks import check_config as check_options
from fer_lightning.distributed import is_global_zero, one_at_a_time
from fer_lightning.errors import FERError
from fer_lightning.extras import check_config
from fer_lightning.loggers import finish, log_run
from fer_lightning.results import metrics_of_test, versions, write_csv, write_json, write_test_outputs
from fer_lightning.resume import resume_hint
from fer_lightning.run_dirs import check_output_dir
from fer_lightning.storage import escape_surrogates

log = logging.getLogger("fer_lightning.training")


def _resumed_in_place(cfg: DictConfig, out: Path) -> bool:
    ckpt = cfg.get("ckpt_path")
    return bool(ckpt) and Path(ckpt).expanduser().resolve().parent == (out / "checkpoints").resolve()


def _check_same_split(cfg: DictConfig, dm: Any) -> None:
    """A resumed checkpoint must go on with the split it was trained on (else it has seen test images)."""
    run_splits = Path(cfg.ckpt_path).expanduser().resolve().parent.parent / "splits.csv"
    if not run_splits.is_file():
        return
    with open(run_splits, newline="", encoding="utf-8") as f:
        before = {r["file"]: r["split"] for r in csv.DictReader(f)}
    now = {escape_surrogates(r["file"]): r["split"] for r in dm.split_rows()}
    changed = sorted(f for f in before.keys() | now.keys() if before.get(f) != now.get(f))
    if changed:
        raise FERError(
            f"ckpt_path={cfg.ckpt_path}: its run used another split ({len(changed)} images change part, e.g. "
            f"{changed[0]}; see {run_splits}); resume with the run's own data and split settings"
        )


def _record_resume(cfg: DictConfig, out: Path) -> None:
    """Resuming in the run's own folder: its config.yaml and splits.csv stay; run_info.json records the resume and
    any setting that differs from the run's start."""
    info_path = out / "run_info.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    before = _flat_params(OmegaConf.load(out / "config.yaml")) if (out / "config.yaml").is_file() else {}
    after = _flat_params(cfg)
    changed = {k: after.get(k) for k in sorted(before.keys() | after.keys())
               if k != "ckpt_path" and before.get(k) != after.get(k)}
    if changed:
        log.warning("resuming with settings that differ from the run's start (the result will not repeat an "
                    "uninterrupted run): %s", ", ".join(f"{k}={v}" for k, v in changed.items()))
    info.setdefault("resumed", []).append({
        "command": " ".join(sys.argv),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "ckpt_path": str(cfg.ckpt_path),
        "changed": changed,
    })
    write_json(info_path, info)


def _write_run_description(cfg: DictConfig, dm: Any, out: Path) -> None:
    """Resolved config, versions, dataset fingerprint and the split assignment, before training starts."""
    if _resumed_in_place(cfg, out):
        _record_resume(cfg, out)
        return
    (out / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    write_json(
        out / "run_info.json",
        {
            "command": " ".join(sys.argv),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "dataset": dm.dataset_name,
            "dataset_root": str(dm.root) if dm.root is not None else None,
            # where the files of splits.csv and predictions.csv lie (None: rows of a CSV file)
            "image_root": None if dm.image_root() is None else str(dm.image_root()),
            "dataset_fingerprint": dm.fingerprint,
            "n_images": len(dm.decoded.labels),
            "versions": versions(),
        },
    )
    write_csv(out / "splits.csv", dm.split_rows(), ["file", "subject", "label", "split"])


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


def _readable_name(logger_cfg: Any, model: Any, dm: Any, cfg: DictConfig) -> dict[str, str]:
    """TensorBoard runs named ``<model>/<split>[/fold<k>]/seed<s>`` (what a run is, at a glance)."""
    if not str(logger_cfg.get("_target_", "")).endswith("TensorBoardLogger") or logger_cfg.get("name"):
        return {}
    fold = f"/fold{dm.fold}" if dm.split_name != "paper" else ""
    return {"name": f"{model.model_name}/{dm.split_name}{fold}/seed{cfg.seed}"}


def _best_checkpoint(trainer: pl.Trainer) -> str | None:
    """The best checkpoint of the first checkpoint callback that monitors a metric (else of the first one:
    ``last.ckpt``, the final weights)."""
    callbacks = [cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint)]
    for cb in sorted(callbacks, key=lambda cb: cb.monitor is None):
        if cb.best_model_path and Path(cb.best_model_path).is_file():
            return cb.best_model_path
    return None


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit on train, pick the best checkpoint on ``val/loss``, test it, and write the run outputs.

    Returns the metrics written to ``metrics.json``. With several processes (``trainer=ddp``) every process runs
    this; caches are built by one and read by the others, and only rank 0 writes the run's files.
    """
    out = Path(cfg.paths.output_dir)
    check_output_dir(out, cfg.get("ckpt_path"))
    check_options(cfg)  # every option's name, type and range, before anything is built
    check_config(cfg)  # a logger or callback whose extra is not installed stops the run here, not mid-way
    out.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(cfg.seed, workers=True)

    model_cls = get_class(cfg.model._target_)
    precompute = getattr(model_cls, "uses_features", False) and cfg.features.source == "precomputed"
    dm = build(cfg.data, features=cfg.features if precompute else None)
    with one_at_a_time(dm.cache_dir):  # processes sharing the cache: the first builds it, the others read it
        dm.prepare_data()
        dm.setup()
    if len(dm.split.val) == 0:
        raise FERError(
            f"data.val_size={cfg.data.get('val_size')} leaves no validation images, but early stopping and the "
            "choice of the best checkpoint monitor val/loss; give data.val_size of at least 1 (the paper: 23)"
        )
    model = build(cfg.model, class_names=list(dm.class_names))
    if cfg.get("ckpt_path"):  # read once, by Lightning in fit (safely: CheckedCheckpointIO); the model checks it
        checkpoint_file(cfg.ckpt_path, option="ckpt_path")
        _check_same_split(cfg, dm)
    callbacks = [build(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    loggers = [
        build(c, **_readable_name(c, model, dm, cfg)) for c in (cfg.get("logger") or {}).values() if c is not None
    ]
    trainer: pl.Trainer = build(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    CheckedCheckpointIO.guard(trainer)
    if is_global_zero():
        _write_run_description(cfg, dm, out)

    start = time.perf_counter()
    if getattr(model, "trains", True):
        trainer.fit(model, datamodule=dm, ckpt_path=cfg.get("ckpt_path"), weights_only=True)
        if trainer.interrupted:
            raise FERError(resume_hint(out))
        best = _best_checkpoint(trainer)
        if best:  # read once; validated and tested in memory
            model.load_state_dict(read_checkpoint(best, option="best checkpoint")["state_dict"])
        trainer.validate(model, datamodule=dm, verbose=False)
    else:  # nothing to fit (late fusion): validation fixes what it needs, and the result is saved as it is
        trainer.validate(model, datamodule=dm, verbose=False)
        best = str(out / "checkpoints" / f"{model.model_name}.ckpt")
        trainer.save_checkpoint(best)
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
        }
    )
    if is_global_zero():
        write_test_outputs(out, model, dm, metrics)

    scalars = {k: v for k, v in metrics.items() if k.startswith("test/") and isinstance(v, float)}
    log_run(trainer.loggers, _flat_params(cfg), scalars)
    finish(trainer.loggers)
    log.info(
        "%s on %s (%s split%s): test acc %.4f, macro F1 %.4f on %d images; outputs in %s",
        model.model_name, dm.dataset_name, dm.split_name,
        f", fold {dm.fold}" if dm.split_name != "paper" else "",
        metrics["test/acc"], metrics["test/f1_macro"], metrics["n_test"], out,
    )
    return metrics


def _flat_params(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as flat ``a/b/c: value`` pairs for TensorBoard's HPARAMS tab."""
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
