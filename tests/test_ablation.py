"""The fusion ablation pipeline end to end (reduced to eleven stages, 64 px, one epoch): out-of-fold features,
late fusion, selection on validation, and that no test image reaches anything fitted or chosen."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

import fer_lightning.data.datamodule as datamodule_mod
from fer_lightning.data.splits import inner_split, paper_split
from fer_lightning.engine.configs import config_dir
from fer_lightning.engine.pipeline import run_pipeline
from fer_lightning.reporting.tables import select_on_validation
from fer_lightning.runs.survey import find_runs

from .conftest import TINY

pytestmark = pytest.mark.slow
# every mechanism of the ablation's stages (the stages left out differ from these only in optimiser settings or
# head widths: handcrafted_converged, hybrid_converged, hybrid_linear, late_fusion)
STAGES = ["deep", "handcrafted", "hybrid", "handcrafted_linear", "hybrid_block", "hybrid_perblock", "hybrid_oof",
          "hybrid_e2e", "handcrafted_augmented", "hybrid_augmented", "late_fusion_augmented"]


def _cfg(out: Path, cache: Path):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=[
            *TINY, "experiment=fusion_ablation", "trainer.max_epochs=1", "pipeline.models.deep.backbone.weights=none",
            "pipeline.models.hybrid_oof.backbone.oof_folds=2",
            f"data.cache_dir={cache}", f"paths.output_dir={out}"])
    with open_dict(cfg):
        for stage in list(cfg.pipeline.models):
            if stage not in STAGES:
                del cfg.pipeline.models[stage]
    return cfg


@pytest.fixture(scope="module")
def ablation(tmp_path_factory):
    """The reduced ablation twice: as it is, and with every test image replaced by noise."""
    root = tmp_path_factory.mktemp("ablation")
    clean = run_pipeline(_cfg(root / "clean", root / "cache_clean"))
    real_decode = datamodule_mod.decode_store

    def corrupted(records, image_size, cache_dir, **kwargs):
        d = real_decode(records, image_size, cache_dir, **kwargs)
        test = paper_split(d.labels, test_size=57, val_size=23, seed=0).test
        g = torch.Generator().manual_seed(0)
        # the store is mapped copy-on-write: this process sees the noise, the file on disk stays clean
        d.images[torch.as_tensor(test)] = torch.randint(0, 256, (len(test), *d.images.shape[1:]), generator=g,
                                                        dtype=torch.uint8)
        return d

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(datamodule_mod, "decode_store", corrupted)
        dirty = run_pipeline(_cfg(root / "dirty", root / "cache_dirty"))
    return root, clean, dirty


def _state(path: str) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_no_test_image_reaches_any_variant(ablation):
    """Every stage's whole state (fine-tuned backbones, out-of-fold backbones, z-score / block PCA / block scale /
    PCA statistics, heads, late-fusion weights) is bit-identical whether or not the test images are noise, and so
    is the selection on validation; only test predictions change."""
    root, clean, dirty = ablation
    checkpoints = [(clean[f"{s}/best_checkpoint"], dirty[f"{s}/best_checkpoint"]) for s in STAGES]
    checkpoints += [(str(p), str(root / "dirty" / p.relative_to(root / "clean")))
                    for p in sorted((root / "clean" / "deep_oof2").rglob("epoch_*.ckpt"))]
    assert len(checkpoints) == len(STAGES) + 2
    for a_path, b_path in checkpoints:
        a, b = _state(a_path), _state(b_path)
        assert a.keys() == b.keys() and len(a) > 0, a_path
        for k in a:
            assert torch.equal(a[k], b[k]), (a_path, k)
    for s in STAGES:
        assert clean[f"{s}/val/acc"] == dirty[f"{s}/val/acc"] and clean[f"{s}/val/nll"] == dirty[f"{s}/val/nll"]
    picks = [select_on_validation(find_runs([root / run])[0])[0][0].metrics["selected"] for run in ("clean", "dirty")]
    assert picks[0] == picks[1]
    assert clean["deep/test/auroc"] != dirty["deep/test/auroc"]  # the corruption did reach the test set


def test_late_fusion_is_the_validation_weighted_mean_of_its_members(ablation):
    """late_fusion_augmented: the stages experiment=late_fusion runs (test_fusion checks they are the same)."""
    root, clean, _ = ablation
    job = root / "clean"
    nll = {m: clean[f"{m}/val/nll"] for m in ("deep", "handcrafted_augmented")}
    z = sum(math.exp(-v) for v in nll.values())
    weights = {m: math.exp(-v) / z for m, v in nll.items()}
    assert json.loads((job / "late_fusion_augmented" / "metrics.json").read_text())["n_test"] == 57
    fused = _rows(job / "late_fusion_augmented" / "predictions.csv")
    members = {m: {r["file"]: r for r in _rows(job / m / "predictions.csv")} for m in weights}
    classes = [k[2:] for k in fused[0] if k.startswith("p_")]
    for row in fused:
        expected = [sum(w * float(members[m][row["file"]][f"p_{c}"]) for m, w in weights.items()) for c in classes]
        np.testing.assert_allclose([float(row[f"p_{c}"]) for c in classes], expected, atol=2e-5)
    ckpt = torch.load(clean["late_fusion_augmented/best_checkpoint"], map_location="cpu", weights_only=True)
    np.testing.assert_allclose(ckpt["state_dict"]["weights"].numpy(), list(weights.values()), atol=1e-6)
    hand = torch.load(clean["handcrafted_augmented/best_checkpoint"], map_location="cpu", weights_only=True)
    assert hand["hyper_parameters"]["augment"] == {"copies": 8}  # recipe=converged's copies reached the model


def test_out_of_fold_features_come_from_backbones_that_never_saw_the_image(ablation):
    from fer_lightning.data.datamodule import JAFFEDataModule
    from fer_lightning.models.backbone import MobileNetV2Backbone
    from fer_lightning.models.hybrid import HybridFER

    root, clean, _ = ablation
    oof_dir = root / "clean" / "deep_oof2"
    ckpts = [str(next((oof_dir / f"fold{i}" / "checkpoints").glob("epoch_*.ckpt"))) for i in range(2)]
    dm = JAFFEDataModule(image_size=64, cache_dir=str(root / "cache_clean"))
    dm.setup()
    for i in range(2):  # each out-of-fold run trained without its held-out training images
        parts = {r["file"]: r["split"] for r in _rows(oof_dir / f"fold{i}" / "splits.csv")}
        held = inner_split(dm.split, dm.decoded.labels, dm.decoded.subjects, folds=2, fold=i, seed=0).test
        names = dm.file_names()
        assert {names[j] for j in held} == {f for f, p in parts.items() if p == "test"}
        assert {parts[names[j]] for j in dm.split.test} == {"unused"}  # the outer test images took no part
    hybrid = HybridFER(list(dm.class_names), {"hog": {"scales": [64]}, "lbp": {"scales": [64]}},
                       backbone={"weights": "none", "oof_folds": 2, "oof_checkpoints": ckpts})
    table = hybrid._out_of_fold(dm.model_data(), torch.zeros(len(dm.decoded.labels), 1280), torch.device("cpu"))
    for i, ckpt in enumerate(ckpts):
        held = torch.as_tensor(inner_split(dm.split, dm.decoded.labels, dm.decoded.subjects, folds=2, fold=i).test)
        fold_bb = MobileNetV2Backbone(weights="none", trainable=False, checkpoint=ckpt)
        torch.testing.assert_close(table[held], fold_bb.gap_features(dm.decoded.images[held], torch.device("cpu")))
    others = torch.as_tensor(np.concatenate([dm.split.val, dm.split.test]))
    assert torch.count_nonzero(table[others]) == 0  # validation and test rows keep the main backbone's features
