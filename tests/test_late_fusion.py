"""Late-fusion weightings (model.weights), model=ensemble and test-time augmentation (model.tta)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fer_lightning.errors import FERError
from fer_lightning.models.base import FERClassifier
from fer_lightning.models.components.fusion import (
    WEIGHTINGS,
    EqualWeights,
    LikelihoodWeights,
    ShrunkWeights,
    calibrate,
    fit_temperature,
)
from fer_lightning.models.components.tta import TTA_VIEWS, shifted, tta_probs
from fer_lightning.models.late_fusion import EnsembleFER, LateFusionFER
from fer_lightning.models.registry import MODELS
from fer_lightning.runs.checkpoints import FORMAT_KEY

CLASSES = ["anger", "happiness", "neutral"]


def _probs(seed: int = 0, m: int = 3, n: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(m, n, len(CLASSES), generator=g) * 2).softmax(-1), torch.randint(0, 3, (n,), generator=g)


def _faces(n: int, seed: int = 0) -> torch.Tensor:
    """Noise with a darker left third: images whose mirror images differ (``(n, 1, 32, 32)`` in [0, 1])."""
    x = torch.rand(n, 1, 32, 32, generator=torch.Generator().manual_seed(seed))
    x[..., :10] *= 0.3
    return x


class TinyNet(FERClassifier):
    """A small CNN member (registered as ``tiny_test`` for this module's tests): fast, and not mirror-invariant."""

    model_name = "tiny_test"

    def __init__(self, class_names: list[str], seed: int = 0) -> None:
        super().__init__(class_names)
        self.save_hyperparameters()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                                 nn.Linear(64, len(class_names)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images) * 5


@pytest.fixture(autouse=True)
def tiny_model(monkeypatch):
    monkeypatch.setitem(MODELS._entries, "tiny_test", TinyNet)


def _deep(seed: int) -> TinyNet:
    return TinyNet(CLASSES, seed).eval()


def _members(*seeds: int) -> dict:
    return {f"m{s}": {"model": "tiny_test", "hparams": dict(_deep(s).hparams), "module": _deep(s)} for s in seeds}


@pytest.mark.parametrize("name", list(WEIGHTINGS))
def test_every_weighting_gives_nonnegative_weights_that_sum_to_one(name):
    probs, targets = _probs()
    weighting = WEIGHTINGS.get(name)()
    w = weighting(calibrate(probs, weighting.temperatures(probs, targets)), targets)
    assert w.shape == (3,) and bool((w >= 0).all())
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-9)


def test_shrunk_weights_go_from_loglik_to_mean():
    probs, targets = _probs(1)
    loglik, mean = LikelihoodWeights()(probs, targets), EqualWeights()(probs, targets).double()
    assert torch.allclose(ShrunkWeights(1.0)(probs, targets), mean)
    assert torch.allclose(ShrunkWeights(0.0)(probs, targets), loglik)
    assert torch.allclose(ShrunkWeights(0.25)(probs, targets), 0.25 * mean + 0.75 * loglik)
    assert not torch.allclose(loglik, mean)  # the test can fail
    with pytest.raises(ValueError, match="shrinkage"):
        ShrunkWeights(1.5)


def test_the_fitted_temperature_minimises_the_held_out_nll():
    g = torch.Generator().manual_seed(2)
    targets = torch.randint(0, 3, (200,), generator=g)
    logits = torch.randn(1, 200, 3, generator=g) * 3 + torch.nn.functional.one_hot(targets, 3)  # over-confident
    probs = logits.softmax(-1)
    t = fit_temperature(probs[0], targets)
    grid = torch.exp(torch.linspace(0, 3, 601, dtype=torch.float64))
    nll = [float(torch.nn.functional.nll_loss(calibrate(probs, g.reshape(1))[0].double().log(), targets))
           for g in grid]
    assert 1 < t < 20 and t == pytest.approx(float(grid[int(np.argmin(nll))]), rel=1e-2)  # softened
    under = (logits / 10).softmax(-1)[0]  # the same, under-confident: sharpened
    assert fit_temperature(under, targets) == pytest.approx(t / 10, rel=1e-2)
    assert fit_temperature(probs[0], targets[:0]) == 1.0


