"""The package as users get it: the wheel, installed in a fresh virtual environment, and its console scripts
called from a directory outside the repository (configs from the wheel, no repository file used)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml

from .conftest import REPO

pytestmark = pytest.mark.slow
SCRIPTS = ("fer-train", "fer-eval", "fer-predict", "fer-report", "fer-serve")


def run(args: list, cwd: Path, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """The command (``env``: its whole environment; default: this one), which must succeed."""
    res = subprocess.run([str(a) for a in args], cwd=cwd, env=os.environ if env is None else env,
                         capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{args[0]} failed:\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
    return res


def rows_of(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def uv() -> tuple[str, dict]:
    """The uv executable and an environment that points at no virtual environment."""
    exe = shutil.which("uv") or str(Path.home() / ".local" / "bin" / "uv")
    if not Path(exe).is_file():
        pytest.skip("needs uv (https://docs.astral.sh/uv/)")
    unset = ("VIRTUAL_ENV", "PYTHONPATH", "UV_PROJECT_ENVIRONMENT")
    return exe, {k: v for k, v in os.environ.items() if k not in unset}


def uv_run(uv: tuple[str, dict], *args, cwd: Path) -> subprocess.CompletedProcess:
    """``uv <args>`` offline from uv's cache; online only where the cache lacks something."""
    exe, env = uv
    res = subprocess.run([exe, *map(str, args), "--offline"], cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=600)
    if res.returncode != 0:
        res = subprocess.run([exe, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, f"uv {' '.join(map(str, args))}:\n{res.stderr[-3000:]}"
    return res


@pytest.fixture(scope="module")
def wheel(uv, tmp_path_factory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    uv_run(uv, "build", "--wheel", "--no-build-isolation", "--python", sys.executable, "--out-dir", dist, cwd=REPO)
    (whl,) = dist.glob("fer_lightning-*.whl")
    return whl


@pytest.fixture(scope="module")
def venv(uv, wheel, tmp_path_factory) -> Path:
    """A new virtual environment with the locked dependencies (every extra, for the loggers) and the wheel."""
    root = tmp_path_factory.mktemp("venv")
    reqs = uv_run(uv, "export", "--frozen", "--no-dev", "--all-extras", "--no-emit-project", "--no-hashes",
                  cwd=REPO).stdout
    (root / "requirements.txt").write_text(reqs)
    uv_run(uv, "venv", "--python", sys.executable, root / "env", cwd=root)
    uv_run(uv, "pip", "install", "--python", root / "env" / "bin" / "python", "-r", root / "requirements.txt",
           wheel, cwd=root)
    return root / "env"


@pytest.fixture(scope="module")
def smoke_run(venv, cache_dir, tmp_path_factory):
    """The wheel's ``fer-train experiment=smoke`` with every logger and the optional callbacks, run elsewhere."""
    cwd = tmp_path_factory.mktemp("elsewhere")
    wandb_home = str(cwd / "wandb-home")  # W&B's own settings and caches stay out of the user's home
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "MLFLOW_TRACKING_URI")}
    env.update(WANDB_SILENT="true", WANDB_CONFIG_DIR=wandb_home, WANDB_CACHE_DIR=wandb_home, WANDB_DATA_DIR=wandb_home,
               FER_LIGHTNING_CACHE=str(cache_dir), OMP_NUM_THREADS="1")  # 64 px batches: one thread is plenty
    res = run([venv / "bin" / "fer-train", "experiment=smoke", "debug=limit", "trainer.max_epochs=1",
               "logger=many_loggers", "logger.wandb.offline=true",
               "callbacks=[default,lr_monitor,model_summary,rich_progress_bar]"], cwd, env)
    (out,) = (cwd / "outputs" / "debug" / "runs").iterdir()
    return cwd, out, res.stdout + res.stderr, env


def test_the_wheel_carries_configs_licence_and_scripts(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        meta = next(z.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
        entry_points = next(z.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert {"fer_lightning/conf/train.yaml", "fer_lightning/conf/callbacks/default.yaml",
            "fer_lightning/conf/logger/many_loggers.yaml", "fer_lightning/conf/debug/limit.yaml",
            "fer_lightning/conf/serve.yaml", "fer_lightning/deploy/page/index.html",
            "fer_lightning/deploy/page/app.js"} <= names  # fer-serve's page travels in the wheel
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names) and "License-Expression: MIT" in meta
    assert not any(n.startswith(("tests/", "outputs/", "conf/")) for n in names)
    for name in SCRIPTS:
        assert f"{name} = fer_lightning." in entry_points
    for extra in ("wandb", "mlflow", "rich", "serve", "all"):
        assert f"Provides-Extra: {extra}" in meta


def test_the_default_install_is_lean(uv):
    default = uv_run(uv, "export", "--frozen", "--no-dev", "--no-emit-project", "--no-hashes", cwd=REPO).stdout
    pinned = {line.split("==")[0] for line in default.splitlines() if "==" in line}
    assert {"scipy", "omegaconf", "torch", "pytorch-lightning"} <= pinned
    assert not pinned & {"wandb", "mlflow", "rich", "hatchling", "pytest"}


def test_fer_train_from_the_wheel_outside_the_repo(venv, smoke_run):
    cwd, out, _, env = smoke_run
    probe = run([venv / "bin" / "python", "-c", "import fer_lightning as f, fer_lightning.engine.configs as c; "
                 "print(f.__file__, c.config_dir(), f.__version__)"], cwd, env).stdout.split()
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert all(Path(p).is_relative_to(venv) for p in probe[:2]) and probe[2] == version
    m = json.loads((out / "metrics.json").read_text())
    assert (m["model"], m["n_test"], m["epochs"]) == ("deep", 32, 1)  # debug=limit: 2 test batches of 16
    sources = yaml.safe_load((out / ".hydra" / "hydra.yaml").read_text())["hydra"]["runtime"]["config_sources"]
    main = next(s["path"] for s in sources if s["provider"] == "main")
    assert Path(main.removeprefix("file://")).is_relative_to(venv)  # the configs inside the wheel, not the repo's
    assert (out / "checkpoints" / "last.ckpt").is_file()


def test_every_logger_and_the_composed_callbacks(smoke_run):
    cwd, out, output, _ = smoke_run
    m = json.loads((out / "metrics.json").read_text())
    assert list((out / "tensorboard" / "deep" / "paper" / "seed0").glob("events.out.tfevents.*"))
    csv_rows = rows_of(out / "csv" / "metrics.csv")
    assert any(r["lr-Adam"] for r in csv_rows)  # callbacks=[default,lr_monitor]
    assert [float(r["test/acc"]) for r in csv_rows if r["test/acc"]] == [pytest.approx(m["test/acc"])]
    assert "data/image_size: 64" in (out / "csv" / "hparams.yaml").read_text()
    assert list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    db = sqlite3.connect(cwd / "outputs" / "mlflow.db")  # logger.mlflow's default store
    (status,) = db.execute("select status from runs").fetchone()
    test_acc = db.execute("select value from metrics where key = 'test/acc'").fetchall()
    image_size = db.execute("select value from params where key = 'data/image_size'").fetchall()
    assert status == "FINISHED" and test_acc == [(pytest.approx(m["test/acc"]),)] and image_size == [("64",)]
    assert "backbone.features" in output  # callbacks.model_summary: max_depth 2


def test_fer_eval_predict_and_report(venv, smoke_run, synthetic_dir):
    cwd, out, _, env = smoke_run
    best = json.loads((out / "metrics.json").read_text())["best_checkpoint"]
    run([venv / "bin" / "fer-eval", f"ckpt_path={best}", f"hydra.run.dir={cwd / 'ev'}"], cwd, env)
    trained, evaluated = rows_of(out / "predictions.csv"), rows_of(cwd / "ev" / "predictions.csv")
    assert len(trained) == 32 and len(evaluated) == 57  # the run tested 2 batches (debug=limit); eval all of them
    by_file = {r["file"]: r for r in evaluated}
    for r in trained:
        assert {k: float(v) for k, v in r.items() if k.startswith("p_")} == pytest.approx(
            {k: float(v) for k, v in by_file[r["file"]].items() if k.startswith("p_")}, abs=1e-5)

    image = synthetic_dir / trained[0]["file"]  # the run's data (no data.root: the synthetic set)
    res = run([venv / "bin" / "fer-predict", f"ckpt_path={best}", f"input={image}"], cwd, env)
    file, predicted, probs = res.stdout.strip().splitlines()[-1].split("\t")
    assert (file, predicted) == (str(image), trained[0]["predicted"])
    assert {f"p_{p.split('=')[0]}": float(p.split("=")[1]) for p in probs.split()} == pytest.approx(
        {k: float(v) for k, v in trained[0].items() if k.startswith("p_")}, abs=1e-5)

    run([venv / "bin" / "fer-report", out, f"report.output={cwd / 'report'}"], cwd, env)
    (row,) = rows_of(cwd / "report" / "table2.csv")
    m = json.loads((out / "metrics.json").read_text())
    assert row["model"] == "deep" and float(row["acc_mean"]) == pytest.approx(100 * m["test/acc"], abs=0.01)
