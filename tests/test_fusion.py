"""Fusion options, recipes, inner folds and the selection on validation (issue: fusion that helps)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from sklearn.decomposition import PCA

from fer_lightning.data.splits import inner_split, loso_split, paper_split
from fer_lightning.engine.configs import config_dir
from fer_lightning.errors import FERError
from fer_lightning.models.components.fusion import FusionHead
from fer_lightning.models.components.optim import OptimSettings
from fer_lightning.reporting.document import report
from fer_lightning.reporting.tables import BEST_ON_VAL, paired_tests, select_on_validation
from fer_lightning.runs.survey import Run


@pytest.fixture(scope="module")
def blocks():
    """Three blocks of very different widths and scales, as GAP (1280-like), HOG (wide) and LBP (narrow) are."""
    g = torch.Generator().manual_seed(0)
    n = 60
    return {
        "deep": torch.randn(n, 40, generator=g, dtype=torch.float64).float() * 3 + 1,
        "hog": torch.randn(n, 400, generator=g, dtype=torch.float64).float() * 0.1,
        "lbp": torch.rand(n, 10, generator=g, dtype=torch.float64).float(),
    }


def _dims(blocks):
    return {k: v.shape[1] for k, v in blocks.items()}


def test_block_balance_gives_every_block_the_same_total_variance(blocks):
    head = FusionHead(_dims(blocks), 7, n_components=None, balance="block")
    width = head.fit(blocks)
    assert width == 450
    for name, x in blocks.items():
        total = head._block(name, x).double().var(0, correction=0).sum()
        assert math.isclose(float(total), 1.0, rel_tol=1e-4), name
    # without balancing a z-scored block's total variance is its number of dimensions: HOG outweighs LBP 40:1
    plain = FusionHead(_dims(blocks), 7, n_components=None)
    plain.fit(blocks)
    hog_total = plain._block("hog", blocks["hog"]).double().var(0, correction=0).sum()
    assert math.isclose(float(hog_total), 400, rel_tol=1e-4)


def test_per_block_pca_equals_sklearn_on_each_zscored_block(blocks):
    head = FusionHead(_dims(blocks), 7, n_components=None, per_block_pca=5)
    assert head.fit(blocks) == 15
    for name, x in blocks.items():
        z = (x.double() - x.double().mean(0)) / x.double().std(0, correction=0)
        ref = PCA(5, svd_solver="full").fit(z.numpy())
        ours = head.block_pca[name]
        np.testing.assert_allclose(ours.components.double().numpy(), ref.components_, atol=1e-4)
        np.testing.assert_allclose(ours(head.zscore[name](x)).double().numpy(), ref.transform(z.numpy()), atol=1e-3)


@pytest.mark.parametrize("options", [
    {"balance": "block"},
    {"balance": "block", "per_block_pca": 0.9, "n_components": None},
    {"per_block_pca": 6, "n_components": 8},
    {"n_components": None, "hidden": [], "dropout": [], "input_dropout": 0.0, "batchnorm": False},
])
def test_a_fitted_fusion_head_reloads_from_its_state_dict(blocks, options):
    head = FusionHead(_dims(blocks), 7, **options)
    width = head.fit(blocks)
    reloaded = FusionHead(_dims(blocks), 7, fitted_components=width, **options)
    reloaded.load_state_dict(head.state_dict())
    torch.testing.assert_close(reloaded.eval()(blocks), head.eval()(blocks))


def test_fusion_options_are_checked():
    with pytest.raises(FERError, match="model.fusion.balance=blocks is unknown"):
        FusionHead({"a": 3}, 2, balance="blocks")


def test_optim_settings_checked_and_configured():
    for bad, match in [({"lr": float("nan")}, "lr=nan"), ({"lr": 0}, "lr=0"), ({"weight_decay": -1}, "weight_decay"),
                       ({"max_epochs": 0}, "max_epochs"), ({"scheduler": "step"}, "scheduler=step"),
                       ({"optimiser": "adam"}, "unknown key"), ({"label_smoothing": 1.0}, "label_smoothing")]:
        with pytest.raises(FERError, match=match):
            OptimSettings.from_config(bad)
    params = [torch.nn.Parameter(torch.zeros(2))]
    assert isinstance(OptimSettings.from_config({}).configure(params), torch.optim.Adam)
    cos = OptimSettings.from_config({"optimizer": "adamw", "scheduler": "cosine", "weight_decay": 0.01}).configure(
        params, max_epochs=7)
    assert isinstance(cos["optimizer"], torch.optim.AdamW) and cos["lr_scheduler"]["scheduler"].T_max == 7
    plateau = OptimSettings.from_config({"scheduler": "plateau", "patience": 9}).configure(params)
    assert plateau["lr_scheduler"]["monitor"] == "val/loss" and plateau["lr_scheduler"]["scheduler"].patience == 3


def _compose(*overrides, hydra=False):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=hydra)


def _resolved(node):
    return OmegaConf.to_container(node, resolve=True)


def test_recipes_reach_models_trainer_and_early_stopping():
    paper = _compose("model=handcrafted")
    assert _resolved(paper.model.optim) == _resolved(paper.recipe.head) and paper.recipe.name == "paper"
    assert paper.trainer.max_epochs == 50 and paper.callbacks.early_stopping.patience == 10
    conv = _compose("model=handcrafted", "recipe=converged")
    assert conv.model.optim.lr == 1e-3 and conv.model.optim.scheduler == "cosine"
    assert conv.trainer.max_epochs == conv.recipe.head.max_epochs and conv.callbacks.early_stopping.patience == 30
    deep = _compose("model=deep", "recipe=converged")
    assert _resolved(deep.model.optim) == _resolved(deep.recipe.finetune)
    one = _compose("model=hybrid", "recipe=converged", "model.optim.lr=0.005", "model/head=linear")
    assert one.model.optim.lr == 0.005 and one.model.optim.patience == 30 and list(one.model.head.hidden) == []
    OptimSettings.from_config(_resolved(conv.model.optim))  # every recipe value passes the checks


def test_paper_experiment_keeps_the_paper_recipe_and_the_ablation_holds_every_variant():
    paper = _compose("experiment=paper")
    for stage in ("deep", "hybrid", "handcrafted"):
        assert paper.pipeline.models[stage].optim.lr == 1e-4 and paper.pipeline.models[stage].optim.max_epochs == 50
        assert paper.pipeline.models[stage].get("fusion", {}).get("balance", "none") == "none"
        assert paper.pipeline.models[stage].get("augment", {}).get("copies", 0) == 0
    abl = _compose("experiment=fusion_ablation", hydra=True)
    models = abl.pipeline.models
    assert list(models) == ["deep", "handcrafted", "hybrid", "handcrafted_converged", "handcrafted_linear",
                            "hybrid_converged", "hybrid_linear", "hybrid_block", "hybrid_perblock", "hybrid_oof",
                            "hybrid_e2e", "handcrafted_augmented", "hybrid_augmented", "late_fusion",
                            "late_fusion_augmented"]
    assert models.hybrid.optim.lr == 1e-4 and models.hybrid_converged.optim.lr == 1e-3
    assert list(models.hybrid_linear.head.hidden) == [] and list(models.hybrid_converged.head.hidden) == [512, 256]
    assert models.hybrid_block.fusion.balance == "block" and models.hybrid_perblock.pca.n_components is None
    assert models.hybrid_oof.backbone.oof_folds == 3 and models.hybrid_e2e.backbone.trainable is True
    assert models.hybrid_e2e.optim.lr == 1e-4 and list(models.late_fusion.members) == ["deep", "handcrafted_converged"]
    converged = _compose("model=handcrafted", "recipe=converged")
    assert converged.model.augment.copies == converged.recipe.augment.copies > 0
    assert _compose("model=hybrid").model.augment.copies == 0  # the paper's recipe: no copies
    assert _compose("model=hybrid_e2e", "recipe=converged").model.augment.copies == 0  # trainable: no copies
    for stage in ("handcrafted_augmented", "hybrid_augmented"):  # recipe=converged as it is
        assert _resolved(models[stage].optim) == _resolved(abl.recipes.converged.head)
        assert models[stage].augment.copies == abl.recipes.converged.augment.copies > 0
    for stage in ("handcrafted_converged", "hybrid_converged", "hybrid_block", "hybrid_oof"):  # the optimiser alone
        assert models[stage].augment.copies == 0
    assert models.hybrid_augmented.fusion.balance == "block"
    assert list(models.late_fusion_augmented.members) == ["deep", "handcrafted_augmented"]
    assert abl.hydra.callbacks.report._target_ == "fer_lightning.reporting.document.ReportWhenSweepEnds"
    assert abl.hydra.sweeper.params["data.seed"] == "range(10)"


def test_the_late_fusion_experiment_is_the_ablations_late_fusion_augmented():
    cfg = _compose("experiment=late_fusion", hydra=True)
    abl = _compose("experiment=fusion_ablation")
    models = cfg.pipeline.models
    assert list(models) == ["deep", "handcrafted", "late_fusion"]
    assert _resolved(models.deep) == _resolved(abl.pipeline.models.deep)
    assert _resolved(models.handcrafted) == _resolved(abl.pipeline.models.handcrafted_augmented)
    assert models.handcrafted.augment.copies == 8 and models.handcrafted.optim.lr == 1e-3
    assert list(models.late_fusion.members) == ["deep", "handcrafted"] and models.late_fusion.weights == "mean"
    assert abl.pipeline.models.late_fusion_augmented.weights == "loglik"  # the ablation keeps its weights
    assert cfg.optimized_metric == "late_fusion/val/acc"


def test_inner_folds_partition_the_training_part_only():
    rng = np.random.default_rng(0)
    labels = [f"c{i % 7}" for i in range(210)]
    subjects = [f"s{i % 10}" for i in rng.permutation(210)]
    for outer, by_subject in [(paper_split(labels, seed=3), False),
                              (loso_split(labels, subjects, fold=2, val_size=23), True)]:
        held = []
        for i in range(3):
            inner = inner_split(outer, labels, subjects, folds=3, fold=i, seed=3, by_subject=by_subject)
            assert np.array_equal(inner.val, outer.val)
            assert set(inner.train) | set(inner.test) == set(outer.train) and not set(inner.train) & set(inner.test)
            assert not set(inner.test) & set(outer.test)  # the outer test images are in no part
            if by_subject:
                assert not {subjects[j] for j in inner.test} & {subjects[j] for j in inner.train}
            held.append(set(inner.test.tolist()))
        assert set().union(*held) == set(outer.train.tolist()) and sum(map(len, held)) == len(outer.train)
    with pytest.raises(FERError, match="data.inner_fold=3 is out of range"):
        inner_split(paper_split(labels), labels, subjects, folds=3, fold=3)


def _run(variant, key, val_acc, test_acc, val_nll=0.5, correct=()):
    metrics = {"variant": variant, "model": variant, "dataset_fingerprint": "f", "split": "paper", "fold": None,
               "seed": key, "val/acc": val_acc, "val/nll": val_nll, "test/acc": test_acc}
    preds = [{"file": f"{i}.tiff", "true": "a", "predicted": "a" if i in correct else "b"} for i in range(4)]
    from pathlib import Path

    return Run(Path(f"/runs/{key}/{variant}"), metrics, preds)


def test_selection_uses_validation_only_and_breaks_ties_by_nll():
    runs = [
        _run("deep", 0, val_acc=0.80, test_acc=0.90),
        _run("hybrid", 0, val_acc=0.90, test_acc=0.70),  # best on validation, worse on test: still chosen
        _run("deep", 1, val_acc=0.85, test_acc=0.80, val_nll=0.4),
        _run("hybrid", 1, val_acc=0.85, test_acc=0.99, val_nll=0.6),  # tie on accuracy: the lower NLL wins
    ]
    chosen, counts = select_on_validation(runs)
    assert [(r.metrics["seed"], r.metrics["selected"], r.metrics["test/acc"]) for r in chosen] == [
        (0, "hybrid", 0.70), (1, "deep", 0.80)]
    assert all(r.model == BEST_ON_VAL for r in chosen) and counts == {"hybrid": 1, "deep": 1}


def test_runs_of_versions_with_other_fingerprints_pair_by_their_test_images():
    old = _run("deep", 0, 0.8, 0.75, correct=(0, 1, 2))
    new = _run("hybrid", 0, 0.9, 1.0, correct=(0, 1, 2, 3))
    new.metrics["dataset_fingerprint"] = "g"  # another version's fingerprint of the same images
    other = _run("late", 0, 0.95, 0.5, correct=(0, 1))
    other.metrics["dataset_fingerprint"] = "g"
    other.predictions = [{**p, "file": f"x{p['file']}"} for p in other.predictions]  # other test images
    runs = [old, new, other]
    assert paired_tests(runs, reference="deep") == []  # by fingerprint (the default) nothing is shared
    assert len(select_on_validation(runs)[0]) == 1  # ... and new and other share a test set
    for r in runs:
        r.match = "images"
    rows = paired_tests(runs, reference="deep")
    assert [(r["n_images"], r["a_wrong_b_right"]) for r in rows] == [(4, 1)]  # only new: same names
    chosen, counts = select_on_validation(runs)
    assert counts == {"hybrid": 1} and chosen[0].metrics["test/acc"] == 1.0 and chosen[0].match == "images"
    with pytest.raises(FERError, match="report.match=fingerprints is unknown"):
        report([], match="fingerprints")


def test_a_test_set_whose_runs_carry_two_fingerprints_is_named_with_the_way_out():
    from fer_lightning.reporting.document import split_fingerprints

    same = [_run("deep", 0, 0.8, 0.75), _run("hybrid", 0, 0.9, 1.0), _run("deep", 1, 0.8, 0.75)]
    assert split_fingerprints(same) == []
    copied = _run("hybrid", 1, 0.9, 1.0)
    copied.metrics.update(dataset="london-faces-256", dataset_fingerprint="g")  # the files copied again since
    same[2].metrics["dataset"] = "london-faces-256"
    (line,) = split_fingerprints([*same, copied])
    assert "london-faces-256 on 1 test set(s) carry different dataset fingerprints" in line
    assert "report.match=images" in line


def test_paired_tests_against_a_reference():
    runs = [_run(v, 0, 0.5, 0.5, correct=c) for v, c in
            [("deep", (0, 1, 2)), ("a", (0,)), ("b", (0, 1)), ("c", (3,)), ("d", (1, 2, 3))]]
    rows = paired_tests(runs, reference="deep")
    assert [(r["model_a"], r["model_b"]) for r in rows] == [("deep", "a"), ("deep", "b"), ("deep", "c"), ("deep", "d")]
    d = rows[-1]
    assert (d["a_right_b_wrong"], d["a_wrong_b_right"]) == (1, 1)
    assert len(paired_tests(runs)) == 10  # all pairs without a reference
