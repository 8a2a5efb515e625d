"""python -m fer_lightning.report on a small fake multirun with known numbers."""

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from fer_lightning.errors import FERError
from fer_lightning.report import main
from fer_lightning.reporting.document import report
from fer_lightning.reporting.statistics import mcnemar, mean_ci

CLASSES = ["happiness", "neutral"]
FILES = [f"{c}/{i:03d}.jpg" for c in CLASSES for i in range(5)]  # 10 test images, 5 per class


def fake_run(root: Path, model: str, seed: int, correct: list[bool]) -> None:
    """A run dir whose test predictions are right exactly where ``correct`` says."""
    d = root / f"{seed}_job" / model
    d.mkdir(parents=True)
    rows, cm = [], np.zeros((2, 2), int)
    for f, ok in zip(FILES, correct, strict=True):
        true = f.split("/")[0]
        pred = true if ok else CLASSES[1 - CLASSES.index(true)]
        cm[CLASSES.index(true), CLASSES.index(pred)] += 1
        p = 0.8 if pred == "happiness" else 0.2
        rows.append({"file": f, "subject": f[-7:-4], "true": true, "predicted": pred,
                     "p_happiness": p, "p_neutral": 1 - p})
    with open(d / "predictions.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    acc = float(np.mean(correct))
    per_class = [cm[k, k] / cm[k].sum() for k in range(2)]
    metrics = {"test/acc": acc, "test/precision_macro": acc, "test/recall_macro": float(np.mean(per_class)),
               "test/f1_macro": acc, "test/auroc": 0.9, "test/acc_happiness": per_class[0],
               "test/acc_neutral": per_class[1], "confusion_matrix": cm.tolist(), "class_names": CLASSES,
               "n_test": 10, "dataset": "fake", "dataset_fingerprint": "f", "split": "paper", "fold": None,
               "seed": seed, "model": model}
    (d / "metrics.json").write_text(json.dumps(metrics))


@pytest.fixture
def multirun(tmp_path) -> Path:
    root = tmp_path / "multirun"
    # deep: 10/10, 9/10, 8/10 right; hybrid: 7/10 on every seed, wrong where deep is right
    for seed, n_right in enumerate([10, 9, 8]):
        fake_run(root, "deep", seed, [i < n_right for i in range(10)])
        fake_run(root, "hybrid", seed, [i >= 3 for i in range(10)])
    (root / "9_job").mkdir()
    (root / "9_job" / "error.txt").write_text("out of memory\n")
    return root


def test_statistics_helpers():
    mean, sd, lo, hi = mean_ci([100.0, 90.0, 80.0])
    half = stats.t.ppf(0.975, 2) * 10 / math.sqrt(3)
    assert (mean, sd) == (90.0, 10.0) and math.isclose(lo, 90 - half) and math.isclose(hi, 90 + half)
    assert mean_ci([70.0]) == (70.0, 0.0, 70.0, 70.0)
    a = np.array([True] * 8 + [False] * 2)
    b = np.array([False] * 5 + [True] * 5)
    only_a, only_b, p = mcnemar(a, b)
    assert (only_a, only_b) == (5, 2)
    assert math.isclose(p, stats.binomtest(5, 7, 0.5).pvalue)


def test_report_tables_tests_and_figures(multirun):
    out = report([multirun])
    t2 = {r["model"]: r for r in csv.DictReader(open(out / "table2.csv"))}
    assert t2["deep"]["n_runs"] == "3" and float(t2["deep"]["acc_mean"]) == 90.0
    assert float(t2["deep"]["acc_sd"]) == 10.0
    half = stats.t.ppf(0.975, 2) * 10 / math.sqrt(3)
    assert math.isclose(float(t2["deep"]["acc_ci_low"]), round(90 - half, 2))
    assert float(t2["deep"]["acc_ci_high"]) == 100.0  # 90 + 24.8, clipped
    assert float(t2["hybrid"]["acc_mean"]) == 70.0 and float(t2["hybrid"]["acc_sd"]) == 0.0
    t3 = {r["model"]: r for r in csv.DictReader(open(out / "table3.csv"))}
    assert float(t3["deep"]["happiness"]) == 100.0 and float(t3["deep"]["neutral"]) == 80.0
    assert math.isclose(float(t3["hybrid"]["happiness"]), 40.0)
    (pair,) = list(csv.DictReader(open(out / "paired_tests.csv")))
    # pooled over 30 images: deep right & hybrid wrong on images 0-2 of each seed (9);
    # deep wrong & hybrid right on seed 1 image 9 and seed 2 images 8-9 (3)
    assert (pair["n_images"], pair["a_right_b_wrong"], pair["a_wrong_b_right"]) == ("30", "9", "3")
    assert math.isclose(float(pair["mcnemar_p"]), stats.binomtest(9, 12, 0.5).pvalue)
    for name in ("per_class_accuracy_heatmap", "roc_curves", "confusion_deep", "confusion_hybrid"):
        assert (out / f"{name}.png").stat().st_size > 5000
    md = (out / "report.md").read_text()
    assert "1 job(s) failed" in md and "90.00 ± 10.00" in md and "![roc_curves](roc_curves.png)" in md
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))


