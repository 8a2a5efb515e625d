"""python -m fer_lightning.evaluate: reproduces a run's test metrics; other data by overrides."""

import csv
import json
import shutil
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from fer_lightning.engine.configs import config_dir
from fer_lightning.engine.training import train
from fer_lightning.errors import FERError
from fer_lightning.evaluate import evaluate

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
    other = ["data.synthetic.n_subjects=3", "data.split=loso", "data.fold=1"]  # another synthetic set: other data
    e = evaluate(eval_cfg(tmp_path, cache_dir, m["best_checkpoint"], *other), overrides=other)
    assert (e["split"], e["fold"], e["n_test"]) == ("loso", 1, 21)
    with pytest.raises(FERError, match="already holds a finished run"):
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


# ---------------------------------------------------------------- safety (issue 10) and overrides (issue 13)
@pytest.fixture(scope="module")
def hc_run(tmp_path_factory, cache_dir, synthetic_dir):
    """A 1-epoch handcrafted run on a private copy of the synthetic set (a test may take files away and put them
    back): (run folder, data folder, metrics)."""
    from .conftest import TINY

    base = tmp_path_factory.mktemp("hc")
    data = base / "jaffe"
    shutil.copytree(synthetic_dir, data)
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=[*TINY, "model=handcrafted", "trainer.max_epochs=1", f"data.root={data}",
                                          f"data.cache_dir={cache_dir}", f"paths.output_dir={base / 'run'}"])
    return base / "run", data, train(cfg)


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def copy_run(run: Path, dest: Path, ckpt: str) -> Path:
    """The run's folder (config, splits, info, the checkpoint and the fitted layers beside it) somewhere a test may
    edit it."""
    (dest / "checkpoints").mkdir(parents=True)
    for name in ("config.yaml", "splits.csv", "run_info.json"):
        shutil.copy(run / name, dest / name)
    shutil.copy(ckpt, dest / "checkpoints" / "best.ckpt")
    for fitted in Path(ckpt).parent.glob("fitted-*.pt"):
        shutil.copy(fitted, dest / "checkpoints" / fitted.name)
    return dest / "checkpoints" / "best.ckpt"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"augment": {"_target_": "os.makedirs", "name": "PWNED"}}, r"data.augment._target_ is not a data setting"),
        ({"_target_": "torch.load", "f": "PWNED", "weights_only": False},
         r"data._target_='torch.load' is not one of fer-lightning's data modules"),
        ({"_recursive_": True}, r"data._recursive_ is not a data setting"),
        ({"root": "${oc.env:HOME}"}, r"data.root='\$\{oc.env:HOME\}' is an interpolation"),
    ],
)
def test_run_folder_settings_are_read_as_data_never_run(hc_run, tmp_path, cache_dir, edit, message):
    run, _, m = hc_run
    ckpt = copy_run(run, tmp_path / "received", m["best_checkpoint"])
    config = OmegaConf.load(tmp_path / "received" / "config.yaml")
    pwned = tmp_path / "pwned"
    edit = {k: str(pwned) if v == "PWNED" else {**v, "name": str(pwned)} if isinstance(v, dict) else v
            for k, v in edit.items()}
    config.data = OmegaConf.merge(config.data, edit)
    (tmp_path / "received" / "config.yaml").write_text(OmegaConf.to_yaml(config))
    with pytest.raises(FERError, match=message):
        evaluate(eval_cfg(tmp_path, cache_dir, ckpt))
    assert not pwned.exists()


def test_only_the_runs_own_test_images_are_ever_tested(hc_run, tmp_path, cache_dir):
    run, data, m = hc_run
    split = {r["file"]: r["split"] for r in rows(run / "splits.csv")}
    test_files = sorted(f for f, s in split.items() if s == "test")
    with pytest.raises(FERError, match=r"data.split: this is the run's own data, whose test images are fixed"):
        evaluate(eval_cfg(tmp_path / "a", cache_dir, m["best_checkpoint"], "data.split=loso"),
                 overrides=["data.split=loso"])
    aside = tmp_path / "aside"
    aside.mkdir()
    removed = sorted(f for f, s in split.items() if s == "train")[::4]  # a quarter of the training images
    for f in removed:
        shutil.move(data / f, aside / f)
    try:
        with pytest.raises(FERError, match=r"the data changed since the run .*allow_changed_data=true"):
            evaluate(eval_cfg(tmp_path / "b", cache_dir, m["best_checkpoint"]))
        e = evaluate(eval_cfg(tmp_path / "c", cache_dir, m["best_checkpoint"], "allow_changed_data=true"))
    finally:
        for f in removed:
            shutil.move(aside / f, data / f)
    tested = sorted(r["file"] for r in rows(tmp_path / "c" / "eval" / "predictions.csv"))
    assert tested == test_files and e["n_test"] == len(test_files)
    for k in ("test/acc", "test/f1_macro", "test/auroc"):
        assert abs(e[k] - m[k]) <= 1e-6, k


