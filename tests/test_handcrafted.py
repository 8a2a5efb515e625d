"""The handcrafted (LBP + HOG) model: training, cached features, train-only fitting, checkpoints."""

import json

import pytest
import torch

from fer_lightning.data import JAFFEDataModule
from fer_lightning.engine.training import train
from fer_lightning.features import HandcraftedFeatures
from fer_lightning.models.handcrafted import HandcraftedFER

pytestmark = pytest.mark.slow
FEATURES = {"hog": {"scales": [64]}, "lbp": {"scales": [64], "grid": [4, 4]}}


def test_fast_dev_run(make_cfg, tmp_path):
    m = train(make_cfg("model=handcrafted", "trainer.fast_dev_run=true"))
    assert m["model"] == "handcrafted" and m["n_test"] == 16


def test_trains_and_checkpoint_round_trip(make_cfg, tmp_path):
    m = train(make_cfg("model=handcrafted", "trainer.max_epochs=3"))
    out = tmp_path / "run"
    assert m["n_test"] == 57 and 0 <= m["test/acc"] <= 1
    ckpt = torch.load(m["best_checkpoint"], weights_only=True)
    k = ckpt["hyper_parameters"]["fitted_components"]
    assert 1 <= k <= 129 and ckpt["fer_lightning"]["model"] == "handcrafted"
    # loading needs no data and no cache; it predicts from raw images
    model = HandcraftedFER.load_from_checkpoint(m["best_checkpoint"], map_location="cpu").eval()
    assert model.fusion.pca.out_features == k
    dm = JAFFEDataModule(root=None, image_size=64, cache_dir=make_cfg().data.cache_dir, features=model.extractor)
    dm.setup()
    batch = next(iter(dm.test_dataloader()))
    batch["image"] = batch["image"].float() / 255
    with torch.no_grad():
        from_blocks = model.logits(batch)  # precomputed blocks
        from_images = model(batch["image"])  # blocks computed inside the model
    torch.testing.assert_close(from_blocks, from_images)
    rows = (out / "predictions.csv").read_text().splitlines()
    assert len(rows) == 58


def test_feature_cache_is_reused(cache_dir, monkeypatch):
    dm = JAFFEDataModule(root=None, image_size=64, cache_dir=str(cache_dir), features=FEATURES)
    dm.setup()
    first = dm.features
    assert {k: v.shape for k, v in first.items()} == {"hog@64": (210, 1764), "lbp@64": (210, 160)}

    def boom(*a, **k):
        raise AssertionError("features were computed again although they are cached")

    monkeypatch.setattr(HandcraftedFeatures, "forward", boom)
    again = JAFFEDataModule(root=None, image_size=64, cache_dir=str(cache_dir), features=FEATURES)
    again.setup()
    for k in first:
        assert torch.equal(first[k], again.features[k])
    other = JAFFEDataModule(root=None, image_size=64, cache_dir=str(cache_dir),
                            features={**FEATURES, "lbp": {"scales": [64], "grid": [2, 2]}})
    with pytest.raises(AssertionError, match="computed again"):  # other settings, another cache entry
        other.setup()


def test_second_training_run_uses_the_cache(make_cfg, tmp_path, monkeypatch):
    train(make_cfg("model=handcrafted", "trainer.fast_dev_run=true", out=tmp_path / "a"))
    calls = []
    real = HandcraftedFeatures.forward
    monkeypatch.setattr(HandcraftedFeatures, "forward", lambda *a, **k: calls.append(1) or real(*a, **k))
    train(make_cfg("model=handcrafted", "trainer.fast_dev_run=true", out=tmp_path / "b"))
    assert calls == []


def test_fitting_sees_the_training_split_only(cache_dir):
    """Changing every validation and test feature leaves the fitted z-score and PCA untouched."""
    dm = JAFFEDataModule(root=None, image_size=64, cache_dir=str(cache_dir), features=FEATURES)
    dm.setup()
    train_blocks = dm.model_data().precomputed(dm.split.train)
    assert all(len(v) == len(dm.split.train) == 130 for v in train_blocks.values())

    def fitted(datamodule):
        model = HandcraftedFER(list(dm.class_names), FEATURES, pca={"n_components": 0.9})
        model.fusion.fit(model.train_blocks(datamodule.model_data(), datamodule.split.train))
        return {k: v.clone() for k, v in model.fusion.state_dict().items() if not k.startswith("mlp")}

    before = fitted(dm)
    held_out = torch.as_tensor(list(dm.split.val) + list(dm.split.test))
    for v in dm.features.values():
        v[held_out] = torch.randn(len(held_out), v.shape[1]) * 100
    after = fitted(dm)
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    # and the un-augmented online route fits on the same training images
    online = JAFFEDataModule(root=None, image_size=64, cache_dir=str(cache_dir))
    online.setup()
    computed = HandcraftedFER(list(online.class_names), FEATURES).train_blocks(online.model_data(), online.split.train)
    for k in computed:
        torch.testing.assert_close(computed[k], train_blocks[k])


def test_online_features_and_skimage_backend(make_cfg, tmp_path):
    m = train(make_cfg("model=handcrafted", "trainer.fast_dev_run=true", "features.source=online", out=tmp_path / "a"))
    assert m["model"] == "handcrafted"
    m = train(make_cfg("model=handcrafted", "trainer.fast_dev_run=true", "features.backend=skimage",
                       out=tmp_path / "b"))
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["n_test"] == 16


def test_pca_above_sample_count_is_a_clear_error(make_cfg):
    from fer_lightning.errors import FERError

    with pytest.raises(FERError, match=r"pca.n_components=500 is more than the 130 training samples allow"):
        train(make_cfg("model=handcrafted", "model.pca.n_components=500", "trainer.fast_dev_run=true"))


def test_float16_feature_store_gives_the_same_classifier(cache_dir):
    """features.store_dtype=float16 halves the feature store; the same fusion head (z-score, PCA, seeded MLP)
    fitted on either store classifies the test images alike (the parity that allows float16 for datasets whose
    float32 features would not fit)."""
    from fer_lightning.data.classes import CLASS_NAMES

    probs, sizes = {}, {}
    for dtype in ("float32", "float16"):
        dm = JAFFEDataModule(root=None, image_size=64, cache_dir=str(cache_dir),
                             features={**FEATURES, "store_dtype": dtype})
        dm.setup()
        torch.manual_seed(0)
        model = HandcraftedFER(list(CLASS_NAMES), FEATURES, pca={"n_components": 20}).eval()
        model.fusion.fit(dm.model_data().precomputed(dm.split.train))
        test = torch.as_tensor(dm.split.test)
        with torch.no_grad():
            probs[dtype] = model.fusion({k: v[test].float() for k, v in dm.features.items()}).softmax(-1)
        sizes[dtype] = dm.feature_store.nbytes
    agree = (probs["float32"].argmax(1) == probs["float16"].argmax(1)).float().mean()
    assert agree >= 0.9 and (probs["float32"] - probs["float16"]).abs().max() < 0.05, agree
    assert sizes["float16"] < 0.51 * sizes["float32"]
