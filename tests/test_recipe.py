"""recipe=modern: each training primitive does what its library says, on and off by config (issue #21).

MixUp/CutMix targets and images, the warmup + cosine rates against their formula, kornia's policies on grey and RGB
batches, the EMA of the weights (its value, what validation and the checkpoint evaluate with), gradual unfreezing
and the backbone's rate, every primitive off == recipe=paper, and exact resume with recipe=modern.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from fer_lightning.data.augment import RecipeAugment
from fer_lightning.engine.training import train
from fer_lightning.errors import FERError
from fer_lightning.models.components.optim import OptimSettings
from fer_lightning.models.components.recipe import BatchMixing, EMAWeights
from fer_lightning.models.deep import DeepFER

CLASSES = ("a", "b", "c")


def test_mixup_targets_sum_to_one_and_images_are_the_convex_combination():
    torch.manual_seed(0)
    images, labels = torch.rand(6, 1, 16, 16), torch.tensor([0, 1, 2, 0, 1, 2])
    mixed, targets = BatchMixing(3, mixup=0.4)(images, labels)
    assert torch.allclose(targets.sum(dim=1), torch.ones(6))
    lam = float(targets[0, 0])  # image 0 (class a) mixed with image 5 (class c, torchvision rolls the batch by one)
    assert 0 < lam < 1 and torch.allclose(targets[0], torch.tensor([lam, 0.0, 1 - lam]))
    assert torch.allclose(mixed, lam * images + (1 - lam) * images.roll(1, dims=0), atol=1e-6)


def test_cutmix_targets_are_the_pasted_area_and_pixels_come_from_the_two_images():
    torch.manual_seed(1)
    images, labels = torch.rand(4, 1, 20, 20), torch.tensor([0, 1, 2, 1])
    mixed, targets = BatchMixing(3, cutmix=1.0)(images, labels)
    assert torch.allclose(targets.sum(dim=1), torch.ones(4))
    own = (mixed == images).all(dim=1)  # (B, H, W): pixels kept from the image itself
    pasted = (mixed == images.roll(1, dims=0)).all(dim=1)
    assert bool((own | pasted).all())
    keep = own[0].float().mean()  # image 0 (class a) receives a box of image 3 (class b)
    assert torch.allclose(targets[0], torch.stack([keep, 1 - keep, torch.tensor(0.0)]), atol=1e-6)
    assert 0 < float(keep) < 1


def test_both_mixings_draw_one_of_them_per_batch():
    torch.manual_seed(2)
    mix, images, labels = BatchMixing(3, mixup=0.2, cutmix=1.0), torch.rand(4, 1, 12, 12), torch.tensor([0, 1, 2, 0])
    kinds = set()
    for _ in range(30):
        mixed, _ = mix(images, labels)
        pixelwise = ((mixed == images) | (mixed == images.roll(1, dims=0))).all()
        kinds.add("cutmix" if bool(pixelwise) else "mixup")
    assert kinds == {"cutmix", "mixup"}


@pytest.mark.parametrize(("warmup", "start", "epochs"), [(0, 0.1, 5), (2, 0.1, 8), (3, 0.01, 10)])
def test_warmup_then_cosine_rates_match_the_formula(warmup, start, epochs):
    settings = OptimSettings(lr=0.5, scheduler="warmup_cosine", warmup_epochs=warmup, warmup_start=start)
    config = settings.configure([torch.nn.Parameter(torch.zeros(2))], max_epochs=epochs)
    opt, sched = config["optimizer"], config["lr_scheduler"]
    assert config["lr_scheduler"]["interval"] == "epoch"
    rates = []
    for _ in range(epochs):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched["scheduler"].step()
    for e, rate in enumerate(rates):
        if e < warmup:
            expected = 0.5 * (start + (1 - start) * e / warmup)
        else:
            expected = 0.5 * (1 + math.cos(math.pi * (e - warmup) / (epochs - warmup))) / 2
        assert rate == pytest.approx(expected, rel=1e-6, abs=1e-9), e


def test_new_options_are_checked_in_one_line():
    with pytest.raises(FERError, match=r"model.optim.auto_augment=rnd is unknown"):
        OptimSettings.from_config({"auto_augment": "rnd"})
    with pytest.raises(FERError, match=r"model.optim.ema=1.0"):
        OptimSettings.from_config({"ema": 1.0})
    with pytest.raises(FERError, match=r"model.optim.unfreeze_epoch=-1"):
        OptimSettings.from_config({"unfreeze_epoch": -1})


@pytest.mark.parametrize("policy", ["rand", "trivial"])
@pytest.mark.parametrize("channels", [1, 3])
def test_auto_augment_and_erasing_work_on_grey_and_rgb_batches(policy, channels):
    torch.manual_seed(0)
    grey = torch.rand(8, 1, 24, 24)
    x = grey.expand(-1, channels, -1, -1).contiguous()
    for _ in range(5):  # several draws of the policy's operations
        out = RecipeAugment(policy, erasing=1.0)(x)
        assert out.shape == x.shape and bool(out.min() >= 0) and bool(out.max() <= 1)
        assert not torch.equal(out, x)
        if channels == 3:  # grey faces as RGB stay grey
            assert torch.allclose(out[:, 0], out[:, 1], atol=1e-5) and torch.allclose(out[:, 0], out[:, 2], atol=1e-5)
    erased = RecipeAugment("none", erasing=1.0)(torch.ones(4, 1, 24, 24) * 0.5)
    assert bool((erased == 0).any(dim=(1, 2, 3)).all())  # every image has its rectangle of zeros


# ---------------------------------------------------------------- tiny fits with Lightning (random-init backbone)
def batches(n: int, seed: int, size: int = 32) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    items = [{"image": torch.rand(1, size, size, generator=g), "label": torch.tensor(i % 3), "index": torch.tensor(i)}
             for i in range(n)]
    return DataLoader(items, batch_size=4)


class Record(pl.Callback):
    """Per epoch: the optimiser's group rates, whether the backbone trains, and a backbone weight."""

    def __init__(self) -> None:
        self.epochs: list[dict] = []
        self.steps: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.steps.append(pl_module.head[-1].weight.detach().clone())
        self.bn_training = [m.training for m in pl_module.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]

    def on_train_epoch_end(self, trainer, pl_module):
        self.epochs.append({
            "lrs": [g["lr"] for g in trainer.optimizers[0].param_groups], "bn_training": self.bn_training,
            "backbone_trains": all(p.requires_grad for p in pl_module.backbone.parameters()),
            "backbone_weight": next(pl_module.backbone.parameters()).detach().clone()})


