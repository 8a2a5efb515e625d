"""Train, validate and test a model.

    python -m fer_lightning.train                     # deep-only MobileNetV2 on the synthetic set
    python -m fer_lightning.train data.root=/data/jaffe data.split=loso data.fold=3
    python -m fer_lightning.train -m data.seed=0,1,2  # a Hydra multirun, one run dir per job

Each run dir holds config.yaml (resolved), run_info.json, splits.csv, checkpoints/, tensorboard/,
metrics.json and predictions.csv.
"""

from __future__ import annotations

import logging
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint

from fer_lightning.checkpoints import check_checkpoint
from fer_lightning.config import config_dir
from fer_lightning.errors import FERError
from fer_lightning.pipeline import run_pipeline
from fer_lightning.results import metrics_of_test, versions, write_csv, write_json, write_test_outputs

log = logging.getLogger("fer_lightning.train")

warnings.filterwarnings("ignore", message=r".*does not have many workers.*")  # data are in-memory tensors
warnings.filterwarnings("ignore", message=r".*No positive samples in targets.*")  # AUROC on tiny batches
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")  # frozen backbone
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")  # Lightning internals


def _write_run_description(cfg: DictConfig, dm: Any, out: Path) -> None:
    """Resolved config, versions, dataset fingerprint and the split assignment, before training starts."""
    (out / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    write_json(
        out / "run_info.json",
        {
            "command": " ".join(sys.argv),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "dataset": dm.dataset_name,
            "dataset_root": str(dm.root) if dm.root is not None else None,
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
    cb = trainer.checkpoint_callback
    if isinstance(cb, ModelCheckpoint) and cb.best_model_path and Path(cb.best_model_path).is_file():
        return cb.best_model_path
    return None


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit on train, pick the best checkpoint on ``val/loss``, test it, and write the run outputs.

    Returns the metrics written to ``metrics.json``.
    """
    out = Path(cfg.paths.output_dir)
    if (out / "metrics.json").exists():
        raise FERError(f"{out} already holds a finished run; give hydra.run.dir a new folder instead of overwriting it")
    out.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(cfg.seed, workers=True)

    model_cls = get_class(cfg.model._target_)
    precompute = getattr(model_cls, "uses_features", False) and cfg.features.source == "precomputed"
    dm = build(cfg.data, features=cfg.features if precompute else None)
    dm.prepare_data()
    dm.setup()
    model = build(cfg.model, class_names=list(dm.class_names))
    if cfg.get("ckpt_path"):
        check_checkpoint(cfg.ckpt_path, model, option="ckpt_path")
    callbacks = [build(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    loggers = [
        build(c, **_readable_name(c, model, dm, cfg)) for c in (cfg.get("logger") or {}).values() if c is not None
    ]
    trainer: pl.Trainer = build(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    _write_run_description(cfg, dm, out)

    start = time.perf_counter()
    trainer.fit(model, datamodule=dm, ckpt_path=cfg.get("ckpt_path"))
    fit_seconds = time.perf_counter() - start
    if trainer.interrupted:
        raise FERError(f"training was interrupted; resume it with ckpt_path={out / 'checkpoints' / 'last.ckpt'}")

    best = _best_checkpoint(trainer)
    trainer.validate(model, datamodule=dm, ckpt_path=best, verbose=False)
    trainer.test(model, datamodule=dm, ckpt_path=best, verbose=False)

    metrics = metrics_of_test(model, dm, cfg.seed)
    metrics.update({f"val/{k}": v for k, v in model.results["val"].items()})
    metrics.update(
        {
            "n_train": len(dm.split.train),
            "n_val": len(dm.split.val),
            "epochs": int(trainer.current_epoch),
            "best_checkpoint": best,
            "fit_seconds": round(fit_seconds, 2),
        }
    )
    write_test_outputs(out, model, dm, metrics)

    scalars = {k: v for k, v in metrics.items() if k.startswith("test/") and isinstance(v, float)}
    for lg in trainer.loggers:
        lg.log_hyperparams(_flat_params(cfg), metrics=scalars)
        lg.save()
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


def _is_multirun() -> bool:
    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:
        return False


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point: returns ``cfg.optimized_metric`` for sweepers; one-line errors, exit code 2."""
    torch.set_float32_matmul_precision("high")
    try:
        metrics = run_pipeline(cfg) if cfg.get("pipeline") else train(cfg)
    except FERError as e:
        if _is_multirun():  # record the failure and let the other jobs of the sweep go on
            Path(cfg.paths.output_dir, "error.txt").write_text(f"{e}\n")
            log.error("job failed: %s", e)
            return None
        print(f"fer-lightning: error: {e}", file=sys.stderr)
        sys.exit(2)
    except Exception:
        if not _is_multirun():
            raise
        Path(cfg.paths.output_dir, "error.txt").write_text(traceback.format_exc())
        log.exception("job failed")
        return None
    name = cfg.get("optimized_metric")
    if not name:
        return None
    if name not in metrics:
        options = ", ".join(k for k in metrics if k.startswith(("val/", "test/")))
        print(f"fer-lightning: error: optimized_metric={name} is not a metric; choose one of: {options}",
              file=sys.stderr)
        sys.exit(2)
    return float(metrics[name])


if __name__ == "__main__":
    main()
