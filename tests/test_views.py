"""Augmented copies for heads on fixed features (``model.augment.copies``): seeded views of the training images
only, fitted layers fitted on them, one view per image and epoch drawn from (seed, epoch)."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate

from fer_lightning.data.augment import FaceAugment
from fer_lightning.errors import FERError
from fer_lightning.features.extractor import HandcraftedFeatures
from fer_lightning.features.views import AugmentedViews
from fer_lightning.models.handcrafted import HandcraftedFER
from fer_lightning.models.hybrid import HybridFER

CLASSES = ["anger", "happiness", "neutral"]
FEATURES = {"hog": {"scales": [32]}, "lbp": {"scales": [32]}}


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (12, 1, 32, 32), generator=g, dtype=torch.uint8)


def _views(images, rows=(0, 2, 3, 5, 7, 8), copies=3, seed=0):
    return AugmentedViews(images, list(rows), FaceAugment(), HandcraftedFeatures(**FEATURES), copies, seed,
                          batch_size=4)


def test_views_are_seeded_augmented_training_images_and_leave_the_global_generator_alone(images):
    ext = HandcraftedFeatures(**FEATURES)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = _views(images)
    assert torch.equal(torch.get_rng_state(), before)  # nothing else's random draws change
    b = _views(images)
    assert a.blocks.keys() == {"hog@32", "lbp@32"}
    for k in a.blocks:
        assert a.blocks[k].shape == (3, 6, ext.block_dims()[k])
        assert torch.equal(a.blocks[k], b.blocks[k])  # a resumed run rebuilds exactly the same views
    clean = ext(images[[0, 2, 3, 5, 7, 8]])
    for c in range(3):  # every copy is another augmentation of the same images, never the image itself
        assert not torch.equal(a.blocks["hog@32"][c], clean["hog@32"])
    assert not torch.equal(a.blocks["hog@32"][0], a.blocks["hog@32"][1])
    other = _views(images, seed=1)
    assert not torch.equal(other.blocks["hog@32"], a.blocks["hog@32"])
    # copy c of image i is the extractor's blocks of the augmentation drawn for it, in batches of any size
    assert torch.equal(_views(images, rows=[0, 2, 3, 5, 7, 8]).blocks["lbp@32"], a.blocks["lbp@32"])


def test_each_epoch_shows_every_image_as_one_view_drawn_from_seed_and_epoch(images):
    v = _views(images)
    index = torch.tensor([0, 2, 3, 5, 7, 8])
    draws = [v.view_of(index, e) for e in range(40)]
    assert all(((d >= 0) & (d <= 3)).all() for d in draws)
    assert torch.equal(v.view_of(index, 7), draws[7])  # the same epoch draws the same views, whenever asked
    fresh = _views(images)
    assert torch.equal(fresh.view_of(index, 7), draws[7])  # ... in another process (a resumed run) too
    assert torch.equal(v.view_of(index[[3, 1]], 7), draws[7][[3, 1]])  # per image, not per batch position
    counts = torch.bincount(torch.cat(draws), minlength=4)
    assert counts.min() > 0.15 * counts.sum()  # every view, the image itself included, is shown


def test_swap_puts_each_images_view_in_its_row(images):
    v = _views(images)
    index = torch.tensor([8, 0, 5, 3])
    blocks = {k: torch.zeros(4, t.shape[2]) for k, t in v.blocks.items()}
    blocks["other"] = torch.ones(4, 2)
    for epoch in range(6):
        out = v.swap(blocks, index, epoch)
        view = v.view_of(index, epoch)
        for j, (i, c) in enumerate(zip(index.tolist(), view.tolist(), strict=True)):
            for k in ("hog@32", "lbp@32"):
                expected = torch.zeros_like(blocks[k][j]) if c == 0 else v.blocks[k][c - 1, v.position[i]]
                assert torch.equal(out[k][j], expected)
        assert torch.equal(out["other"], blocks["other"])  # blocks without views are left alone
    assert torch.count_nonzero(blocks["hog@32"]) == 0  # the batch's own tensors are not modified
    with pytest.raises(ValueError, match="not a training image"):
        v.swap(blocks, torch.tensor([1, 0, 5, 3]), 0)  # image 1 is not a training image: it has no views


def test_fit_blocks_are_the_rows_then_every_copy_of_them(images):
    v = _views(images)
    ext = HandcraftedFeatures(**FEATURES)
    rows = [2, 7]
    clean = ext(images[rows])
    fit = v.fit_blocks(rows, {**clean, "deep": torch.ones(2, 5)})
    pos = v.position[rows]
    for k in clean:
        expected = torch.cat([clean[k], *[v.blocks[k][c, pos] for c in range(3)]])
        assert torch.equal(fit[k], expected)
    assert fit["deep"].shape == (8, 5)  # a block without views repeats its values
    with pytest.raises(ValueError, match="training images"):
        v.fit_blocks([1], {k: t[:1] for k, t in clean.items()})


def test_a_model_with_copies_fits_its_layers_on_them_and_trains_on_views(make_cfg):
    cfg = make_cfg("model=handcrafted", "model.augment.copies=2", "trainer.max_epochs=1")
    dm = instantiate(cfg.data, features=cfg.features)
    model = instantiate(cfg.model, class_names=list(dm.class_names))
    seen = []
    real_forward = model.fusion.forward

    def spy(blocks):
        if model.training:
            seen.append({k: v.clone() for k, v in blocks.items()})
        return real_forward(blocks)

    model.fusion.forward = spy
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(model, datamodule=dm)
    views = model.views
    assert views is not None and views.copies == 2
    train = sorted(int(i) for i in dm.split.train)
    assert sorted(views.rows.tolist()) == train
    outside = torch.as_tensor(list(dm.split.val) + list(dm.split.test))
    assert bool((views.position[outside] < 0).all())  # no validation or test image has a view
    data = dm.model_data()
    rows = data.fit_rows(model.fit_samples)
    fit = views.fit_blocks(rows, model.train_blocks(data, rows))
    for k, z in model.fusion.zscore.items():  # z-score fitted on the training images and their copies
        torch.testing.assert_close(z.mean, fit[k].mean(0))
    shown = torch.cat([b["hog@64"] for b in seen])
    table = dm.features["hog@64"]
    clean_rows = (shown[:, None, :] == table[None, train, :]).all(-1).any(-1)
    assert 0 < int(clean_rows.sum()) < len(shown)  # some images were shown as themselves, others as copies


def test_copies_that_would_not_fit_in_memory_are_refused(make_cfg, monkeypatch):
    import fer_lightning.models.handcrafted as handcrafted_mod

    cfg = make_cfg("model=handcrafted", "model.augment.copies=3")
    dm = instantiate(cfg.data, features=cfg.features)
    model = instantiate(cfg.model, class_names=list(dm.class_names))
    monkeypatch.setattr(handcrafted_mod, "MAX_VIEW_BYTES", 1000)
    with pytest.raises(FERError, match=r"model.augment.copies=3 needs .* GiB for the augmented copies of 130 "
                                       r"training images .* set model.augment.copies=0"):
        model._augmented_views(dm.model_data())


def test_copies_options_are_checked():
    with pytest.raises(FERError, match="model.augment.copies=-1"):
        HandcraftedFER(CLASSES, FEATURES, augment={"copies": -1})
    with pytest.raises(FERError, match="model.augment.copies=1.5"):
        HandcraftedFER(CLASSES, FEATURES, augment={"copies": 1.5})
    with pytest.raises(FERError, match="model.augment: unknown key"):
        HandcraftedFER(CLASSES, FEATURES, augment={"copy": 2})
    with pytest.raises(FERError, match="needs a frozen backbone"):
        HybridFER(CLASSES, FEATURES, backbone={"weights": "none", "trainable": True}, augment={"copies": 2})
    with pytest.raises(FERError, match="cannot be combined"):
        HybridFER(CLASSES, FEATURES, backbone={"weights": "none", "oof_folds": 2}, augment={"copies": 2})
    assert HandcraftedFER(CLASSES, FEATURES, augment={"copies": 0}).copies == 0