def fit(tmp_path: Path, epochs: int, **optim) -> tuple[DeepFER, pl.Trainer, Record]:
    torch.manual_seed(0)
    model = DeepFER(CLASSES, backbone={"weights": "none"}, optim=optim)
    record = Record()
    trainer = pl.Trainer(max_epochs=epochs, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path, num_sanity_val_steps=0, deterministic=True,
                         callbacks=[record, pl.callbacks.ModelCheckpoint(tmp_path, save_last=True)])
    trainer.fit(model, batches(12, 0), batches(8, 1))
    return model, trainer, record


def test_ema_is_the_moving_average_and_what_validation_and_the_checkpoint_evaluate(tmp_path):
    decay = 0.9
    model, trainer, record = fit(tmp_path, 2, ema=decay)
    ema = next(c for c in trainer.callbacks if isinstance(c, EMAWeights))._average_model.module
    # torch's EMA, step by step, of a head weight: the first step copies, then d * old + (1 - d) * new with the
    # decay warmed up, d = min(decay, (1 + n) / (10 + n)) after n updates
    expected = record.steps[0]
    for n, w in enumerate(record.steps[1:], start=1):
        d = min(decay, (1 + n) / (10 + n))
        expected = d * expected + (1 - d) * w
    assert torch.allclose(ema.head[-1].weight, expected, atol=1e-6)
    assert not torch.allclose(expected, record.steps[-1])  # the average differs from the raw weights
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert all(torch.equal(v, ema.state_dict()[k]) for k, v in ckpt["state_dict"].items())
    assert any(not torch.equal(v, ckpt["current_model_state"][k]) for k, v in ckpt["state_dict"].items())
    # evaluating the checkpoint == evaluating the EMA model
    images = next(iter(batches(8, 1)))["image"]
    loaded = DeepFER.from_checkpoint(tmp_path / "last.ckpt").eval()
    with torch.no_grad():
        assert torch.equal(loaded(images), ema.eval()(images))
    # validation while fitting ran on the averaged weights: its loss is the EMA model's
    with torch.no_grad():
        val = torch.cat([b["image"] for b in batches(8, 1)]), torch.cat([b["label"] for b in batches(8, 1)])
        loss = torch.nn.functional.cross_entropy(ema(val[0]), val[1])
    assert float(trainer.callback_metrics["val/loss"]) == pytest.approx(float(loss), rel=1e-5)


