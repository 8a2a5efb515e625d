"""python -m fer_lightning.evaluate: reproduces a run's test metrics; other data by overrides."""

import json

import pytest
from hydra import compose, initialize_config_dir

from fer_lightning.config import config_dir
from fer_lightning.errors import FERError
from fer_lightning.evaluate import evaluate
from fer_lightning.training import train

from .conftest import run_cli

pytestmark = pytest.mark.slow
SCALARS = ["test/acc", "test/precision_macro", "test/recall_macro", "test/f1_macro", "test/auroc"]


def eval_cfg(tmp_path, cache_dir, ckpt, *overrides):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose("eval", overrides=[f"ckpt_path={ckpt}", f"data.cache_dir={cache_dir}",
                                          f"paths.output_dir={tmp_path / 'eval'}", *overrides])


@pytest.mark.parametrize("model", ["deep", "handcrafted", "hybrid"])
def test_reproduces_the_runs_test_metrics(make_cfg, tmp_path, cache_dir, model):
    m = train(make_cfg(f"model={model}", "trainer.max_epochs=2", "data.seed=3"))
    e = evaluate(eval_cfg(tmp_path, cache_dir, m["best_checkpoint"]))
    for k in SCALARS + [k for k in m if k.startswith("test/acc_")]:
        assert abs(e[k] - m[k]) <= 1e-6, k
    assert e["confusion_matrix"] == m["confusion_matrix"] and e["seed"] == 3 and e["model"] == model
    ours = (tmp_path / "eval" / "predictions.csv").read_text().splitlines()
    theirs = (tmp_path / "run" / "predictions.csv").read_text().splitlines()
    assert [r.split(",")[:4] for r in ours] == [r.split(",")[:4] for r in theirs]


def test_other_data_by_override_and_errors(make_cfg, tmp_path, cache_dir):
    m = train(make_cfg("trainer.max_epochs=1"))
    e = evaluate(eval_cfg(tmp_path, cache_dir, m["best_checkpoint"], "data.split=loso", "data.fold=4"),
                 overrides=["data.split=loso", "data.fold=4"])
    assert (e["split"], e["fold"], e["n_test"]) == ("loso", 4, 21)
    with pytest.raises(FERError, match="already holds results"):
        evaluate(eval_cfg(tmp_path, cache_dir, m["best_checkpoint"]))
    with pytest.raises(FERError, match="give ckpt_path"):
        evaluate(eval_cfg(tmp_path / "x", cache_dir, ""))


def test_cli(make_cfg, tmp_path, cache_dir):
    m = train(make_cfg("trainer.max_epochs=1"))
    res = run_cli("fer_lightning.evaluate", f"ckpt_path={m['best_checkpoint']}", f"data.cache_dir={cache_dir}",
                  f"hydra.run.dir={tmp_path / 'ev'}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    e = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert abs(e["test/acc"] - m["test/acc"]) <= 1e-6