def test_calibrated_fusion_is_the_mean_of_temperature_scaled_members_and_reloads():
    fusion = LateFusionFER(CLASSES, weights="calibrated", member_specs=_members(0, 1)).eval()
    g = torch.Generator().manual_seed(0)
    images = (_faces(16) * 255).to(torch.uint8)
    fusion.fit_weights(images, torch.randint(0, 3, (16,), generator=g))
    t = fusion.temperatures
    assert bool((t > 0).all()) and not torch.allclose(t, torch.ones(2))
    assert fusion.fit_record()["fusion_temperatures"] == pytest.approx(
        dict(zip(["m0", "m1"], t.tolist(), strict=True)), abs=1e-6)
    x = images.float() / 255
    with torch.no_grad():
        raw = torch.stack([m(x).softmax(-1) for m in fusion.members.values()])
        expected = calibrate(raw, t).mean(0)
        assert torch.allclose(fusion(x).exp(), expected, atol=1e-6)
        ckpt = {"state_dict": fusion.state_dict(), "hyper_parameters": dict(fusion.hparams)}
        fusion.on_save_checkpoint(ckpt)
        again = LateFusionFER.from_checkpoint(ckpt).eval()
        assert torch.equal(again.temperatures, t) and torch.allclose(again(x), fusion(x))


def test_uncalibrated_fusion_keeps_no_temperatures_in_its_checkpoint():
    fusion = LateFusionFER(CLASSES, weights="loglik", member_specs=_members(0, 1))
    assert "temperatures" not in fusion.state_dict() and "weights" in fusion.state_dict()


def _save(model: FERClassifier, run) -> None:
    ckpt = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}
    model.on_save_checkpoint(ckpt)
    (run / "checkpoints").mkdir(parents=True)
    torch.save(ckpt, run / "checkpoints" / "epoch_000.ckpt")


def test_an_ensemble_of_one_checkpoint_is_that_checkpoint(tmp_path):
    deep = _deep(0)
    _save(deep, tmp_path / "run0")
    ensemble = EnsembleFER(CLASSES, members=[str(tmp_path / "run0")]).eval()  # a run folder: its checkpoint
    assert list(ensemble.members) == ["run0"] and ensemble.hparams["weights"] == "mean"
    x = _faces(5)
    with torch.no_grad():
        np.testing.assert_allclose(ensemble(x).exp().numpy(), deep(x).softmax(-1).numpy(), rtol=0, atol=1e-6)


def test_an_ensemble_of_checkpoints_is_the_mean_of_their_probabilities(tmp_path):
    models = [_deep(s) for s in (0, 1)]
    for i, m in enumerate(models):
        _save(m, tmp_path / f"seed{i}")
    paths = [str(tmp_path / "seed0"), str(tmp_path / "seed1" / "checkpoints" / "epoch_000.ckpt")]
    ensemble = EnsembleFER(CLASSES, members=paths).eval()
    assert list(ensemble.members) == ["seed0", "seed1"]
    x = _faces(4)
    with torch.no_grad():
        expected = sum(m(x).softmax(-1) for m in models) / 2
        assert torch.allclose(ensemble(x).exp(), expected, atol=1e-6)
    with pytest.raises(FERError, match="model=late_fusion needs at least 2"):
        LateFusionFER(CLASSES, members=paths[:1])
    with pytest.raises(FERError, match="unknown|choose"):
        EnsembleFER(CLASSES, members=paths, tta="rotate")


def test_tta_of_a_mirror_symmetric_face_is_no_tta_and_flip_is_the_mean_of_face_and_mirror():
    fusion = LateFusionFER(CLASSES, weights="mean", member_specs=_members(0, 1), tta="flip").eval()
    assert fusion.hparams["tta"] == "flip"
    y = _faces(4)
    symmetric = (y + y.flip(-1)) / 2
    with torch.no_grad():
        flipped = {"sym": fusion(symmetric), "y": fusion(y)}
        fusion.tta = "none"
        torch.testing.assert_close(flipped["sym"], fusion(symmetric), rtol=0, atol=1e-6)
        expected = (fusion(y).exp() + fusion(y.flip(-1)).exp()) / 2
        torch.testing.assert_close(flipped["y"].exp(), expected, rtol=0, atol=1e-6)
        assert not torch.allclose(fusion(y), fusion(y.flip(-1)), atol=1e-4)  # the members are not mirror-invariant


