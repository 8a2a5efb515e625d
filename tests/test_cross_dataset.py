"""Cross-dataset evaluation: classes matched by name, the shared ones scored (probabilities restricted and
renormalised), fewer than two refused; experiment=cross_dataset and the source x target matrix of the report."""

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from fer_lightning.engine.configs import config_dir
from fer_lightning.engine.crossdata import ClassMapping, all_classes_accuracy, score_shared
from fer_lightning.engine.training import train
from fer_lightning.errors import FERError
from fer_lightning.evaluate import evaluate
from fer_lightning.reporting.crossdata import cross_matrix, matrix_markdown
from fer_lightning.reporting.document import report
from fer_lightning.runs.survey import Run

from .conftest import TINY

SEVEN = ("anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise")


def write_folder(root: Path, folders: dict[str, str], subjects: int = 4, per_subject: int = 3, seed: int = 0) -> Path:
    """A ``data=folder`` set: ``root/<folder>/s<j>_<i>.png``, 40x40 grey images, all distinct.
    ``folders``: folder name -> a brightness offset (so classes differ a little)."""
    rng = np.random.default_rng(seed)
    for name, offset in folders.items():
        (root / name).mkdir(parents=True)
        for j in range(subjects):
            for i in range(per_subject):
                img = np.clip(rng.normal(110 + int(offset), 40, (40, 40)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(root / name / f"s{j}_{i}.png")
    return root


# ------------------------------------------------------------------------------------------------- fast: the rule
def test_class_mapping_by_name():
    m = ClassMapping(SEVEN, ("contempt", "happiness", "neutral", "surprise"))
    assert m.shared == ("happiness", "neutral", "surprise") and m.dropped == ("contempt",)
    assert m.unscored == ("anger", "disgust", "fear", "sadness")
    assert m.data_to_model().tolist() == [-1, 3, 4, 6]
    assert ClassMapping(SEVEN, SEVEN).identical and not m.identical
    m.check()
    with pytest.raises(FERError, match=r"shares 1 class\(es\) \(happiness\).*needs two or more"):
        ClassMapping(SEVEN, ("contempt", "happiness")).check()
    with pytest.raises(FERError, match=r"shares 0 class\(es\) \(none\)"):
        ClassMapping(("anger", "fear"), ("contempt", "happiness")).check()


def test_scores_are_restricted_to_the_shared_classes_and_renormalised():
    g = torch.Generator().manual_seed(1)
    probs = torch.rand(40, 7, generator=g).softmax(-1)
    mapping = ClassMapping(SEVEN, ("happiness", "neutral", "surprise"))
    cols = [3, 4, 6]
    target = torch.tensor([cols[i % 3] for i in range(40)])  # model indices of shared classes
    model = SimpleNamespace(model_name="deep", outputs={"test": {"index": torch.arange(40), "probs": probs,
                                                                  "target": target}})
    s = score_shared(model, mapping)
    p = s.outputs["test"]["probs"]
    torch.testing.assert_close(p.sum(1), torch.ones(40))
    torch.testing.assert_close(p, probs[:, cols] / probs[:, cols].sum(1, keepdim=True))
    assert s.outputs["test"]["target"].tolist() == [i % 3 for i in range(40)]
    shared_acc = float((p.argmax(1) == s.outputs["test"]["target"]).double().mean())
    assert s.results["test"]["acc"] == pytest.approx(shared_acc)
    assert s.confusion["test"].shape == (3, 3) and int(s.confusion["test"].sum()) == 40
    assert all_classes_accuracy(model) <= s.results["test"]["acc"]  # an unshared argmax is wrong over all classes
    assert set(s.results["test"]) >= {"acc_happiness", "acc_neutral", "acc_surprise", "auroc", "nll"}


def test_matrix_cells_and_markdown():
    def run(path, dataset, acc, n, source=None):
        m = {"model": "deep", "dataset": dataset, "test/acc": acc, "n_test": n, "class_names": ["a", "b"]}
        if source:
            m["cross_dataset"] = {"source": source, "target": dataset}
        return Run(Path(path), m)

    cells = cross_matrix([run("s0", "fer", 0.7, 100), run("s1", "fer", 0.8, 100), run("t0", "jaffe", 0.5, 40, "fer"),
                          run("t1", "fer", 0.6, 10, "fer")])
    by = {(c["source"], c["target"]): c for c in cells}
    assert by[("fer", "fer")]["n_runs"] == 2 and by[("fer", "fer")]["acc"] == 75.0  # mean of two runs, t interval
    assert by[("fer", "jaffe")]["ci_low"] < 50 < by[("fer", "jaffe")]["ci_high"]
    assert ("fer", "fer (other data)") in by  # a cross run whose data has the source's name
    text = "\n".join(matrix_markdown(cells))
    assert "| trained on \\ tested on | fer | fer (other data) | jaffe |" in text
    assert "| fer | 75.00 [" in text


@pytest.mark.parametrize(("overrides", "message"), [
    (["trainer=ddp_cpu"], "evaluates its targets in one process; trainer.strategy=HydraDDPStrategy"),
    (["~cross_dataset.targets.jaffe"], "cross_dataset.targets is empty"),
    (["cross_dataset.test_images=some"], "test_images"),
])
def test_cross_dataset_job_refuses_before_training(tmp_path, overrides, message):
    from fer_lightning.engine.cross_dataset import run_cross_dataset

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=cross_dataset", f"paths.output_dir={tmp_path / 'job'}",
                                          *overrides])
    with pytest.raises(FERError, match=message):
        run_cross_dataset(cfg)
    assert not (tmp_path / "job" / "source").exists()


