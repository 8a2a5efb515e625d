"""Cross-fitted late-fusion weights (model.weights=crossfit, model.fit_on=crossfit): out-of-fold predictions of the
training images by each member's runs on inner folds, the weights fitted there."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fer_lightning.data.splits import inner_split, paper_split
from fer_lightning.errors import FERError
from fer_lightning.models.components.fusion import LikelihoodWeights
from fer_lightning.models.late_fusion import EnsembleFER, LateFusionFER, crossfit_folds, out_of_fold_probs
from fer_lightning.models.registry import MODELS

from .test_late_fusion import CLASSES, TinyNet, _members, _save, run_job


@pytest.fixture(autouse=True)
def tiny_model(monkeypatch):
    monkeypatch.setitem(MODELS._entries, "tiny_test", TinyNet)


def _indexed_faces(n: int) -> torch.Tensor:
    """``(n, 1, 8, 8)`` uint8 noise whose first two pixels spell the image's index (a memoriser can look it up)."""
    x = torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    x[:, 0, 0, 0], x[:, 0, 0, 1] = torch.arange(n) % 256, torch.arange(n) // 256
    return x


def _index(images: torch.Tensor) -> list[int]:
    return (images[:, 0, 0, 0].long() + 256 * images[:, 0, 0, 1].long()).tolist()


def _data(n: int = 90, seed: int = 3) -> SimpleNamespace:
    labels = [CLASSES[i % 3] for i in range(n)]
    split = paper_split(labels, seed=seed)
    return SimpleNamespace(split=split, labels=labels, subjects=[f"s{i}" for i in range(n)], seed=seed,
                           subject_independent=False, images=_indexed_faces(n),
                           targets=torch.tensor([i % 3 for i in range(n)]))


def test_out_of_fold_probabilities_come_from_runs_that_never_trained_on_those_images():
    data, folds = _data(), 3
    trained_on = [set(inner_split(data.split, data.labels, data.subjects, folds=folds, fold=i, seed=data.seed).train
                      .tolist()) for i in range(folds)]
    held = [set(inner_split(data.split, data.labels, data.subjects, folds=folds, fold=i, seed=data.seed).test
                .tolist()) for i in range(folds)]
    for i in range(folds):  # no leakage: a fold's run trains on none of the images it predicts
        assert not trained_on[i] & held[i] and trained_on[i] | held[i] == set(data.split.train.tolist())
    assert set().union(*held) == set(data.split.train.tolist()) and sum(map(len, held)) == len(data.split.train)

    def memoriser(train: set[int]):  # certain and right on the images it trained on, uniform on the others
        def probs(images: torch.Tensor) -> torch.Tensor:
            out = torch.full((len(images), 3), 1 / 3)
            for row, i in enumerate(_index(images)):
                if i in train:
                    out[row] = torch.nn.functional.one_hot(data.targets[i], 3).float()
            return out
        return probs

    def honest(images: torch.Tensor) -> torch.Tensor:  # 0.6 on the true class, seen or not
        return torch.nn.functional.one_hot(data.targets[_index(images)], 3).float() * 0.45 + 0.15

    oof_memo = out_of_fold_probs([memoriser(t) for t in trained_on], data.split, data.labels, data.subjects,
                                 data.images, seed=data.seed)
    oof_honest = out_of_fold_probs([honest] * folds, data.split, data.labels, data.subjects, data.images,
                                   seed=data.seed)
    train = torch.as_tensor(data.split.train)
    assert torch.equal(oof_memo, torch.full_like(oof_memo, 1 / 3))  # it never sees a memorised image
    assert torch.allclose(oof_honest, honest(data.images[train]))  # in the order of split.train
    targets = data.targets[train]
    crossfit = LikelihoodWeights()(torch.stack([oof_memo, oof_honest]), targets)
    in_sample = LikelihoodWeights()(torch.stack([memoriser(set(train.tolist()))(data.images[train]),
                                                 honest(data.images[train])]), targets)
    assert crossfit[1] > 0.6 > crossfit[0]  # the memoriser gains nothing out of fold ...
    assert in_sample[0] > 0.6 > in_sample[1]  # ... and everything on the images it was fitted on


def _fold_runs(tmp_path, seeds: dict[str, int], folds: int = 3) -> dict[str, list[str]]:
    runs = {}
    for name, seed in seeds.items():
        runs[name] = []
        for i in range(folds):
            _save(TinyNet(CLASSES, seed + 10 * i), tmp_path / f"{name}_oof{folds}" / f"fold{i}")
            runs[name].append(str(tmp_path / f"{name}_oof{folds}" / f"fold{i}"))
    return runs