def test_flip_shift_views_are_the_face_its_mirror_and_four_shifts():
    x = torch.rand(2, 1, 64, 64)
    views = TTA_VIEWS.get("flip_shift")(x)
    assert len(views) == 6 and all(v.shape == x.shape for v in views)
    torch.testing.assert_close(views[2][..., 2:, :], x[..., :-2, :])  # down by 2 px at 64 px
    torch.testing.assert_close(views[5][..., :, :-2], x[..., :, 2:])  # left by 2 px
    torch.testing.assert_close(shifted(x, 0, 0), x)
    f = lambda im: im.mean((1, 2)).softmax(-1)  # noqa: E731
    torch.testing.assert_close(tta_probs(f, x, "flip_shift"), torch.stack([f(v) for v in views]).mean(0))


def test_the_report_lists_each_fusion_runs_weights():
    from fer_lightning.reporting.tables import fusion_weights
    from fer_lightning.runs.survey import Run

    fused = {"model": "late_fusion", "dataset": "synthetic", "split": "paper", "fold": None, "seed": 3,
             "fusion_weighting": "calibrated", "fusion_fitted_on": "reserve (12 images)",
             "fusion_weights": {"deep": 0.5, "handcrafted": 0.5},
             "fusion_temperatures": {"deep": 0.61, "handcrafted": 1.7}}
    rows = fusion_weights([Run(Path("a"), fused), Run(Path("b"), {"model": "deep", "seed": 3})])
    assert rows == [{"model": "late_fusion", "dataset": "synthetic", "split": "paper", "fold": None, "seed": 3,
                     "weighting": "calibrated", "fitted_on": "reserve (12 images)",
                     "weights": "deep 0.500, handcrafted 0.500",
                     "temperatures": "deep 0.610, handcrafted 1.700"}]