def test_ema_forgets_the_starting_weights_in_a_short_fit(tmp_path):
    # decay 0.99 over 12 steps: without the warmed-up decay the average would stay ~90% the first step's weights
    _, trainer, record = fit(tmp_path, 4, ema=0.99, lr=1e-2)
    ema = next(c for c in trainer.callbacks if isinstance(c, EMAWeights))._average_model.module.head[-1].weight
    first, last = record.steps[0], record.steps[-1]
    assert (ema - last).norm() < 0.5 * (ema - first).norm()


def test_gradual_unfreezing_at_the_given_epoch_with_the_backbone_rate(tmp_path):
    _, _, record = fit(tmp_path, 4, unfreeze_epoch=2, backbone_lr_factor=0.1, lr=1e-3, scheduler="warmup_cosine",
                       warmup_epochs=1)
    first = record.epochs[0]["backbone_weight"]
    for e, seen in enumerate(record.epochs):
        if e < 2:  # frozen: one group, backbone untouched
            assert not seen["backbone_trains"] and len(seen["lrs"]) == 1
            assert not any(seen["bn_training"])  # BatchNorm frozen as validation sees it: running statistics
            assert torch.equal(seen["backbone_weight"], first)
        else:  # unfrozen at epoch 2, in a group at 0.1 x the head's (scheduled) rate
            assert seen["backbone_trains"] and len(seen["lrs"]) == 2 and all(seen["bn_training"])
            assert seen["lrs"][1] == pytest.approx(0.1 * seen["lrs"][0], rel=1e-6)
            assert not torch.equal(seen["backbone_weight"], first)


def test_backbone_rate_without_unfreezing_is_a_group_from_the_start(tmp_path):
    _, trainer, record = fit(tmp_path, 1, backbone_lr_factor=0.1, lr=1e-3)
    assert record.epochs[0]["lrs"] == pytest.approx([1e-3, 1e-4])
    assert not any(isinstance(c, EMAWeights) for c in trainer.callbacks)


def test_primitives_that_do_not_apply_say_so(tmp_path):
    model = DeepFER(CLASSES, backbone={"weights": "none", "trainable": False}, optim={"unfreeze_epoch": 1})
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    with pytest.raises(FERError, match="need a model with a trainable backbone"):
        trainer.fit(model, batches(4, 0))


# ---------------------------------------------------------------- through the training command
OFF = ["recipe.finetune.mixup=0", "recipe.finetune.cutmix=0", "recipe.finetune.auto_augment=none",
       "recipe.finetune.erasing=0", "recipe.finetune.ema=0", "recipe.finetune.unfreeze_epoch=0",
       "recipe.finetune.backbone_lr_factor=1.0", "recipe.finetune.label_smoothing=0", "recipe.finetune.scheduler=none",
       "recipe.finetune.optimizer=adam", "recipe.finetune.lr=1e-4", "recipe.finetune.weight_decay=0",
       "recipe.finetune.patience=10"]
FAST = ["data.image_size=32", "logger=none", "callbacks.training_pictures=null"]


def outcome(out: Path) -> tuple[dict, bytes]:
    m = json.loads((out / "metrics.json").read_text())
    keep = {k: v for k, v in m.items() if k.startswith(("test/", "val/")) or k in ("confusion_matrix", "epochs")}
    return keep, (out / "predictions.csv").read_bytes()