def test_cli_and_errors(multirun, tmp_path, capsys):
    main([str(multirun), f"report.output={tmp_path / 'rep'}"])
    assert (tmp_path / "rep" / "report.md").is_file()
    (tmp_path / "empty").mkdir()
    for args, message in (([str(tmp_path / "empty")], "no results (metrics.json)"),
                          ([str(tmp_path / "nope")], "is not a folder"),
                          ([], "give a multirun folder"),
                          ([str(multirun), "report.colour=red"], "unknown option"),
                          ([str(multirun), "report.match=names"], "report.match=names is unknown")):
        with pytest.raises(SystemExit) as e:
            main(args)
        assert e.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(FERError):
        report([tmp_path / "empty"])
    main(["--help"])  # usage, not a folder named --help
    assert "report.output=DIR" in capsys.readouterr().out


def test_sweep_configs_compose():
    from hydra import compose, initialize_config_dir

    from fer_lightning.engine.configs import config_dir

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        seeds = compose("train", overrides=["experiment=paper_seeds"], return_hydra_config=True)
        loso = compose("train", overrides=["experiment=loso"], return_hydra_config=True)
    assert seeds.hydra.sweeper.params["data.seed"] == "range(10)" and list(seeds.pipeline.models) == [
        "deep", "hybrid", "handcrafted"]
    assert loso.hydra.sweeper.params["data.fold"] == "range(10)" and loso.data.split == "loso"
    assert loso.pipeline.models.hybrid._target_.endswith("HybridFER")