@pytest.mark.slow
def test_an_ensemble_with_flip_tta_exports_to_onnx_with_the_same_probabilities(tiny_checkpoints, tmp_path):
    from fer_lightning.deploy.exported import ExportedModel
    from fer_lightning.deploy.exporters import export

    member = tiny_checkpoints["handcrafted"]
    ensemble = EnsembleFER(["anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise"],
                           members=[str(member)], tta="flip").eval()
    ckpt = {"state_dict": ensemble.state_dict(), "hyper_parameters": dict(ensemble.hparams)}
    ensemble.on_save_checkpoint(ckpt)
    ckpt[FORMAT_KEY]["preprocessing"] = torch.load(member, weights_only=True)[FORMAT_KEY]["preprocessing"]
    torch.save(ckpt, tmp_path / "ensemble.ckpt")
    path = export(tmp_path / "ensemble.ckpt", "onnx", tmp_path / "ensemble.onnx")["onnx"]
    faces = torch.randint(0, 256, (3, 1, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = ensemble(faces.float() / 255).exp().numpy()
    np.testing.assert_allclose(ExportedModel(path)(faces.numpy()), expected, rtol=0, atol=1e-4)
    assert ExportedModel(path).metadata["model"] == "ensemble"


def test_the_fusion_reserve_is_a_stratified_seeded_part_of_validation():
    from fer_lightning.data.splits import paper_split, reserve_for_fusion

    labels = [f"c{i % 7}" for i in range(210)]
    full = paper_split(labels, test_size=57, val_size=42, seed=4)
    part = reserve_for_fusion(full, labels, 0.5, seed=4)
    assert np.array_equal(part.train, full.train) and np.array_equal(part.test, full.test)
    assert len(part.reserve) == 21 and not set(part.val) & set(part.reserve)
    assert sorted([*part.val, *part.reserve]) == sorted(full.val)
    counts = np.bincount([int(labels[i][1]) for i in part.reserve], minlength=7)
    assert counts.min() >= 2 and counts.max() <= 4  # stratified: 3 of each class's 6
    assert np.array_equal(reserve_for_fusion(full, labels, 0.5, seed=4).reserve, part.reserve)
    assert not np.array_equal(reserve_for_fusion(full, labels, 0.5, seed=5).reserve, part.reserve)
    assert part.assignment(210).count("reserve") == 21 and full.assignment(210).count("reserve") == 0
    with pytest.raises(FERError, match="data.fusion_reserve"):
        reserve_for_fusion(full, labels, 40, seed=4)  # too few validation images left for every class


def test_a_late_fusion_fits_its_weights_on_the_reserved_images_when_there_are_some():
    from types import SimpleNamespace

    from fer_lightning.data.splits import Split

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, 1, 32, 32), dtype=torch.uint8, generator=g)
    targets = torch.randint(0, 3, (40,), generator=g)
    no = np.zeros(0, dtype=np.int64)
    val, reserve = np.arange(10, 25), np.arange(25, 40)

    def fitted(split: Split, fit_on: str = "auto") -> LateFusionFER:
        fusion = LateFusionFER(CLASSES, weights="loglik", member_specs=_members(0, 1, 2), fit_on=fit_on)
        fusion.prepare(SimpleNamespace(split=split, images=images, targets=targets), "fit")
        return fusion

    by_reserve, by_val = fitted(Split(np.arange(10), val, no, reserve)), fitted(Split(np.arange(10), val, no))
    expected = LateFusionFER(CLASSES, weights="loglik", member_specs=_members(0, 1, 2))
    torch.testing.assert_close(by_reserve.weights, expected.fit_weights(images[reserve], targets[reserve]))
    torch.testing.assert_close(by_val.weights, expected.fit_weights(images[val], targets[val]))
    assert not torch.allclose(by_reserve.weights, by_val.weights)
    record = by_reserve.fit_record()
    assert record["fusion_fitted_on"] == "reserve (15 images)" and by_val.fit_record()["fusion_fitted_on"] == (
        "val (15 images)")
    on_val = fitted(Split(np.arange(10), val, no, reserve), fit_on="val")  # the members' validation, as before
    torch.testing.assert_close(on_val.weights, by_val.weights)
    for fusion in (by_reserve, on_val):  # both scored on the reserve, which selected no member
        with torch.no_grad():
            fused = fusion(images[reserve].float() / 255).argmax(-1)
        accuracy = float((fused == targets[reserve]).float().mean())
        assert fusion.fit_record()["fusion_reserve_acc"] == pytest.approx(accuracy, abs=1e-6)
    assert "fusion_reserve_acc" not in by_val.fit_record()
    with pytest.raises(FERError, match="model.fit_on"):
        LateFusionFER(CLASSES, member_specs=_members(0, 1), fit_on="test")


def test_tta_on_a_single_deep_model_is_no_tta_for_a_mirror_symmetric_face_and_off_while_training():
    from fer_lightning.models.deep import DeepFER

    torch.manual_seed(0)
    plain = DeepFER(CLASSES, backbone={"weights": "none"}).eval()
    flip = DeepFER(CLASSES, backbone={"weights": "none"}, tta="flip").eval()
    # a small backbone that tells faces apart (a random MobileNetV2 gives every face about the same output)
    plain.backbone = flip.backbone = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
                                                   nn.Flatten(), nn.Linear(128, 1280))
    flip.head = plain.head
    assert flip.hparams["tta"] == "flip"
    y = _faces(3)
    symmetric = (y + y.flip(-1)) / 2
    with torch.no_grad():
        torch.testing.assert_close(flip(symmetric).softmax(-1), plain(symmetric).softmax(-1), rtol=0, atol=1e-6)
        expected = (plain(y).softmax(-1) + plain(y.flip(-1)).softmax(-1)) / 2
        torch.testing.assert_close(flip(y).exp(), expected, rtol=0, atol=1e-6)
        assert not torch.allclose(plain(y).softmax(-1), plain(y.flip(-1)).softmax(-1), atol=1e-4)
    flip.train()
    torch.manual_seed(1)
    trained = flip(y)
    plain.train()
    torch.manual_seed(1)
    torch.testing.assert_close(trained, plain(y))  # training sees each face once, as without TTA
    with pytest.raises(FERError, match="unknown|choose"):
        DeepFER(CLASSES, backbone={"weights": "none"}, tta="rotate")


