"""Hydra launchers and sweepers of the [cluster] extra: a joblib multirun, the SLURM configs rendered without
SLURM, and an Optuna search that only ever reads validation metrics."""

import json
import os
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate

from fer_lightning.engine.configs import config_dir
from fer_lightning.engine.startup import check_objective
from fer_lightning.errors import FERError

from .conftest import run_cli

SEARCH_SPACE = {"model.optim.lr", "model.head.input_dropout", "model.pca.n_components", "model.optim.weight_decay"}


def hydra_cfg(*overrides):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=True)


@pytest.mark.slow
def test_optuna_trials_through_joblib_read_only_val(tmp_path, cache_dir):
    """Two Optuna trials run as a 2-job joblib multirun; what the study optimised is each trial's val/acc."""
    res = run_cli(
        "fer_lightning.train", "hparams_search=optuna", "model=handcrafted", "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2", "hydra.sweeper.n_jobs=2", "hydra.sweeper.n_trials=2", "data.image_size=64",
        "trainer.max_epochs=1", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
        "logger=none", f"data.cache_dir={cache_dir}", cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in res.stdout + res.stderr
    sweep = next((tmp_path / "outputs" / "train" / "multiruns").iterdir())
    trials = sorted(p for p in sweep.iterdir() if (p / "metrics.json").is_file())
    assert len(trials) == 2
    metrics = [json.loads((t / "metrics.json").read_text()) for t in trials]
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert result["best_value"] == pytest.approx(max(m["val/acc"] for m in metrics), abs=1e-9)
    best = max(metrics, key=lambda m: m["val/acc"])
    assert best["val/acc"] != best["test/acc"]  # (else this run could not tell them apart)
    assert set(result["best_params"]) == SEARCH_SPACE
    for t in trials:  # every trial drew its own values inside the search space
        drawn = dict(o.split("=", 1) for o in yaml.safe_load((t / ".hydra" / "overrides.yaml").read_text()))
        assert SEARCH_SPACE <= set(drawn) and 1e-5 <= float(drawn["model.optim.lr"]) <= 1e-2


def test_optuna_config_searches_the_fusion_head_on_val():
    cfg = hydra_cfg("hparams_search=optuna")
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "maximize"
    assert set(sweeper.params) == SEARCH_SPACE and cfg.optimized_metric == "val/acc"
    assert cfg.model._target_.endswith("HybridFER")
    assert hydra_cfg("hparams_search=optuna", "model=handcrafted").model._target_.endswith("HandcraftedFER")


@pytest.mark.parametrize(
    ("sweeper", "metric", "refused"),
    [
        ("hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper", "test/acc", True),
        ("hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper", "hybrid/test/auroc", True),
        ("hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper", "val/acc", False),
        ("hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper", "hybrid/val/acc", False),
        ("hydra._internal.core_plugins.basic_sweeper.BasicSweeper", "test/acc", False),  # chooses nothing
    ],
)
def test_a_search_may_not_read_test_metrics(sweeper, metric, refused):
    cfg = hydra_cfg()
    cfg.hydra.sweeper._target_ = sweeper
    HydraConfig.instance().set_config(cfg)
    try:
        if refused:
            with pytest.raises(FERError, match="may only read validation metrics"):
                check_objective(metric)
        else:
            check_objective(metric)
    finally:
        HydraConfig.instance().cfg = None


@pytest.mark.parametrize(
    ("launcher", "expected"),
    [
        ("slurm", {"--gpus-per-node=1", "--ntasks-per-node=1", "--nodes=1", "--cpus-per-task=8", "--time=240"}),
        ("slurm_ddp", {"--gpus-per-node=4", "--ntasks-per-node=4", "--nodes=1", "--mem=64GB"}),
    ],
)
def test_slurm_configs_render_without_slurm(tmp_path, monkeypatch, launcher, expected):
    """The submitit launcher's own path from config to sbatch parameters, stopped before submitting."""
    import submitit

    cfg = hydra_cfg(f"hydra/launcher={launcher}", "trainer=ddp", f"hydra.sweep.dir={tmp_path}")
    executors = []

    def no_submission(self, fn, *args):
        executors.append(self)
        return []

    monkeypatch.setattr(submitit.AutoExecutor, "map_array", no_submission)
    fake = tmp_path / "bin"  # submitit only looks for srun on PATH; nothing runs it
    fake.mkdir()
    (fake / "srun").write_text("#!/bin/sh\nexit 1\n")
    (fake / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    slurm = instantiate(cfg.hydra.launcher)
    slurm.config = cfg
    assert slurm.launch([["data.fold=0"]], initial_job_idx=0) == []
    script = executors[0]._executor._make_submission_file_text("python -m fer_lightning.train", "x")
    lines = {line.removeprefix("#SBATCH ").strip() for line in script.splitlines() if line.startswith("#SBATCH")}
    assert expected <= lines, sorted(lines)
    assert any(line.startswith("--signal=USR2@") for line in lines)  # submitit's warning before the time limit
    assert Path(str(cfg.hydra.sweep.dir)).is_dir()


def test_one_gpu_per_parallel_job():
    """``trainer.devices='${job_gpu:4}'``: job k of a multirun uses GPU k mod 4."""
    from fer_lightning.engine.startup import start_command

    start_command()
    cfg = hydra_cfg("trainer=gpu", "trainer.devices=${job_gpu:4}")
    cfg.hydra.job.num = 6
    HydraConfig.instance().set_config(cfg)
    try:
        assert list(cfg.trainer.devices) == [2]
    finally:
        HydraConfig.instance().cfg = None
