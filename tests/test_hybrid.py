"""The hybrid (fusion) model and the paper's whole pipeline."""

import csv
import json

import pytest
import torch

from fer_lightning.data.classes import CLASS_NAMES
from fer_lightning.engine.training import train
from fer_lightning.models.backbone import MobileNetV2Backbone, load_mobilenet_v2
from fer_lightning.models.hybrid import HybridFER

from .conftest import run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def backbone_file(tmp_path_factory):
    """A MobileNetV2 state dict with known weights (random init, seeded)."""
    torch.manual_seed(123)
    path = tmp_path_factory.mktemp("weights") / "mnv2.pth"
    torch.save(load_mobilenet_v2("none").state_dict(), path)
    return path


def test_fast_dev_run(make_cfg):
    m = train(make_cfg("model=hybrid", "trainer.fast_dev_run=true"))
    assert m["model"] == "hybrid" and m["n_test"] == 16


def test_frozen_backbone_round_trip_and_cache(make_cfg, tmp_path, backbone_file, monkeypatch):
    m = train(make_cfg("model=hybrid", f"model.backbone.weights={backbone_file}", "trainer.max_epochs=2"))
    ckpt = torch.load(m["best_checkpoint"], weights_only=True)
    # frozen: every backbone tensor, BatchNorm running statistics included, is exactly the file's
    source = torch.load(backbone_file, weights_only=True)
    for k, v in ckpt["state_dict"].items():
        if k.startswith("backbone.features."):
            assert torch.equal(v, source[k[len("backbone."):]]), k
    hp = ckpt["hyper_parameters"]
    assert hp["fitted_components"] >= 1 and hp["backbone"]["trainable"] is False

    # the checkpoint alone (no data, no cache, no weights file) reproduces the run's test probabilities
    backbone_file.rename(backbone_file.with_suffix(".moved"))
    try:
        model = HybridFER.from_checkpoint(m["best_checkpoint"]).eval()
    finally:
        backbone_file.with_suffix(".moved").rename(backbone_file)
    with open(tmp_path / "run" / "splits.csv") as f:
        test_files = [r["file"] for r in csv.DictReader(f) if r["split"] == "test"]
    with open(tmp_path / "run" / "predictions.csv") as f:
        preds = {r["file"]: [float(r[f"p_{c}"]) for c in CLASS_NAMES] for r in csv.DictReader(f)}
    from fer_lightning.data import JAFFEDataModule

    dm = JAFFEDataModule(root=None, image_size=64, cache_dir=make_cfg().data.cache_dir)
    dm.setup()
    names = [p.rsplit("/", 1)[-1] for p in dm.decoded.files]
    idx = torch.tensor([names.index(f) for f in test_files])
    with torch.no_grad():
        probs = model(dm.decoded.images[idx].float() / 255).softmax(-1)
    expected = torch.tensor([preds[f] for f in test_files])
    torch.testing.assert_close(probs, expected, atol=1e-5, rtol=0)

    # a second run with the same backbone reads the GAP features from the cache
    def boom(*a, **k):
        raise AssertionError("GAP features were computed again although they are cached")

    monkeypatch.setattr(MobileNetV2Backbone, "gap_features", boom)
    train(make_cfg("model=hybrid", f"model.backbone.weights={backbone_file}", "trainer.max_epochs=1",
                   out=tmp_path / "again"))


def test_trainable_backbone_is_fine_tuned(make_cfg, backbone_file):
    m = train(make_cfg("model=hybrid", f"model.backbone.weights={backbone_file}", "model.backbone.trainable=true",
                       "trainer.max_epochs=1", "callbacks.model_checkpoint.monitor=null"))
    assert m["best_checkpoint"]
    state = torch.load(m["best_checkpoint"], weights_only=True)["state_dict"]
    source = torch.load(backbone_file, weights_only=True)
    changed = [k for k, v in state.items() if k.startswith("backbone.features.")
               and not torch.equal(v, source[k[len("backbone."):]])]
    assert changed  # gradients reached the backbone through the fixed PCA


def test_backbone_checkpoint_must_be_a_deep_run(make_cfg, tmp_path):
    from fer_lightning.errors import FERError

    m = train(make_cfg("model=handcrafted", "trainer.max_epochs=1", out=tmp_path / "h"))
    with pytest.raises(FERError, match="holds a 'handcrafted' model; give the checkpoint of a model=deep run"):
        train(make_cfg("model=hybrid", f"model.backbone.checkpoint={m['best_checkpoint']}", out=tmp_path / "x"))


def test_paper_pipeline_cli(tmp_path, cache_dir):
    res = run_cli(
        "fer_lightning.train", "experiment=paper", "data.image_size=64", "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false", "pipeline.models.deep.backbone.weights=none",
        f"data.cache_dir={cache_dir}", f"hydra.run.dir={tmp_path / 'job'}", cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    job = tmp_path / "job"
    summary = json.loads((job / "summary.json").read_text())
    assert [r["model"] for r in summary["rows"]] == ["deep", "hybrid", "handcrafted"]
    md = (job / "summary.md").read_text()
    for label in ("MobileNetV2 (deep)", "Proposed (hybrid)", "LBP + HOG (handcrafted)"):
        assert label in md
    for stage in ("deep", "hybrid", "handcrafted"):
        m = json.loads((job / stage / "metrics.json").read_text())
        row = next(r for r in summary["rows"] if r["model"] == stage)
        assert row["acc"] == round(100 * m["test/acc"], 2) and m["model"] == stage
    hybrid_cfg = (job / "hybrid" / "config.yaml").read_text()
    assert str(job / "deep" / "checkpoints") in hybrid_cfg  # the hybrid fused the deep stage's backbone
    splits = {s: (job / s / "splits.csv").read_text() for s in ("deep", "hybrid", "handcrafted")}
    assert splits["deep"] == splits["hybrid"] == splits["handcrafted"]
