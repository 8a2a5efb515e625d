"""Re-evaluate a checkpoint: the same metrics.json and predictions.csv as training writes.

    python -m fer_lightning.evaluate ckpt_path=outputs/train/runs/<run>/checkpoints/epoch_033.ckpt
    python -m fer_lightning.evaluate ckpt_path=... data.root=/data/jaffe data.split=loso data.fold=2

By default the data settings are those of the run that wrote the checkpoint (its ``config.yaml`` beside
``checkpoints/``), so the run's own test split is evaluated again; ``data.*`` overrides change them, and a
``data=<option>`` override starts from that option instead. The handcrafted features are the checkpoint's.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from fer_lightning.checkpoints import FORMAT_KEY, read_checkpoint
from fer_lightning.cli import fail, start_command
from fer_lightning.config import config_dir
from fer_lightning.errors import FERError
from fer_lightning.models import load_model
from fer_lightning.results import metrics_of_test, write_csv, write_test_outputs
from fer_lightning.training import build

log = logging.getLogger("fer_lightning.evaluate")


def data_config(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """The run's data settings with the user's ``data.*`` overrides on top (or the composed ``cfg.data`` when
    the run config is absent, not wanted, or another data option was chosen)."""
    run_config = Path(cfg.ckpt_path).expanduser().resolve().parent.parent / "config.yaml"
    if not cfg.use_run_config or not run_config.is_file() or any(o.startswith("data=") for o in overrides):
        return cfg.data
    data = OmegaConf.load(run_config).data
    data.features = None
    data.cache_dir = cfg.data.cache_dir  # this machine's cache, not the one the run used
    mine = [o for o in overrides if o.startswith("data.")]
    if mine:
        data = OmegaConf.merge(data, OmegaConf.from_dotlist([o[len("data."):] for o in mine]))
    return data


def evaluate(cfg: DictConfig, overrides: list[str] | None = None) -> dict[str, Any]:
    """Test the checkpoint ``cfg.ckpt_path`` and write ``metrics.json`` / ``predictions.csv`` into
    ``cfg.paths.output_dir``; returns the metrics."""
    if not cfg.ckpt_path:
        raise FERError("give ckpt_path=<a fer-lightning checkpoint>")
    out = Path(cfg.paths.output_dir)
    if (out / "metrics.json").exists():
        raise FERError(f"{out} already holds results; give hydra.run.dir a new folder instead of overwriting it")
    ckpt = read_checkpoint(cfg.ckpt_path)  # the one read of the file
    record = ckpt[FORMAT_KEY]
    pl.seed_everything(int(cfg.seed), workers=True)
    model = load_model(ckpt)
    data = data_config(cfg, overrides or [])
    features = None
    if getattr(model, "uses_features", False) and model.extractor.source == "precomputed":
        features = model.extractor  # exactly the checkpoint's descriptor settings
    dm = build(data, features=features)
    dm.prepare_data()
    dm.setup()
    if list(dm.class_names) != list(record["class_names"]):
        raise FERError(
            f"the data's classes {list(dm.class_names)} are not the checkpoint's {record['class_names']}; "
            "evaluate on data with the same classes"
        )
    trainer = pl.Trainer(accelerator=cfg.trainer.accelerator, devices=cfg.trainer.devices, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         deterministic=cfg.trainer.deterministic, default_root_dir=str(out))
    trainer.test(model, datamodule=dm, verbose=False)
    metrics = metrics_of_test(model, dm, dm.seed)
    metrics["checkpoint"] = str(Path(cfg.ckpt_path).expanduser().resolve())
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(OmegaConf.to_yaml(data, resolve=True))
    write_csv(out / "splits.csv", dm.split_rows(), ["file", "subject", "label", "split"])
    write_test_outputs(out, model, dm, metrics)
    log.info("%s checkpoint on %s (%s split): test acc %.4f on %d images; outputs in %s", model.model_name,
             dm.dataset_name, dm.split_name, metrics["test/acc"], metrics["n_test"], out)
    return metrics


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="eval")
def main(cfg: DictConfig) -> float | None:
    start_command(cfg)
    try:
        metrics = evaluate(cfg, list(HydraConfig.get().overrides.task))
    except FERError as e:
        fail(e)
    return float(metrics["test/acc"])


if __name__ == "__main__":
    main()
