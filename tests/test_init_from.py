"""model.init_from: a deep or hybrid model starts from another run's fine-tuned backbone (head kept when the classes
match, re-initialised when they differ), refuses what it cannot use, applies only when training starts (a resume
equals the uninterrupted run) and is recorded in the checkpoint, metrics.json and run_info.json."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image
from pytorch_lightning.callbacks import Callback

from fer_lightning.data.synthetic import faces
from fer_lightning.engine.configs import config_dir
from fer_lightning.engine.pipeline import _stage_config
from fer_lightning.engine.training import train
from fer_lightning.errors import FERError
from fer_lightning.models.backbone import load_mobilenet_v2
from fer_lightning.models.deep import DeepFER
from fer_lightning.models.init_from import read_source, start_from
from fer_lightning.runs.folder import RunFolder

THREE = ["happiness", "neutral", "sadness"]
FEATS = {"hog": {"scales": [32]}, "lbp": {"scales": [32]}}
JAFFE7 = ["anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise"]
SMALL = ["data.image_size=32", "trainer.max_epochs=1", "logger=none", "callbacks.training_pictures=null"]


def fake_checkpoint(path: Path, model: torch.nn.Module, kind: str, classes: list[str]) -> Path:
    """A checkpoint as this framework writes it (state dict + our record), from a model built here."""
    torch.save({"state_dict": model.state_dict(), "fer_lightning": {"model": kind, "class_names": classes}}, path)
    return path


def deep(classes: list[str]) -> DeepFER:
    return DeepFER(classes, backbone={"weights": "none"})


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_backbone_loaded_and_head_reinitialised_when_classes_differ(tmp_path, caplog):
    source = deep(THREE)
    ckpt = fake_checkpoint(tmp_path / "s.ckpt", source, "deep", THREE)
    target = deep(JAFFE7)
    head_before = {k: v.clone() for k, v in target.head.state_dict().items()}
    assert not same(target.backbone.state_dict(), source.backbone.state_dict())
    with caplog.at_level(logging.INFO, logger="fer_lightning.models.init_from"):
        info = start_from(target, ckpt)
    assert same(target.backbone.state_dict(), source.backbone.state_dict())
    assert same(target.head.state_dict(), head_before)  # the fresh head, untouched
    assert info == {"checkpoint": str(ckpt), "model": "deep", "class_names": THREE, "loaded": ["backbone"],
                    "reinitialised": ["head"]}
    assert target.started_from == info
    [line] = [r.getMessage() for r in caplog.records if "model.init_from" in r.getMessage()]
    assert "loaded backbone" in line and "re-initialised head" in line and str(THREE) in line and str(JAFFE7) in line


def test_head_kept_when_classes_match_but_not_when_reordered_or_reshaped(tmp_path):
    source = deep(THREE)
    ckpt = fake_checkpoint(tmp_path / "s.ckpt", source, "deep", THREE)
    target = deep(THREE)
    assert start_from(target, ckpt)["loaded"] == ["backbone", "head"]
    assert same(target.state_dict(), source.state_dict())
    assert start_from(deep(THREE[::-1]), ckpt)["reinitialised"] == ["head"]  # same names, other order
    wider = DeepFER(THREE, backbone={"weights": "none"}, head={"hidden": [64]})
    assert start_from(wider, ckpt)["reinitialised"] == ["head"]


def test_hybrid_takes_the_backbone_and_fits_its_own_head(tmp_path):
    from fer_lightning.models.hybrid import HybridFER

    source = deep(THREE)
    ckpt = fake_checkpoint(tmp_path / "s.ckpt", source, "deep", THREE)
    target = HybridFER(THREE, FEATS, backbone={"weights": "none"})
    info = start_from(target, ckpt)
    assert info["loaded"] == ["backbone"] and info["reinitialised"][0].startswith("fusion head")
    assert same(target.backbone.state_dict(), source.backbone.state_dict())
    # a hybrid checkpoint is a source too: its backbone
    again = HybridFER(JAFFE7, FEATS, backbone={"weights": "none"})
    start_from(again, fake_checkpoint(tmp_path / "h.ckpt", target, "hybrid", THREE))
    assert same(again.backbone.state_dict(), source.backbone.state_dict())
    with pytest.raises(FERError, match="give one of them"):
        HybridFER(THREE, FEATS, backbone={"weights": "none", "checkpoint": str(ckpt)},
                  init_from=str(ckpt))


def test_refusals_are_one_line(tmp_path):
    from fer_lightning.models.handcrafted import HandcraftedFER

    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint")
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": deep(THREE).state_dict()}, foreign)  # no fer_lightning record
    handcrafted = HandcraftedFER(THREE, FEATS)
    no_backbone = fake_checkpoint(tmp_path / "hc.ckpt", handcrafted, "handcrafted", THREE)
    bad = deep(THREE).state_dict()
    bad["backbone.features.0.0.weight"] = torch.zeros(16, 3, 3, 3)  # another first convolution
    mismatch = tmp_path / "arch.ckpt"
    torch.save({"state_dict": bad, "fer_lightning": {"model": "deep", "class_names": THREE}}, mismatch)
    cases = {
        tmp_path / "missing.ckpt": "no such checkpoint file",
        text: "not a loadable PyTorch checkpoint",
        foreign: "not a fer-lightning checkpoint",
        no_backbone: "'handcrafted' model, which has no backbone",
        mismatch: r"not this model's MobileNetV2 \(backbone.features.0.0.weight is \(16, 3, 3, 3\)",
    }
    for path, why in cases.items():
        with pytest.raises(FERError, match=why) as e:
            start_from(deep(JAFFE7), path)
        assert "\n" not in str(e.value) and str(e.value).startswith("model.init_from=")
    with pytest.raises(FERError, match="has no backbone"):
        start_from(handcrafted, no_backbone)


def test_a_run_folder_means_its_best_checkpoint(tmp_path):
    run = RunFolder(tmp_path / "run")
    run.checkpoint_dir.mkdir(parents=True)
    with pytest.raises(FERError, match="model.init_from=.*a folder without checkpoints"):
        read_source(run.path)
    ckpt = fake_checkpoint(run.checkpoint_dir / "epoch_004.ckpt", deep(THREE), "deep", THREE)
    (run.checkpoint_dir / "last.ckpt").write_bytes(ckpt.read_bytes())
    assert run.best_checkpoint() == ckpt
    assert start_from(deep(THREE), run.path)["checkpoint"] == str(ckpt)
    later = fake_checkpoint(run.checkpoint_dir / "epoch_007.ckpt", deep(THREE), "deep", THREE)
    os.utime(ckpt, (1, 1))  # an unfinished run: its newest epoch checkpoint
    assert run.best_checkpoint() == later
    (run / "metrics.json").write_text(json.dumps({"best_checkpoint": "/moved/away/checkpoints/epoch_004.ckpt"}))
    assert run.best_checkpoint() == ckpt  # the one metrics.json names, found in this (moved) folder


def test_paper_and_loso_give_init_from_to_the_deep_stage_only(tmp_path):
    for experiment in ("paper", "loso"):
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            cfg = compose("train", overrides=[f"experiment={experiment}", "model.init_from=/runs/fer2013"])
        stages = {s: _stage_config(cfg, s, tmp_path).model for s in cfg.pipeline.models}
        assert stages["deep"].init_from == "/runs/fer2013"
        assert stages["hybrid"].init_from is None  # it fuses the deep stage's backbone, which started from there
        assert "init_from" not in stages["handcrafted"]
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            cfg = compose("train", overrides=[f"experiment={experiment}", "model.init_from=/runs/fer2013",
                                              "pipeline.hybrid_from_deep=false"])
        assert _stage_config(cfg, "hybrid", tmp_path).model.init_from == "/runs/fer2013"


# ------------------------------------------------------------------ end to end (slow)
def three_class_folder(root: Path) -> Path:
    """A generated ``data=folder`` set: happy/ sad/ neutral/ class folders of 32 px-ready synthetic faces."""
    folders = {"HA": "happy", "SA": "sad", "NE": "neutral"}
    for code, expr, k, image_id, arr in faces(n_subjects=6, per_expression=3, seed=1):
        if expr in folders:
            (root / folders[expr]).mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).resize((64, 64)).save(root / folders[expr] / f"{code}_{expr}{k}_{image_id}.png")
    return root


def compose_train(*overrides: str):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose("train", overrides=["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
                                           *overrides])


@pytest.fixture(scope="module")
def source_run(tmp_path_factory, cache_dir) -> Path:
    """A deep run (ImageNet start, fine-tuned one epoch) on a generated 3-class folder set; its run folder."""
    tmp = tmp_path_factory.mktemp("source")
    root = three_class_folder(tmp / "faces")
    out = tmp / "run"
    train(compose_train(*SMALL, "data=folder", f"data.root={root}", "data.split=paper", "data.test_size=9",
                        "data.val_size=6", f"data.cache_dir={cache_dir}", f"paths.output_dir={out}"))
    return out


class StopAtEpoch1(Callback):
    """Ctrl+C at the start of epoch 1."""

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == 1:
            raise KeyboardInterrupt


@pytest.mark.slow
def test_fine_tune_a_three_class_run_on_jaffe_seven(source_run, cache_dir, tmp_path, caplog):
    best = RunFolder(source_run).best_checkpoint()
    source = torch.load(best, weights_only=True)
    assert source["fer_lightning"]["class_names"] == THREE
    imagenet = load_mobilenet_v2("imagenet").features.state_dict()
    # the model as the run builds it (ImageNet weights), then started from the source: its fine-tuned backbone
    model = DeepFER(JAFFE7)
    start_from(model, source_run)
    loaded = model.backbone.features.state_dict()
    fine_tuned = {k[len("backbone.features."):]: v for k, v in source["state_dict"].items()
                  if k.startswith("backbone.features.")}
    assert same(loaded, fine_tuned)
    weights = [k for k in imagenet if k.endswith("weight")]
    assert not all(torch.equal(loaded[k], imagenet[k]) for k in weights)

    out = tmp_path / "jaffe"
    with caplog.at_level(logging.INFO, logger="fer_lightning.models.init_from"):
        m = train(compose_train(*SMALL, f"model.init_from={source_run}", f"data.cache_dir={cache_dir}",
                                f"paths.output_dir={out}"))
    assert any("re-initialised head" in r.getMessage() for r in caplog.records)
    assert m["init_from"] == str(best) and m["class_names"] == JAFFE7
    info = json.loads((out / "run_info.json").read_text())["init_from"]
    assert info["class_names"] == THREE and info["loaded"] == ["backbone"] and info["reinitialised"] == ["head"]
    record = torch.load(m["best_checkpoint"], weights_only=True)["fer_lightning"]
    assert record["init_from"]["checkpoint"] == str(best)


@pytest.mark.slow
def test_resume_with_init_from_equals_the_uninterrupted_run(source_run, cache_dir, tmp_path):
    moved = tmp_path / "source.ckpt"
    shutil.copy(RunFolder(source_run).best_checkpoint(), moved)
    settings = [*SMALL, "trainer.max_epochs=2", "callbacks.early_stopping=null", f"model.init_from={moved}",
                f"data.cache_dir={cache_dir}"]
    whole = tmp_path / "whole"
    train(compose_train(*settings, f"paths.output_dir={whole}"))
    cut = tmp_path / "cut"
    with pytest.raises(SystemExit):  # Lightning's answer to Ctrl+C, after epoch 0's last.ckpt
        train(compose_train(*settings, f"paths.output_dir={cut}", "+callbacks.stop._target_=" + __name__ +
                            ".StopAtEpoch1"))
    assert torch.load(cut / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0
    moved.unlink()  # a resume never reads the init_from checkpoint again
    m = train(compose_train(*settings, f"paths.output_dir={cut}", f"ckpt_path={cut / 'checkpoints' / 'last.ckpt'}"))
    assert m["init_from"] == str(moved)
    volatile = {"fit_seconds", "best_checkpoint"}
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (whole, cut))
    assert {k: v for k, v in a.items() if k not in volatile} == {k: v for k, v in b.items() if k not in volatile}
    assert (whole / "predictions.csv").read_bytes() == (cut / "predictions.csv").read_bytes()
    sa, sb = (torch.load(d / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"] for d in (whole, cut))
    assert same(sa, sb)


@pytest.mark.slow
def test_paper_pipeline_starts_its_deep_stage_from_init_from_and_the_hybrid_follows(source_run, cache_dir, tmp_path):
    from fer_lightning.engine.pipeline import run_pipeline

    best = str(RunFolder(source_run).best_checkpoint())
    out = tmp_path / "paper"
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=[
            "experiment=paper", *SMALL, "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
            "~pipeline.models.handcrafted", "pipeline.models.hybrid.backbone.weights=none",
            f"model.init_from={source_run}", f"data.cache_dir={cache_dir}", f"paths.output_dir={out}"])
    run_pipeline(cfg)
    deep_m, hybrid_m = (RunFolder(out / s).read_metrics() for s in ("deep", "hybrid"))
    assert deep_m["init_from"] == best and "init_from" not in hybrid_m
    hybrid_cfg = RunFolder(out / "hybrid").read_config()
    assert hybrid_cfg.model.backbone.checkpoint == deep_m["best_checkpoint"] and hybrid_cfg.model.init_from is None
    # the hybrid's frozen backbone is the deep stage's fine-tuned one, which started from the source's
    hybrid_state = torch.load(hybrid_m["best_checkpoint"], weights_only=True)["state_dict"]
    deep_state = torch.load(deep_m["best_checkpoint"], weights_only=True)["state_dict"]
    assert same({k: v for k, v in hybrid_state.items() if k.startswith("backbone.")},
                {k: v for k, v in deep_state.items() if k.startswith("backbone.")})


def test_a_wrong_init_from_is_refused_before_the_data_is_read(tmp_path, make_cfg):
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint")
    with pytest.raises(FERError, match=f"model.init_from={text}: not a loadable"):  # not data.root's error
        train(make_cfg("data=folder", f"data.root={tmp_path / 'no-such-folder'}", f"model.init_from={text}"))
    with pytest.raises(FERError, match="data.root"):  # and the same data without it fails on its data
        train(make_cfg("data=folder", f"data.root={tmp_path / 'no-such-folder'}"))
