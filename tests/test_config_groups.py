"""The Lightning + Hydra config groups: callbacks/ (composable), logger/ (extras named when missing), debug/."""

from __future__ import annotations

import csv
import sys

import pytest
from hydra.utils import instantiate
from pytorch_lightning import callbacks as plc

from fer_lightning.engine.callbacks import BestCheckpoint, ConfusionFigures, LastCheckpoint, TrainingPictures
from fer_lightning.engine.progress import ModelTable
from fer_lightning.engine.resume import ExactResume
from fer_lightning.engine.training import train
from fer_lightning.errors import FERError
from fer_lightning.runtime.optional import check_config

LIMITS = ["+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1", "+trainer.limit_test_batches=1"]


def test_callbacks_compose_from_a_list(make_cfg):
    cfg = make_cfg("callbacks=[default,lr_monitor,model_summary,rich_progress_bar]")
    built = {k: instantiate(v) for k, v in cfg.callbacks.items()}
    assert {k: type(v) for k, v in built.items()} == {
        "model_checkpoint": BestCheckpoint, "last_checkpoint": LastCheckpoint,
        "early_stopping": plc.EarlyStopping, "exact_resume": ExactResume, "training_pictures": TrainingPictures,
        "confusion_figures": ConfusionFigures,
        "lr_monitor": plc.LearningRateMonitor, "model_summary": ModelTable,
        "rich_progress_bar": plc.RichProgressBar,
    }
    # the keys other configs and users set stay where they were
    assert built["early_stopping"].patience == 10 and built["model_checkpoint"].monitor == "val/loss"
    assert make_cfg("callbacks.early_stopping.patience=3").callbacks.early_stopping.patience == 3
    assert make_cfg("callbacks.confusion_figures.every_n_epochs=1").callbacks.confusion_figures.every_n_epochs == 1
    assert not make_cfg("callbacks=none").get("callbacks")


def test_loggers_and_debug_options_compose(make_cfg):
    cfg = make_cfg("logger=many_loggers")
    assert [v._target_.rsplit(".", 1)[-1] for v in cfg.logger.values()] == [
        "TensorBoardLogger", "CSVLogger", "WandbLogger", "MLFlowLogger"]
    assert cfg.logger.mlflow.tracking_uri == "sqlite:///outputs/mlflow.db"
    fdr = make_cfg("debug=fdr")
    assert fdr.trainer.fast_dev_run is True and fdr.task_name == "debug"
    t = make_cfg("debug=limit").trainer
    assert (t.limit_train_batches, t.limit_val_batches, t.limit_test_batches) == (3, 2, 2)


@pytest.mark.parametrize(
    ("override", "module", "extra", "key"),
    [
        ("logger=wandb", "wandb", "wandb", "logger.wandb"),
        ("logger=many_loggers", "mlflow", "mlflow", "logger.mlflow"),
        ("callbacks=[default,rich_progress_bar]", "rich", "rich", "callbacks.rich_progress_bar"),
    ],
)
def test_a_missing_extra_stops_the_run_before_it_starts(make_cfg, tmp_path, monkeypatch, override, module, extra,
                                                        key):
    monkeypatch.setitem(sys.modules, module, None)  # as if the package were not installed
    with pytest.raises(FERError) as e:
        train(make_cfg(override, out=tmp_path / "run"))
    message = str(e.value)
    assert f"{key} (" in message and f"needs the '{extra}' extra" in message
    assert f"pip install 'fer-lightning[{extra}]'" in message and "\n" not in message
    assert not (tmp_path / "run").exists()  # nothing was written


def test_installed_extras_pass_the_check(make_cfg):
    check_config(make_cfg("logger=many_loggers", "callbacks=[default,rich_progress_bar]"))


@pytest.mark.slow
def test_debug_profiler_writes_its_report_into_the_run_dir(make_cfg, tmp_path):
    m = train(make_cfg("model=handcrafted", "debug=profiler", "trainer.max_epochs=1", *LIMITS))
    report = (tmp_path / "run" / "fit-profiler.txt").read_text()
    assert "run_training_epoch" in report and "Action" in report
    assert (tmp_path / "run" / "test-profiler.txt").is_file() and m["n_test"] == 16


@pytest.mark.slow
def test_debug_overfit_repeats_the_same_batches(make_cfg, tmp_path):
    m = train(make_cfg("model=handcrafted", "debug=overfit", "trainer.max_epochs=2", "+trainer.limit_val_batches=1",
                       "logger=csv"))
    with open(tmp_path / "run" / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    train_steps = sorted(int(r["step"]) for r in rows if r.get("train/loss"))
    assert m["epochs"] == 2 and train_steps == [2, 5]  # 3 batches per epoch (not 9), logged at each epoch's end
    assert not (tmp_path / "run" / "checkpoints").exists()