# ------------------------------------------------------------------------------------------------ slow: real runs
def eval_cfg(out: Path, cache_dir: Path, ckpt: str, *overrides: str):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose("eval", overrides=[f"ckpt_path={ckpt}", f"data.cache_dir={cache_dir}",
                                          f"paths.output_dir={out}", *overrides])


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_evaluate_on_a_dataset_with_other_classes(make_cfg, tmp_path, cache_dir, caplog):
    m = train(make_cfg("data.image_size=48", "trainer.max_epochs=1", "logger=none", "callbacks.training_pictures=null"))
    faces = write_folder(tmp_path / "faces", {"happy": 40, "neutral": 0, "surprised": -30, "contempt": 20})
    where = ["data=folder", f"data.root={faces}", "test_images=all"]
    caplog.set_level("INFO", logger="fer_lightning.evaluate")
    e = evaluate(eval_cfg(tmp_path / "ev", cache_dir, m["best_checkpoint"], *where), overrides=where)
    assert e["class_names"] == ["happiness", "neutral", "surprise"] and e["n_test"] == 36 and e["split"] == "all"
    cross = e["cross_dataset"]
    assert (cross["source"], cross["target"]) == ("synthetic", "faces")
    assert cross["dropped_classes"] == {"contempt": 12} and cross["images_dropped"] == 12
    assert cross["acc_all_classes"] <= e["test/acc"]
    assert any("contempt (12): 12 of 48 test images removed" in r.message for r in caplog.records)
    got = rows(tmp_path / "ev" / "predictions.csv")
    assert list(got[0]) == ["file", "subject", "true", "predicted", "p_happiness", "p_neutral", "p_surprise"]
    assert len(got) == 36 and not any(r["true"] == "contempt" for r in got)
    for r in got:
        p = [float(r[f"p_{c}"]) for c in e["class_names"]]
        assert sum(p) == pytest.approx(1.0, abs=1e-5) and r["predicted"] == e["class_names"][int(np.argmax(p))]
    assert e["test/acc"] == pytest.approx(np.mean([r["true"] == r["predicted"] for r in got]))
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["cross_dataset"]["shared_classes"] == [
        "happiness", "neutral", "surprise"]

    split = ["data=folder", f"data.root={faces}", "data.folds=2"]  # the target's own test split (subject folds)
    e2 = evaluate(eval_cfg(tmp_path / "ev2", cache_dir, m["best_checkpoint"], *split), overrides=split)
    assert e2["n_test"] == 18 and e2["cross_dataset"]["images_dropped"] == 6 and e2["split"] == "subject_kfold"

    two = write_folder(tmp_path / "two", {"happy": 0, "contempt": 30})
    bad = ["data=folder", f"data.root={two}", "test_images=all"]
    with pytest.raises(FERError, match=r"shares 1 class\(es\) \(happiness\)"):
        evaluate(eval_cfg(tmp_path / "ev3", cache_dir, m["best_checkpoint"], *bad), overrides=bad)
    own = ["test_images=all"]  # the run's own data: would test its training images
    with pytest.raises(FERError, match="test_images=all: this is the run's own data"):
        evaluate(eval_cfg(tmp_path / "ev4", cache_dir, m["best_checkpoint"], *own), overrides=own)


@pytest.mark.slow
def test_experiment_cross_dataset_writes_the_matrix(tmp_path, cache_dir):
    faces = write_folder(tmp_path / "faces", {"happy": 40, "neutral": 0, "sad": -20, "contempt": 20})
    out = tmp_path / "job"
    overrides = [*TINY, "data.image_size=48", "trainer.max_epochs=1", "model.backbone.weights=none", "logger=none",
                 "callbacks.training_pictures=null", "experiment=cross_dataset", f"data.cache_dir={cache_dir}",
                 f"paths.output_dir={out}", "cross_dataset.targets.jaffe.synthetic.n_subjects=2",
                 "+data@cross_dataset.targets.faces=folder", f"cross_dataset.targets.faces.root={faces}"]
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    from fer_lightning.engine.jobs import run_job

    assert run_job(cfg) is not None  # optimized_metric val/acc of the source
    source = json.loads((out / "source" / "metrics.json").read_text())
    jaffe = json.loads((out / "on_jaffe" / "metrics.json").read_text())
    faces_m = json.loads((out / "on_faces" / "metrics.json").read_text())
    assert jaffe["n_test"] == 2 * 7 * 3 and jaffe["class_names"] == list(SEVEN)  # every image of the other set
    assert faces_m["n_test"] == 36 and faces_m["class_names"] == ["happiness", "neutral", "sadness"]
    assert faces_m["cross_dataset"]["source"] == source["dataset"] == "synthetic"
    summary = (out / "summary.md").read_text()
    assert "| synthetic | " in summary and "faces" in summary

    text = (report([out]) / "report.md").read_text()
    assert "## Cross-dataset accuracy" in text and "| trained on \\ tested on | synthetic | faces |" in text
    cells = {(c["source"], c["target"]): c for c in rows(out / "cross_matrix.csv")}
    assert set(cells) == {("synthetic", "synthetic"), ("synthetic", "faces"), ("synthetic", "synthetic (other data)")}
    assert float(cells[("synthetic", "faces")]["acc"]) == round(100 * faces_m["test/acc"], 2)
    assert int(cells[("synthetic", "faces")]["n_classes"]) == 3
    assert (out / "cross_matrix_deep.png").is_file()
    assert "| deep | 1 |" in text  # Table 2: the source's own test only, not the cross-dataset runs