@pytest.mark.slow
def test_a_deep_checkpoint_with_flip_tta_exports_to_onnx_with_the_same_probabilities(tiny_checkpoints, tmp_path):
    from fer_lightning.deploy.exported import ExportedModel
    from fer_lightning.deploy.exporters import export
    from fer_lightning.models.deep import DeepFER
    from fer_lightning.runs.checkpoints import read_checkpoint

    ckpt = read_checkpoint(tiny_checkpoints["deep"])
    ckpt["hyper_parameters"]["tta"] = "flip_shift"
    # ImageNet's backbone (the tiny run's random one gives every face about the same output)
    ckpt["state_dict"] = DeepFER(ckpt["hyper_parameters"]["class_names"], backbone={"weights": "imagenet"}).state_dict()
    torch.save(ckpt, tmp_path / "deep.ckpt")
    model = DeepFER.from_checkpoint(tmp_path / "deep.ckpt").eval()
    assert model.tta == "flip_shift"
    path = export(tmp_path / "deep.ckpt", "onnx", tmp_path / "deep.onnx")["onnx"]
    faces = torch.randint(0, 256, (3, 1, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(faces.float() / 255).exp().numpy()
        model.tta = "none"
        assert not np.allclose(model(faces.float() / 255).softmax(-1).numpy(), expected, atol=1e-4)
    np.testing.assert_allclose(ExportedModel(path)(faces.numpy()), expected, rtol=0, atol=1e-4)


QUIET = ["logger=none", "callbacks.training_pictures=null", "trainer.enable_progress_bar=false"]


def run_job(experiment: str, overrides: list[str], out: Path, cache_dir: Path) -> None:
    """A pipeline experiment (quiet, with these overrides) run into ``out``."""
    from hydra import compose, initialize_config_dir

    from fer_lightning.engine.configs import config_dir
    from fer_lightning.engine.pipeline import run_pipeline

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={experiment}", *overrides, *QUIET, f"data.cache_dir={cache_dir}",
                                          f"paths.output_dir={out}"])
    run_pipeline(cfg)


@pytest.mark.slow
def test_the_modern_experiment_runs_end_to_end_with_a_reserve_and_a_flip_tta_deep_member(tmp_path, cache_dir):
    import csv
    import json

    out = tmp_path / "job"
    small = ["data.image_size=48", "recipes.modern.finetune.max_epochs=2", "recipes.modern.finetune.warmup_epochs=1",
             "recipes.modern.finetune.unfreeze_epoch=1", "recipes.modern.head.max_epochs=3",
             "recipes.modern.head.warmup_epochs=1", "recipes.modern.augment.copies=1", "data.fusion_reserve=0.5",
             "pipeline.models.deep.backbone.weights=none", "pipeline.models.deep.tta=flip"]
    run_job("modern", small, out, cache_dir)
    assert [r["model"] for r in json.loads((out / "summary.json").read_text())["rows"]] == [
        "deep", "handcrafted", "late_fusion"]
    metrics = {s: json.loads((out / s / "metrics.json").read_text()) for s in ("deep", "handcrafted", "late_fusion")}
    parts = [r["split"] for r in csv.DictReader((out / "deep" / "splits.csv").open())]
    assert metrics["deep"]["n_val"] == parts.count("val") and parts.count("reserve") >= 7  # the members never saw it
    fused = metrics["late_fusion"]
    reserved = parts.count("reserve")
    assert fused["fusion_weighting"] == "mean" and fused["fusion_fitted_on"] == f"reserve ({reserved} images)"
    assert 0.0 <= fused["fusion_reserve_acc"] <= 1.0
    # the fusion's test probabilities are the mean of its members' (deep's own with flip TTA), as recorded
    probs = {s: np.array([[float(v) for k, v in row.items() if k.startswith("p_")]
                          for row in csv.DictReader((out / s / "predictions.csv").open())])
             for s in metrics}
    np.testing.assert_allclose(probs["late_fusion"], (probs["deep"] + probs["handcrafted"]) / 2, atol=2e-6)
