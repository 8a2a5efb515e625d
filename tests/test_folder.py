"""data=folder: class folders and aliases, subject ids, subject-independent k-fold, face cropping."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from fer_lightning.data import FolderDataModule
from fer_lightning.data.crop import FaceCropper
from fer_lightning.data.decoded import decode_store
from fer_lightning.data.images import read_grey
from fer_lightning.data.preprocessing import Preprocessing
from fer_lightning.data.sources.folder import scan_folder
from fer_lightning.data.splits import subject_kfold_split
from fer_lightning.engine.training import train
from fer_lightning.errors import FERError

from .conftest import LONDON, london_folder

FIXTURES = Path(__file__).parent / "fixtures" / "london-faces"


@pytest.fixture
def faces(tmp_path) -> Path:
    """A folder dataset with aliased, oddly cased class folders: Happy/ and NEUTRAL/ (6 people each)."""
    return london_folder(tmp_path / "faces", "Happy", "NEUTRAL")


def test_aliases_subjects_and_present_classes(faces):
    recs = scan_folder(faces)
    assert len(recs) == 12 and {r.label for r in recs} == {"happiness", "neutral"}
    assert {r.subject for r in recs} == {f"00{i}" for i in range(1, 7)}  # default: the file stem
    dm = FolderDataModule(root=str(faces), image_size=48, cache_dir=None, split="paper", test_size=4, val_size=2)
    dm.setup()
    assert dm.class_names == ("happiness", "neutral") and dm.dataset_name == "faces"


def test_subject_regex(faces, tmp_path):
    for folder, tag in (("Happy", "smile"), ("NEUTRAL", "rest")):
        for p in (faces / folder).iterdir():
            p.rename(p.with_name(f"person{p.stem}_{tag}{p.suffix}"))
    recs = scan_folder(faces, r"person(?P<subject>\d+)_")
    assert sorted(r.subject for r in recs if r.label == "happiness") == [f"00{i}" for i in range(1, 7)]
    assert {r.subject for r in recs if r.label == "neutral"} == {r.subject for r in recs if r.label == "happiness"}
    assert {r.subject for r in scan_folder(faces, r"^(\w+?)_")} == {f"person00{i}" for i in range(1, 7)}
    (faces / "Happy" / "stray.jpg").write_bytes((faces / "Happy" / "person001_smile.jpg").read_bytes())
    with pytest.raises(FERError, match=r"stray.jpg: data.subject_regex=.* does not match this file name"):
        scan_folder(faces, r"person(?P<subject>\d+)_")
    with pytest.raises(FERError, match="not a valid regular expression"):
        scan_folder(faces, "(")


def test_unknown_class_folder_and_empty_root(faces, tmp_path):
    (faces / "bored").mkdir()
    with pytest.raises(FERError, match=r"unknown class folder 'bored'; accepted names: .*angry.*surprised"):
        scan_folder(faces)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FERError, match="holds no images in class folders"):
        scan_folder(tmp_path / "empty")
    with pytest.raises(FERError, match="data=folder needs data.root"):
        FolderDataModule(root=None)


def test_subject_kfold_keeps_subjects_together():
    rng = np.random.default_rng(0)
    subjects = [f"s{i:03d}" for i in range(60) for _ in range(2)]
    labels = [("happiness", "neutral")[k % 2] for k in range(120)]
    s = np.asarray(subjects)
    seen = []
    for fold in range(5):
        split = subject_kfold_split(labels, subjects, folds=5, fold=fold, val_size=12, seed=3)
        test, train, val = set(s[split.test]), set(s[split.train]), set(s[split.val])
        assert test.isdisjoint(train) and test.isdisjoint(val) and train.isdisjoint(val)
        assert len(split.train) + len(split.val) + len(split.test) == 120 and 8 <= len(split.val) <= 16
        seen += split.test.tolist()
    assert sorted(seen) == list(range(120))  # the folds partition the data
    a = subject_kfold_split(labels, subjects, folds=5, fold=0, seed=1).test
    assert np.array_equal(a, subject_kfold_split(labels, subjects, folds=5, fold=0, seed=1).test)
    del rng
    with pytest.raises(FERError, match=r"data.fold=5 is out of range: data.folds=5"):
        subject_kfold_split(labels, subjects, folds=5, fold=5)
    with pytest.raises(FERError, match=r"data.folds=61 cannot be met"):
        subject_kfold_split(labels, subjects, folds=61, fold=0)


def test_box_crop_and_errors(tmp_path, caplog):
    img = (np.arange(100 * 80) % 256).astype(np.uint8).reshape(100, 80)
    np.testing.assert_array_equal(FaceCropper("box", box=[10, 5, 50, 40])(img), img[10:60, 5:45])
    with pytest.raises(FERError, match=r"x.jpg: data.crop_box=\[60, 0, 50, 40\] does not fit"):
        FaceCropper("box", box=[60, 0, 50, 40])(img, "x.jpg")
    with pytest.raises(FERError, match="needs data.crop_box"):
        FaceCropper("box")
    with pytest.raises(FERError, match="data.face_crop=eyes is unknown"):
        FaceCropper("eyes")
    flat = np.full((120, 120), 128, np.uint8)
    with caplog.at_level(logging.WARNING):
        out = FaceCropper("detect")(flat, "blank.png")
    assert out.shape == (72, 72)  # a centre crop of 0.6 x the shorter side
    assert [r.message for r in caplog.records] == ["blank.png: no face found; using a centre crop"]


def _check_crop(img: np.ndarray, region) -> None:
    """London photos: the face fills about the middle third; a crop must hold both eyes and the mouth."""
    h, w = img.shape
    top, left, ch, cw = region
    assert ch == cw and 0 <= top and 0 <= left and top + ch <= h and left + cw <= w
    assert 0.3 * w <= cw <= 0.75 * w
    # eyes lie near 40-45% of the height and mouth near 60-65%, both around the vertical midline
    assert top <= 0.38 * h and top + ch >= 0.68 * h
    assert left <= 0.38 * w and left + cw >= 0.62 * w


def test_detect_on_fixture_photos():
    crop = FaceCropper("detect", margin=0.2)
    for p in sorted(FIXTURES.glob("*/*.jpg")):
        img = read_grey(p)
        assert crop.detect(img) is not None, p
        _check_crop(img, crop.region(img, p))


@pytest.mark.slow
def test_detect_on_all_london_photos():
    if not LONDON.is_dir():
        pytest.skip(f"{LONDON} is not here")
    crop = FaceCropper("detect", margin=0.2)
    files = sorted(LONDON.glob("*/*.jpg"))
    found = 0
    for p in files:
        img = read_grey(p)
        found += crop.detect(img) is not None
        _check_crop(img, crop.region(img, p))
    assert found / len(files) > 0.95


def test_crop_settings_are_part_of_the_cache_key(faces, tmp_path):
    recs = scan_folder(faces)
    plain = decode_store(recs, Preprocessing(48), tmp_path / "c")
    cropped = decode_store(recs, Preprocessing(48, FaceCropper("detect").settings()), tmp_path / "c")
    wider = decode_store(recs, Preprocessing(48, FaceCropper("detect", margin=0.4).settings()), tmp_path / "c")
    assert len({plain.fingerprint, cropped.fingerprint, wider.fingerprint}) == 3
    assert len([p for p in (tmp_path / "c").iterdir() if p.is_dir()]) == 3
    assert not torch.equal(plain.images, cropped.images)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["deep", "handcrafted", "hybrid"])
def test_three_models_train_on_a_folder(make_cfg, faces, tmp_path, model):
    m = train(make_cfg("data=folder", f"data.root={faces}", "data.folds=3", "data.val_size=2", f"model={model}",
                       "data.face_crop=detect", "trainer.max_epochs=1", "trainer.enable_progress_bar=false"))
    out = tmp_path / "run"
    assert m["class_names"] == ["happiness", "neutral"] and np.array(m["confusion_matrix"]).shape == (2, 2)
    assert m["dataset"] == "faces" and m["split"] == "subject_kfold" and m["fold"] == 0
    assert set(k for k in m if k.startswith("test/acc_")) == {"test/acc_happiness", "test/acc_neutral"}
    header = (out / "predictions.csv").read_text().splitlines()[0]
    assert header == "file,subject,true,predicted,p_happiness,p_neutral"
    ckpt = torch.load(m["best_checkpoint"], weights_only=True)
    assert ckpt["fer_lightning"]["class_names"] == ["happiness", "neutral"]
    assert json.loads((out / "metrics.json").read_text())["n_test"] == m["n_test"] > 0
