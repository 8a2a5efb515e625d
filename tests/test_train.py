"""Training end to end: run outputs, determinism, resuming, checkpoints, Hydra CLI and its errors."""

import csv
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fer_lightning.data.classes import CLASS_NAMES
from fer_lightning.engine.training import train
from fer_lightning.errors import FERError

from .conftest import run_cli

pytestmark = pytest.mark.slow
VOLATILE = {"fit_seconds", "best_checkpoint"}


def read_csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_fast_dev_run(make_cfg, tmp_path):
    metrics = train(make_cfg("trainer.fast_dev_run=true"))
    assert metrics["model"] == "deep" and metrics["n_test"] == 16  # one batch
    assert len(read_csv(tmp_path / "run" / "predictions.csv")) == 16


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, cache_dir):
    """One tiny 2-epoch deep run shared by the output tests."""
    from hydra import compose, initialize_config_dir

    from fer_lightning.engine.configs import config_dir

    from .conftest import TINY

    out = tmp_path_factory.mktemp("finished") / "run"
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=[*TINY, "model.backbone.weights=none", f"data.cache_dir={cache_dir}",
                                          f"paths.output_dir={out}"])
    return out, train(cfg)


def test_metrics_json(finished_run):
    out, returned = finished_run
    m = json.loads((out / "metrics.json").read_text())
    assert m == returned
    keys = ["test/acc", "test/f1_macro", "test/precision_macro", "test/recall_macro", "test/auroc"]
    keys += [f"test/acc_{c}" for c in CLASS_NAMES]
    for k in keys:
        assert 0.0 <= m[k] <= 1.0, k
    assert m["n_test"] == 57 and m["n_train"] == 130 and m["n_val"] == 23
    assert (m["dataset"], m["split"], m["fold"], m["seed"], m["model"]) == ("synthetic", "paper", None, 0, "deep")
    cm = np.array(m["confusion_matrix"])
    assert cm.shape == (7, 7) and cm.sum() == 57
    assert math.isclose(m["test/acc"], np.trace(cm) / 57, abs_tol=1e-6)
    for k, c in enumerate(CLASS_NAMES):
        assert math.isclose(m[f"test/acc_{c}"], cm[k, k] / cm[k].sum(), abs_tol=1e-6)
    assert m["class_names"] == list(CLASS_NAMES)
    assert m["val/acc"] >= 0 and Path(m["best_checkpoint"]).is_file()


def test_predictions_csv(finished_run):
    out, m = finished_run
    rows = read_csv(out / "predictions.csv")
    assert list(rows[0]) == ["file", "subject", "true", "predicted", *[f"p_{c}" for c in CLASS_NAMES]]
    assert len(rows) == 57
    test_files = {r["file"] for r in read_csv(out / "splits.csv") if r["split"] == "test"}
    assert {r["file"] for r in rows} == test_files
    for r in rows:
        p = np.array([float(r[f"p_{c}"]) for c in CLASS_NAMES])
        assert abs(p.sum() - 1) < 1e-4 and CLASS_NAMES[int(p.argmax())] == r["predicted"]
        assert r["file"].startswith(r["subject"] + ".")
    acc = np.mean([r["true"] == r["predicted"] for r in rows])
    assert math.isclose(acc, m["test/acc"], abs_tol=1e-6)


def test_run_dir_describes_the_run(finished_run):
    out, m = finished_run
    assert (out / "config.yaml").read_text().count("${") == 0  # resolved
    info = json.loads((out / "run_info.json").read_text())
    assert info["dataset_fingerprint"] == m["dataset_fingerprint"] and info["dataset"] == "synthetic"
    assert info["versions"]["torch"] == torch.__version__.split("+")[0] or info["versions"]["torch"]
    splits = read_csv(out / "splits.csv")
    assert len(splits) == 210 and {r["split"] for r in splits} == {"train", "val", "test"}
    assert (out / "checkpoints" / "last.ckpt").is_file()


def test_tensorboard_logs(finished_run):
    out, _ = finished_run
    scalars, images = set(), set()
    events = list((out / "tensorboard").rglob("events.out.tfevents.*"))
    assert {f.parent.relative_to(out / "tensorboard").as_posix() for f in events} == {"deep/paper/seed0"}
    for f in events:
        ea = EventAccumulator(str(f), size_guidance={"images": 0})
        ea.Reload()
        scalars |= set(ea.Tags()["scalars"])
        images |= set(ea.Tags()["images"])
    for tag in ["train/loss", "val/loss", "val/acc", "val/acc_anger", "test/acc", "test/auroc", "test/acc_surprise"]:
        assert tag in scalars, tag
    assert {"val/confusion_matrix", "test/confusion_matrix"} <= images
    assert (out / "tensorboard" / "deep" / "paper" / "seed0" / "hparams.yaml").is_file()


