"""Heads on stored features never read the training images, so the data module does not augment them: it only draws
the augmentation's random numbers (:meth:`FaceAugment.draw`), and every number of a run stays what the full
augmentation gives."""

from __future__ import annotations

import functools
import json
from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from fer_lightning.data.augment import FaceAugment
from fer_lightning.engine.configs import config_dir
from fer_lightning.engine.training import train
from fer_lightning.models.handcrafted import HandcraftedFER
from fer_lightning.models.hybrid import HybridFER

from .conftest import TINY

VOLATILE = {"fit_seconds", "best_checkpoint"}
VARIANTS = [{}, {"hflip": 0.0}, {"hflip": 1.0}, {"brightness": 0.0}, {"p_affine": 0.5}, {"p_affine": 0.0},
            {"degrees": 0.0, "zoom": [1.0, 1.0]}, {"degrees": 40.0, "zoom": [0.5, 1.5], "brightness": 0.6}]


@functools.cache
def composed_augment(recipe: str) -> dict:
    """``data.augment`` as ``fer-train model=handcrafted recipe=<recipe>`` composes it."""
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=["model=handcrafted", f"recipe={recipe}"])
    return dict(instantiate(cfg.data.augment, _convert_="all"))  # callers copy it


@pytest.mark.parametrize("recipe", ["paper", "converged", "modern"])
@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: ",".join(f"{k}={x}" for k, x in v.items()) or "as-is")
def test_draw_takes_the_same_random_numbers_as_the_augmentation(recipe, variant):
    aug = FaceAugment(**{**composed_augment(recipe), **variant})
    saved = torch.get_rng_state()
    try:
        for batch, size in [(16, 64), (1, 32), (7, 48), (16, 64)]:  # in a row: the stream stays aligned
            x = torch.rand(batch, 1, size, size)
            before = x.clone()
            seed = int(torch.randint(2**31, ()))
            torch.manual_seed(seed)
            aug(x.clone())
            after_forward = torch.get_rng_state()
            torch.manual_seed(seed)
            aug.draw(x)
            assert torch.equal(torch.get_rng_state(), after_forward)
            assert torch.equal(x, before)  # no pixel touched
    finally:
        torch.set_rng_state(saved)


@pytest.mark.gpu
def test_draw_of_a_cuda_batch_takes_the_same_random_numbers_on_both_generators():
    aug, x = FaceAugment(**composed_augment("paper")), torch.rand(16, 1, 64, 64, device="cuda")
    with torch.random.fork_rng(devices=[x.device.index or 0]):
        states = []
        for step in (lambda: aug(x.clone()), lambda: aug.draw(x)):
            torch.manual_seed(3)
            step()
            states.append((torch.get_rng_state(), torch.cuda.get_rng_state(x.device)))
    assert all(torch.equal(a, b) for a, b in zip(*states, strict=True))


def test_which_models_read_the_training_images():
    names, blocks = ["anger", "happiness"], {"hog": {"scales": [32]}, "lbp": {"scales": [32]}}
    stored = SimpleNamespace(features={"hog@32": torch.zeros(4, 1)})  # the data module's precomputed blocks
    head = HandcraftedFER(names, blocks)
    assert head.reads_images  # no data yet (or a data module without blocks): computed from the batch's images
    head.data = stored
    assert not head.reads_images  # blocks precomputed in every batch
    online = HandcraftedFER(names, {**blocks, "source": "online"})
    online.data = stored
    assert online.reads_images  # computed from the batch's images
    frozen = HybridFER(names, blocks, backbone={"weights": "none"})
    frozen.data = stored
    assert frozen.reads_images  # its GAP table is not built yet: the backbone would read the images
    frozen.gap_table = torch.zeros(4, 1280)
    assert not frozen.reads_images
    trainable = HybridFER(names, blocks, backbone={"weights": "none", "trainable": True})
    trainable.data, trainable.gap_table = stored, torch.zeros(4, 1280)
    assert trainable.reads_images


def run(tmp_path, cache_dir, name: str, *overrides: str) -> tuple[dict, dict, torch.Tensor]:
    """A tiny handcrafted run: its metrics, its last weights and torch's random state when it ended."""
    out = tmp_path / name
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=[
            *TINY, "data.image_size=32", "model=handcrafted", "recipe=converged", "recipe.augment.copies=2",
            "callbacks.early_stopping=null", "logger=none", "callbacks.training_pictures=null",
            f"data.cache_dir={cache_dir}", f"paths.output_dir={out}", *overrides])
    saved = torch.get_rng_state()
    try:
        metrics = train(cfg)
        state = torch.get_rng_state()
    finally:
        torch.set_rng_state(saved)
    weights = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert json.loads((out / "metrics.json").read_text())["epochs"] == 2
    return {k: v for k, v in metrics.items() if k not in VOLATILE}, weights, state


@pytest.mark.slow
@pytest.mark.parametrize("loader", ["data.on_device=true", "data.on_device=false"])
def test_a_head_on_stored_features_skips_the_augmentation_and_every_number_stays(tmp_path, cache_dir, monkeypatch,
                                                                                 loader):
    calls = {"forward": 0, "draw": 0}
    forward, draw = FaceAugment.forward, FaceAugment.draw

    def counted(kind, real):
        def wrapper(self, x):
            calls[kind] += 1
            return real(self, x)
        return wrapper

    monkeypatch.setattr(FaceAugment, "forward", counted("forward", forward))
    monkeypatch.setattr(FaceAugment, "draw", counted("draw", draw))
    skipped = run(tmp_path, cache_dir, "skipped", loader)
    by_copies, batches = calls["forward"], calls["draw"]  # the augmented copies are made once, before training
    assert batches >= 2  # every training batch drew, none was augmented

    monkeypatch.setattr(HandcraftedFER, "reads_images", True)  # as before: every training batch augmented
    calls.update(forward=0, draw=0)
    full = run(tmp_path, cache_dir, "full", loader)
    assert calls == {"forward": by_copies + batches, "draw": 0}

    assert skipped[0] == full[0]
    assert sorted(skipped[1]) == sorted(full[1]) and all(torch.equal(skipped[1][k], full[1][k]) for k in full[1])
    assert torch.equal(skipped[2], full[2])  # whatever runs next draws the same numbers