def test_checkpoint_preprocessing_unless_overridden(hc_run, tmp_path, cache_dir, caplog):
    run, _, m = hc_run
    e = evaluate(eval_cfg(tmp_path / "a", cache_dir, m["best_checkpoint"], "use_run_config=false",
                          f"data.root={run.parent / 'jaffe'}"), overrides=[f"data.root={run.parent / 'jaffe'}"])
    assert OmegaConf.load(tmp_path / "a" / "eval" / "config.yaml").data.image_size == 64  # not eval's 224
    assert abs(e["test/acc"] - m["test/acc"]) <= 1e-6
    assert "overrides the checkpoint" not in caplog.text
    evaluate(eval_cfg(tmp_path / "b", cache_dir, m["best_checkpoint"], "data.image_size=80"),
             overrides=["data.image_size=80"])
    assert OmegaConf.load(tmp_path / "b" / "eval" / "config.yaml").data.image_size == 80
    assert "data.image_size=80 overrides the checkpoint's image_size (it was trained with 64)" in caplog.text


def test_every_kind_of_data_override_applies(hc_run, tmp_path, cache_dir):
    _, _, m = hc_run
    overrides = ["++data.batch_size=8", "~data.crop_margin"]
    e = evaluate(eval_cfg(tmp_path, cache_dir, m["best_checkpoint"], *overrides), overrides=overrides)
    assert abs(e["test/acc"] - m["test/acc"]) <= 1e-6
    written = OmegaConf.load(tmp_path / "eval" / "config.yaml")
    assert written.data.batch_size == 8 and "crop_margin" not in written.data
    # the trainer config is instantiated with its overrides too
    limited = ["++data.batch_size=4", "+trainer.limit_test_batches=1"]
    e = evaluate(eval_cfg(tmp_path / "t", cache_dir, m["best_checkpoint"], *limited), overrides=limited)
    assert e["n_test"] == 4
    with pytest.raises(FERError, match=r"data.unknown_key is not an option of .*from_options; valid keys: .*root"):
        evaluate(eval_cfg(tmp_path / "u", cache_dir, m["best_checkpoint"], "+data.unknown_key=1"),
                 overrides=["+data.unknown_key=1"])


@pytest.mark.parametrize("old", ["fer_lightning.data.FERDataModule", "fer_lightning.data.JAFFEDataModule"])
def test_run_folders_of_0_1_evaluate_and_reproduce_their_run(hc_run, tmp_path, cache_dir, old):
    """A 0.1.x run folder names its data module and callbacks by their old paths (dated shim:
    fer_lightning.runs.legacy): evaluating it reads its settings and reproduces its test metrics."""
    run, _, m = hc_run
    ckpt = copy_run(run, tmp_path / "old", m["best_checkpoint"])
    config = OmegaConf.load(tmp_path / "old" / "config.yaml")
    config.data._target_ = old
    config.callbacks.exact_resume._target_ = "fer_lightning.resume.ExactResume"
    (tmp_path / "old" / "config.yaml").write_text(OmegaConf.to_yaml(config))
    e = evaluate(eval_cfg(tmp_path, cache_dir, ckpt))
    assert [e[k] for k in SCALARS] == [m[k] for k in SCALARS] and e["confusion_matrix"] == m["confusion_matrix"]


def test_a_0_1_target_in_a_config_names_its_new_spelling(make_cfg):
    from fer_lightning.engine.checks import check_config

    old, new = "fer_lightning.callbacks.LastCheckpoint", "fer_lightning.engine.callbacks.LastCheckpoint"
    with pytest.raises(FERError, match=rf"callbacks.last_checkpoint._target_={old} is a fer-lightning 0.1 name; "
                                       rf"write .*={new}"):
        check_config(make_cfg(f"callbacks.last_checkpoint._target_={old}"))