@pytest.mark.slow
def test_modern_with_every_primitive_off_gives_the_numbers_of_recipe_paper(make_cfg, tmp_path):
    train(make_cfg(*FAST, "recipe=paper", out=tmp_path / "paper"))
    train(make_cfg(*FAST, "recipe=modern", *OFF, out=tmp_path / "off"))
    assert outcome(tmp_path / "paper") == outcome(tmp_path / "off")
    train(make_cfg(*FAST, "recipe=modern", *OFF, "recipe.finetune.mixup=0.2", out=tmp_path / "mixup"))
    assert outcome(tmp_path / "mixup") != outcome(tmp_path / "paper")  # one primitive on changes the numbers


class Interrupt(pl.Callback):
    """Stops a fit (an exception) when epoch ``epoch`` starts, after ``last.ckpt`` of the epoch before."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("interrupted by the test")


@pytest.mark.slow
def test_exact_resume_with_recipe_modern(make_cfg, tmp_path):
    settings = [*FAST, "recipe=modern", "trainer.max_epochs=3", "callbacks.early_stopping=null",
                "recipe.finetune.unfreeze_epoch=1", "recipe.finetune.warmup_epochs=1",
                # every primitive on (the chosen defaults turn most off)
                "recipe.finetune.ema=0.9", "recipe.finetune.mixup=0.2", "recipe.finetune.cutmix=1.0",
                "recipe.finetune.auto_augment=trivial", "recipe.finetune.erasing=0.25"]
    train(make_cfg(*settings, out=tmp_path / "whole"))
    stop = ["+callbacks.interrupt._target_=tests.test_recipe.Interrupt", "+callbacks.interrupt.epoch=2"]
    with pytest.raises(RuntimeError, match="interrupted by the test"):
        train(make_cfg(*settings, *stop, out=tmp_path / "cut"))
    last = tmp_path / "cut" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["epoch"] == 1  # after the unfreezing, with EMA state inside
    train(make_cfg(*settings, f"ckpt_path={last}", out=tmp_path / "cut"))
    assert outcome(tmp_path / "whole") == outcome(tmp_path / "cut")
    a, b = (torch.load(d / "checkpoints" / "last.ckpt", weights_only=True) for d in (tmp_path / "whole",
                                                                                    tmp_path / "cut"))
    for key in ("state_dict", "current_model_state"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key])


def _compose(*overrides: str) -> dict:
    """The composed config's recipe, model and pipeline nodes, resolved."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from fer_lightning.engine.configs import config_dir

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides))
    return {k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg.get(k)) else cfg.get(k)
            for k in ("recipe", "recipes", "model", "pipeline", "optimized_metric")}


def test_every_recipe_section_sets_every_key_and_modern_reaches_the_models():
    from dataclasses import fields

    keys = {f.name for f in fields(OptimSettings)}
    for recipe in ("paper", "converged", "modern"):
        cfg = _compose(f"recipe={recipe}", "model=deep")
        for section in ("finetune", "head"):
            assert set(cfg["recipe"][section]) == keys, (recipe, section)
            OptimSettings.from_config(cfg["recipe"][section])
        assert cfg["model"]["optim"] == cfg["recipe"]["finetune"]
    paper = _compose("recipe=paper", "model=deep")["model"]["optim"]
    assert not OptimSettings.from_config(paper).augments_images and paper["ema"] == 0 and paper["unfreeze_epoch"] == 0
    modern = _compose("recipe=modern", "model=deep", "recipe.finetune.mixup=0.2")["model"]["optim"]
    assert modern["mixup"] == 0.2 and modern["cutmix"] == 0 and modern["label_smoothing"] > 0


def test_the_modern_experiment_trains_deep_and_handcrafted_with_the_recipe_and_fuses_with_the_mean():
    cfg = _compose("experiment=modern")
    models, recipe = cfg["pipeline"]["models"], cfg["recipes"]["modern"]
    assert list(models) == ["deep", "handcrafted", "late_fusion"]
    assert models["deep"]["optim"] == recipe["finetune"] and models["handcrafted"]["optim"] == recipe["head"]
    assert models["handcrafted"]["augment"]["copies"] == recipe["augment"]["copies"] == 8
    assert models["late_fusion"]["members"] == ["deep", "handcrafted"] and models["late_fusion"]["weights"] == "mean"
    assert cfg["optimized_metric"] == "late_fusion/val/acc"