def test_same_seed_same_metrics(make_cfg, tmp_path):
    a = train(make_cfg("trainer.max_epochs=1", out=tmp_path / "a"))
    b = train(make_cfg("trainer.max_epochs=1", out=tmp_path / "b"))
    assert {k: v for k, v in a.items() if k not in VOLATILE} == {k: v for k, v in b.items() if k not in VOLATILE}
    assert (tmp_path / "a" / "predictions.csv").read_text() == (tmp_path / "b" / "predictions.csv").read_text()


def test_resume_from_last_checkpoint(make_cfg, tmp_path):
    first = train(make_cfg("trainer.max_epochs=1", "callbacks.early_stopping=null", out=tmp_path / "a"))
    last = tmp_path / "a" / "checkpoints" / "last.ckpt"
    step_a = torch.load(last, weights_only=True)["global_step"]
    assert first["epochs"] == 1 and step_a == 9  # 130 train images / batch 16
    resumed = train(make_cfg("trainer.max_epochs=2", f"ckpt_path={last}", out=tmp_path / "b"))
    ckpt_b = torch.load(tmp_path / "b" / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["epochs"] == 2 and ckpt_b["global_step"] == 2 * step_a and ckpt_b["epoch"] == 1


def test_checkpoint_errors(make_cfg, tmp_path, finished_run):
    out, _ = finished_run
    torch.save({"state_dict": {}}, tmp_path / "foreign.ckpt")
    with pytest.raises(FERError, match="not a fer-lightning checkpoint"):
        train(make_cfg(f"ckpt_path={tmp_path / 'foreign.ckpt'}", out=tmp_path / "x"))
    with pytest.raises(FERError, match="no such checkpoint file"):
        train(make_cfg(f"ckpt_path={tmp_path / 'missing.ckpt'}", out=tmp_path / "y"))
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    ckpt["fer_lightning"]["model"] = "handcrafted"
    torch.save(ckpt, tmp_path / "other_model.ckpt")
    with pytest.raises(FERError, match="holds a 'handcrafted' model, not 'deep'; use model=handcrafted"):
        train(make_cfg(f"ckpt_path={tmp_path / 'other_model.ckpt'}", out=tmp_path / "z"))


def test_finished_run_dir_is_not_overwritten(make_cfg, finished_run):
    out, _ = finished_run
    before = (out / "metrics.json").read_bytes()
    with pytest.raises(FERError, match="already holds a finished run"):
        train(make_cfg(out=out))
    assert (out / "metrics.json").read_bytes() == before


def test_multirun_from_another_directory(tmp_path, cache_dir):
    """`-m data.seed=0,1` from outside the repo: two jobs, each in its own self-describing dir."""
    res = run_cli(
        "fer_lightning.train", "-m", "data.seed=0,1", "experiment=smoke", "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false", f"data.cache_dir={cache_dir}", cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    jobs = sorted((tmp_path / "outputs" / "train" / "multiruns").glob("*/*_deep_paper_fold0_seed*"))
    assert [j.name for j in jobs] == ["0_deep_paper_fold0_seed0", "1_deep_paper_fold0_seed1"]
    metrics = [json.loads((j / "metrics.json").read_text()) for j in jobs]
    assert [m["seed"] for m in metrics] == [0, 1]
    splits = [(j / "splits.csv").read_text() for j in jobs]
    assert splits[0] != splits[1]  # data.seed re-draws the split


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("data.root=/nonexistent/jaffe", "data.root=/nonexistent/jaffe is not a folder"),
        ("data.test_size=200", "do not fit in 210 images"),
        ("model.backbone.weights=/nonexistent/mnv2.pth", "model.backbone.weights=/nonexistent/mnv2.pth: no such file"),
    ],
)
def test_cli_errors_are_one_line(tmp_path, cache_dir, override, expected):
    res = run_cli("fer_lightning.train", "experiment=smoke", override, f"data.cache_dir={cache_dir}", cwd=tmp_path)
    assert res.returncode == 2
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("fer-lightning: error: ") and expected in last, res.stderr[-2000:]
    assert "Traceback" not in res.stderr


def test_main_returns_the_optimized_metric(make_cfg, tmp_path):
    from fer_lightning.train import main

    value = main(make_cfg("trainer.fast_dev_run=true", "optimized_metric=test/acc", out=tmp_path / "a"))
    assert value == json.loads((tmp_path / "a" / "metrics.json").read_text())["test/acc"]
    from fer_lightning.runtime import listing

    # the command's log-line cut ends with it: the process's handlers are left as they were
    assert not any(isinstance(f, listing._CutLong) for h in logging.getLogger().handlers for f in h.filters)
    with pytest.raises(SystemExit) as e:
        main(make_cfg("trainer.fast_dev_run=true", "optimized_metric=test/nope", out=tmp_path / "b"))
    assert e.value.code == 2
