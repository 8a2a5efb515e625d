"""The DataModule: validation of the folder, splits, batches and on-device augmentation."""

import logging
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fer_lightning.data import CLASS_NAMES, JAFFEDataModule
from fer_lightning.data.augment import IMAGENET_MEAN, IMAGENET_STD, FaceAugment, grey_to_imagenet
from fer_lightning.errors import FERError


def dm_for(root, tmp_path, **kw):
    return JAFFEDataModule(root=str(root) if root else None, image_size=48, cache_dir=str(tmp_path / "c"), **kw)


def test_synthetic_default_says_so(tmp_path, caplog, cache_dir):
    dm = JAFFEDataModule(root=None, image_size=48, cache_dir=str(cache_dir))
    with caplog.at_level(logging.WARNING):
        dm.prepare_data()
    assert dm.dataset_name == "synthetic"
    assert any("SYNTHETIC DATA" in r.message for r in caplog.records)


def test_counts_unlike_jaffe_warn_once(jaffe_dir, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        dm_for(jaffe_dir, tmp_path).prepare_data()
    warnings = [r.message for r in caplog.records if "unlike the official JAFFE" in r.message]
    assert len(warnings) == 1 and "210 images of 10 subjects" in warnings[0]


def test_bad_folders(jaffe_dir, tmp_path):
    with pytest.raises(FERError, match="is not a folder"):
        dm_for(tmp_path / "missing", tmp_path).prepare_data()
    (tmp_path / "empty").mkdir()
    with pytest.raises(FERError, match="holds no .tiff/.tif images"):
        dm_for(tmp_path / "empty", tmp_path).prepare_data()


def test_unknown_code_and_unreadable_file(jaffe_dir, tmp_path):
    shutil.copy(next(jaffe_dir.glob("ZA.AN1.*")), jaffe_dir / "ZA.XY1.999.tiff")
    with pytest.raises(FERError, match=r"ZA\.XY1\.999\.tiff: unknown expression code"):
        dm_for(jaffe_dir, tmp_path).prepare_data()
    (jaffe_dir / "ZA.XY1.999.tiff").unlink()
    (jaffe_dir / "ZB.HA9.998.tiff").write_bytes(b"not an image")
    with pytest.raises(FERError, match=r"ZB\.HA9\.998\.tiff: cannot read this image"):
        dm_for(jaffe_dir, tmp_path).prepare_data()


def test_class_without_images(jaffe_dir, tmp_path):
    for p in jaffe_dir.glob("*.SU*"):
        p.unlink()
    with pytest.raises(FERError, match="class 'surprise' has no images"):
        dm_for(jaffe_dir, tmp_path).prepare_data()


def test_bad_options(tmp_path):
    with pytest.raises(FERError, match="data.split=random is unknown"):
        dm_for(None, tmp_path, split="random")


def test_loso_module_has_no_subject_leakage(tmp_path, cache_dir):
    for fold in (0, 9):
        dm = JAFFEDataModule(root=None, image_size=48, split="loso", fold=fold, cache_dir=str(cache_dir))
        dm.setup()
        rows = dm.split_rows()
        test_subj = {r["subject"] for r in rows if r["split"] == "test"}
        other = {r["subject"] for r in rows if r["split"] in ("train", "val")}
        assert len(test_subj) == 1 and test_subj.isdisjoint(other)
        assert sum(r["split"] == "test" for r in rows) == 21


def test_batches_and_device_augmentation(tmp_path, cache_dir):
    dm = JAFFEDataModule(root=None, image_size=48, cache_dir=str(cache_dir), batch_size=16)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (16, 1, 48, 48) and batch["image"].dtype == torch.uint8
    assert batch["label"].dtype == torch.long and batch["index"].shape == (16,)
    raw = batch["image"].float() / 255

    dm.trainer = SimpleNamespace(training=False)  # validation / test: only the conversion
    out = dm.on_after_batch_transfer(dict(batch), 0)
    assert out["image"].dtype == torch.float32 and torch.equal(out["image"], raw)

    dm.trainer = SimpleNamespace(training=True)
    torch.manual_seed(0)
    aug = dm.on_after_batch_transfer(dict(batch), 0)["image"]
    assert aug.shape == raw.shape and aug.min() >= 0 and aug.max() <= 1
    assert not torch.equal(aug, raw)
    assert len(dm.val_dataloader().dataset) == 23 and len(dm.test_dataloader().dataset) == 57
    assert dm.class_names == CLASS_NAMES


def test_augment_is_random_but_seeded_and_keeps_range():
    x = torch.rand(8, 1, 32, 32)
    aug = FaceAugment()
    torch.manual_seed(1)
    a = aug(x)
    torch.manual_seed(1)
    b = aug(x)
    assert torch.equal(a, b) and a.shape == x.shape
    assert 0.0 <= float(a.min()) and float(a.max()) <= 1.0
    flip_only = FaceAugment(hflip=1.0, degrees=0.0, zoom=(1.0, 1.0), brightness=0.0, p_affine=0.0)
    torch.testing.assert_close(flip_only(x), x.flip(-1))


def test_grey_to_imagenet():
    x = torch.rand(2, 1, 16, 16)
    y = grey_to_imagenet()(x)
    assert y.shape == (2, 3, 16, 16)
    for c in range(3):
        np.testing.assert_allclose(y[:, c], (x[:, 0] - IMAGENET_MEAN[c]) / IMAGENET_STD[c], rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
def test_augmentation_runs_on_cuda(cache_dir):
    dm = JAFFEDataModule(root=None, image_size=48, cache_dir=str(cache_dir))
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    batch = {k: v.cuda() for k, v in batch.items()}
    dm.trainer = SimpleNamespace(training=True)
    out = dm.on_after_batch_transfer(batch, 0)["image"]
    assert out.is_cuda and out.dtype == torch.float32 and 0 <= float(out.min()) and float(out.max()) <= 1