@pytest.mark.slow
def test_loso_sweep_with_a_failing_job_then_report(tmp_path, cache_dir):
    from .conftest import run_cli

    sweep = tmp_path / "sweep"
    res = run_cli("fer_lightning.train", "-m", "experiment=loso", "data.fold=0,99", "data.image_size=64",
                  "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
                  "pipeline.models.deep.backbone.weights=none", f"data.cache_dir={cache_dir}",
                  f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    ok, bad = sweep / "0_loso_fold0_seed0", sweep / "1_loso_fold99_seed0"
    assert (ok / "summary.md").is_file() and not (bad / "summary.md").exists()
    assert "data.fold=99 is out of range" in (bad / "error.txt").read_text()
    out = report([sweep])
    t2 = {r["model"]: r for r in csv.DictReader(open(out / "table2.csv"))}
    # the three variants plus the row that picks one of them on validation, one run each
    assert set(t2) == {"deep", "hybrid", "handcrafted", "best on val"}
    assert all(r["n_runs"] == "1" for r in t2.values())
    assert t2["best on val"]["acc_mean"] in {t2[m]["acc_mean"] for m in ("deep", "hybrid", "handcrafted")}
    pairs = list(csv.DictReader(open(out / "paired_tests.csv")))
    # every pair of the four rows, each on the one test subject's 21 images
    assert len(pairs) == 6 and all(p["n_images"] == "21" for p in pairs)
    assert "1 job(s) failed" in (out / "report.md").read_text()


def test_duplicates_incomplete_and_corrupt_runs(multirun, capsys):
    """An evaluate output of a run's own checkpoint (same data and split) is not a second run; a killed run (no
    metrics.json) and a corrupt metrics.json are listed, not counted, and do not stop the report."""
    for seed in range(3):
        run = multirun / f"{seed}_job" / "deep"
        m = json.loads((run / "metrics.json").read_text())
        m["best_checkpoint"] = str(run / "checkpoints" / "epoch_003.ckpt")
        (run / "metrics.json").write_text(json.dumps(m))
        evaluated = run / "eval"  # `evaluate` of that checkpoint, written inside the run's folder
        evaluated.mkdir()
        shutil.copy(run / "predictions.csv", evaluated / "predictions.csv")
        e = {k: v for k, v in m.items() if k != "best_checkpoint"} | {"checkpoint": m["best_checkpoint"]}
        (evaluated / "metrics.json").write_text(json.dumps(e))
    killed = multirun / "5_job" / "deep"
    killed.mkdir(parents=True)
    (killed / "run_info.json").write_text("{}")
    broken = multirun / "6_job" / "hybrid"
    broken.mkdir(parents=True)
    (broken / "metrics.json").write_text('{"test/acc": 0.5, "mod')
    out = report([multirun])
    t2 = {r["model"]: r for r in csv.DictReader(open(out / "table2.csv"))}
    assert t2["deep"]["n_runs"] == "3" and float(t2["deep"]["acc_mean"]) == 90.0
    assert t2["hybrid"]["n_runs"] == "3"
    md = (out / "report.md").read_text()
    assert f"1 run(s) are incomplete (started, no metrics.json: killed or still running) and are left out: {killed}" \
        in md
    assert f"1 result file(s) are unreadable and are left out: {broken / 'metrics.json'} (not valid JSON" in md
    assert "3 result(s) repeat a run (the same checkpoint on the same data and split) and are counted once" in md
    assert f"fer-lightning: skipped {broken / 'metrics.json'}: not valid JSON" in capsys.readouterr().err


def test_a_sweep_ends_with_its_report(multirun):
    """experiment=fusion_ablation's Hydra callback writes the report when the multirun ends; the "best on val" row
    picks, per seed, the variant with the highest validation accuracy."""
    from omegaconf import OmegaConf

    from fer_lightning.reporting.document import ReportWhenSweepEnds

    for seed, (deep_val, hybrid_val) in enumerate([(0.9, 0.8), (0.5, 0.7), (0.6, 0.6)]):
        for model, val in (("deep", deep_val), ("hybrid", hybrid_val)):
            path = multirun / f"{seed}_job" / model / "metrics.json"
            path.write_text(json.dumps({**json.loads(path.read_text()), "val/acc": val, "val/nll": 1.0}))
    ReportWhenSweepEnds().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(multirun)}}}))
    with open(multirun / "selection.csv") as f:
        picks = [(r["seed"], r["selected"], r["test_acc"]) for r in csv.DictReader(f)]
    assert picks == [("0", "deep", "100.0"), ("1", "hybrid", "70.0"), ("2", "deep", "80.0")]  # tie: table order
    with open(multirun / "table2.csv") as f:
        best = next(r for r in csv.DictReader(f) if r["model"] == "best on val")
    assert best["n_runs"] == "3" and math.isclose(float(best["acc_mean"]), (100 + 70 + 80) / 3, abs_tol=0.01)
    assert "## Selection on validation (best on val)" in (multirun / "report.md").read_text()