def test_crossfit_weights_are_loglik_on_the_out_of_fold_predictions_and_equal_members_weigh_the_same(tmp_path):
    data = _data()
    runs = _fold_runs(tmp_path, {"m0": 0, "m1": 1})
    fusion = LateFusionFER(CLASSES, weights="crossfit", member_specs=_members(0, 1), crossfit_members=runs)
    fusion.prepare(data, "fit")
    oof = torch.stack([out_of_fold_probs([fusion._probs_of(TinyNet(CLASSES, s + 10 * i).eval()) for i in range(3)],
                                         data.split, data.labels, data.subjects, data.images, seed=data.seed)
                       for s in (0, 1)])
    expected = LikelihoodWeights()(oof, data.targets[torch.as_tensor(data.split.train)])
    torch.testing.assert_close(fusion.weights, expected.float())
    assert float(fusion.weights.sum()) == pytest.approx(1.0, abs=1e-6) and not torch.allclose(
        fusion.weights, torch.full((2,), 0.5))
    record = fusion.fit_record()
    assert record["fusion_weighting"] == "crossfit"
    assert record["fusion_fitted_on"] == f"crossfit (3 folds, {len(data.split.train)} training images)"
    # equal members (the same runs under two names): equal weights, whatever the weighting fitted on them
    for weights, fit_on in (("crossfit", "auto"), ("calibrated", "crossfit"), ("loglik", "crossfit")):
        twins = LateFusionFER(CLASSES, weights=weights, fit_on=fit_on, crossfit_members={"a": runs["m0"],
                                                                                         "b": runs["m0"]},
                              member_specs={"a": _members(0)["m0"], "b": _members(0)["m0"]})
        twins.prepare(data, "fit")
        torch.testing.assert_close(twins.weights, torch.full((2,), 0.5))
        torch.testing.assert_close(twins.temperatures[0], twins.temperatures[1])


def test_crossfit_without_the_members_inner_fold_runs_is_one_clear_error(tmp_path):
    for build in (lambda: EnsembleFER(CLASSES, members=["run0", "run1"], weights="crossfit"),
                  lambda: LateFusionFER(CLASSES, members={"a": "x", "b": "y"}, fit_on="crossfit")):
        with pytest.raises(FERError, match=r"model.crossfit_members=\{name: \[run with data.inner_folds=k") as e:
            build()
        assert "\n" not in str(e.value)
    runs = _fold_runs(tmp_path, {"m0": 0}, folds=2)  # runs of one member only, and 2 folds, not 3
    fusion = LateFusionFER(CLASSES, weights="crossfit", member_specs=_members(0, 1), crossfit_members=runs)
    with pytest.raises(FERError, match="model.crossfit_folds=3 runs of each of m0, m1"):
        fusion.prepare(_data(), "fit")


def test_the_crossfit_configs_compose_and_the_pipeline_plans_the_inner_fold_runs():
    from hydra import compose, initialize_config_dir

    from fer_lightning.engine.configs import config_dir
    from fer_lightning.engine.pipeline import _plan

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=fusion_weights"])
        plan = _plan(cfg)
        assert plan["lf_crossfit"] == {"backbone_from": None, "members": ["deep", "handcrafted"], "crossfit": 3}
        assert all(plan[s]["crossfit"] == 0 for s in plan if s != "lf_crossfit")
        lf = compose("train", overrides=["experiment=late_fusion", "pipeline.models.late_fusion.fit_on=crossfit",
                                         "pipeline.models.late_fusion.crossfit_folds=4"])
        assert _plan(lf)["late_fusion"]["crossfit"] == 4
        ens = compose("train", overrides=["model=ensemble", "model.weights=crossfit"])
        assert crossfit_folds(ens.model) == 3 and ens.model.crossfit_members is None
        bad = compose("train", overrides=["experiment=fusion_ablation", "pipeline.models.late_fusion.weights=crossfit",
                                          "pipeline.models.late_fusion.members=[deep,hybrid]"])
    with pytest.raises(FERError, match="stage\\(s\\) hybrid build on other stages and cannot be"):
        _plan(bad)  # a hybrid member needs the deep stage's backbone: its inner-fold runs would not be the member


@pytest.mark.slow
def test_a_crossfit_late_fusion_job_fits_loglik_on_its_members_inner_fold_predictions(tmp_path, cache_dir):
    import json

    from fer_lightning.runs.folder import RunFolder

    out = tmp_path / "job"
    small = ["data.image_size=32", "recipes.paper.finetune.max_epochs=1", "recipes.converged.head.max_epochs=2",
             "recipes.converged.augment.copies=1", "pipeline.models.deep.backbone.weights=none",
             "pipeline.models.late_fusion.weights=crossfit"]
    run_job("late_fusion", small, out, cache_dir)
    outer = RunFolder(out / "deep").read_splits()
    outer_train = {f for f, part in outer.items() if part == "train"}
    fused = json.loads((out / "late_fusion" / "metrics.json").read_text())
    assert fused["fusion_fitted_on"] == f"crossfit (3 folds, {len(outer_train)} training images)"
    nll = {}
    for member in ("deep", "handcrafted"):
        held_out, losses = set(), []
        for i in range(3):
            run = RunFolder(out / f"{member}_oof3" / f"fold{i}")
            parts = run.read_splits()
            train = {f for f, part in parts.items() if part == "train"}
            test = {f for f, part in parts.items() if part == "test"}
            assert test and train and not train & test and train | test == outer_train  # no leakage
            held_out |= test
            for row in run.read_predictions():  # what the fusion's weights were fitted on
                losses.append(-np.log(max(float(row[f"p_{row['true']}"]), np.finfo(np.float32).tiny)))
        assert held_out == outer_train and len(losses) == len(outer_train)  # every training image, once
        nll[member] = float(np.mean(losses))
    expected = torch.softmax(-torch.tensor([nll["deep"], nll["handcrafted"]], dtype=torch.float64), 0)
    weights = fused["fusion_weights"]
    assert sum(weights.values()) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose([weights["deep"], weights["handcrafted"]], expected.numpy(), atol=2e-5)
