"""Dataset presets whose subjects are in the file names: ``data=ckplus`` (CK+ class folders) and ``data=kdef``
(KDEF's ``AF01ANS.JPG`` grammar), on generated copies in the exact layouts."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from PIL import Image

from fer_lightning.data.classes import ALL_CLASS_NAMES
from fer_lightning.data.sources.kdef import KDEF_EXPRESSIONS
from fer_lightning.engine.build import build
from fer_lightning.engine.configs import config_dir
from fer_lightning.errors import FERError

CKPLUS_FOLDERS = ("anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise")


def ckplus48(root: Path, subjects: int = 10, per_class: int = 2) -> Path:
    """Kaggle's CK+48: ``root/<class>/S010_004_00000017.png``, 48x48 grey, ``per_class`` frames per subject."""
    rng = np.random.default_rng(0)
    for c, folder in enumerate(CKPLUS_FOLDERS):
        (root / folder).mkdir(parents=True)
        for s in range(subjects):
            for k in range(per_class):
                name = f"S{10 + 5 * s:03d}_{c + 1:03d}_{17 + k:08d}.png"
                Image.fromarray(rng.integers(0, 256, (48, 48), dtype=np.uint8)).save(root / folder / name)
    return root


def kdef(root: Path, people: int = 5, views: tuple[str, ...] = ("S", "HL")) -> Path:
    """KDEF: ``root/AF01/AF01ANS.JPG`` for ``people`` women and men, both sessions, every expression and view."""
    rng = np.random.default_rng(1)
    for session in "AB":
        for sex in "FM":
            for n in range(1, people + 1):
                folder = root / f"{session}{sex}{n:02d}"
                folder.mkdir(parents=True)
                for code in KDEF_EXPRESSIONS:
                    for view in views:
                        rgb = rng.integers(0, 256, (40, 32, 3), dtype=np.uint8)
                        Image.fromarray(rgb).save(folder / f"{session}{sex}{n:02d}{code}{view}.JPG")
    return root


def data_module(tmp_path: Path, *overrides: str):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=[f"data.cache_dir={tmp_path / 'cache'}", *overrides])
    dm = build(cfg.data)
    dm.prepare_data()
    dm.setup()
    return cfg, dm


def subjects_of(dm, part: str) -> set[str]:
    return {dm.decoded.subjects[i] for i in getattr(dm.split, part)}


def test_ckplus_preset_reads_kaggle_class_folders_with_subject_folds(tmp_path):
    root = ckplus48(tmp_path / "CK+48")
    cfg, dm = data_module(tmp_path, "data=ckplus", f"data.root={root}", "data.val_size=14")
    assert cfg.data.subject_regex == r"^(S\d+)_" and cfg.data.split == "subject_kfold" and cfg.data.folds == 5
    assert cfg.data.image_size == 48 and dm.decoded.images.shape == (140, 1, 48, 48)
    assert dm.class_names == tuple(c for c in ALL_CLASS_NAMES if c != "neutral")  # CK+48 has no neutral folder
    assert sorted(set(dm.decoded.subjects)) == [f"S{10 + 5 * s:03d}" for s in range(10)]
    test = subjects_of(dm, "test")
    assert len(test) == 2 and not test & (subjects_of(dm, "train") | subjects_of(dm, "val"))
    folds = []
    for fold in range(5):
        _, dm = data_module(tmp_path, "data=ckplus", f"data.root={root}", f"data.fold={fold}")
        folds.append(subjects_of(dm, "test"))
    assert sorted(s for f in folds for s in f) == sorted(set(dm.decoded.subjects))  # each subject tested once


def test_ckplus_full_size_copies_keep_the_subjects(tmp_path):
    root = tmp_path / "CK+"
    (root / "happy").mkdir(parents=True)
    (root / "surprise").mkdir()
    for s in (10, 11, 22):
        Image.new("L", (64, 49), 90 + s).save(root / "happy" / f"S{s:03d}_002_00000012.png")
        Image.new("L", (64, 49), 180 + s).save(root / "surprise" / f"S{s:03d}_001_00000009.png")
    _, dm = data_module(tmp_path, "data=ckplus", f"data.root={root}", "data.image_size=64", "data.folds=3",
                        "data.val_size=2")
    assert sorted(set(dm.decoded.subjects)) == ["S010", "S011", "S022"] and len(subjects_of(dm, "test")) == 1


def test_kdef_labels_subjects_and_views_from_the_file_names(tmp_path, caplog):
    root = kdef(tmp_path / "KDEF")
    Image.new("RGB", (8, 8)).save(root / "AF01" / "thumbnail.jpg")
    (root / "AF01" / "notes.txt").write_text("not an image")
    with caplog.at_level(logging.WARNING):
        cfg, dm = data_module(tmp_path, "data=kdef", f"data.root={root}", "data.face_crop=none",
                              "data.image_size=32", "data.val_size=14")
    assert list(cfg.data.views) == ["S"] and cfg.data.split == "subject_kfold"
    assert "1 image(s)" in caplog.text and "AF01/thumbnail.jpg" in caplog.text
    records = dm.source.records
    assert len(records) == 2 * 10 * 7 and {r.path.stem[6:] for r in records} == {"S"}  # straight views only
    assert {r.subject for r in records} == {f"{s}{n:02d}" for s in "FM" for n in range(1, 6)}
    by_name = {r.path.name: r for r in records}
    assert by_name["AF01AFS.JPG"].label == "fear" and by_name["BM03HAS.JPG"].label == "happiness"
    assert by_name["AF01AFS.JPG"].subject == by_name["BF01SUS.JPG"].subject == "F01"  # both sessions: one person
    assert dm.class_names == tuple(sorted(KDEF_EXPRESSIONS.values()))
    test = subjects_of(dm, "test")
    assert len(test) == 2 and not test & (subjects_of(dm, "train") | subjects_of(dm, "val"))

    _, both = data_module(tmp_path, "data=kdef", f"data.root={root}", "data.face_crop=none",
                          "data.image_size=32", "data.val_size=14", "data.views=[s,HL]")
    assert len(both.source.records) == 280 and {r.path.stem[6:] for r in both.source.records} == {"S", "HL"}


def test_kdef_refuses_unknown_views_and_missing_views(tmp_path):
    root = kdef(tmp_path / "KDEF", people=1, views=("HL",))
    with pytest.raises(FERError, match=r"^data.views=UP is unknown; choose one of: FL, HL, S, HR, FR$"):
        data_module(tmp_path, "data=kdef", f"data.root={root}", "data.views=[S,up]")
    with pytest.raises(FERError, match=r"no KDEF images of data.views=\['S'\] \(images per view: HL 28\)"):
        data_module(tmp_path, "data=kdef", f"data.root={root}")
    (root / "AF01" / "AF01XXS.JPG").write_bytes((root / "AF01" / "AF01ANHL.JPG").read_bytes())
    with pytest.raises(FERError, match="AF01XXS.JPG: unknown KDEF expression code 'XX'"):
        data_module(tmp_path, "data=kdef", f"data.root={root}")
    with pytest.raises(FERError, match="data=kdef needs data.root"):
        data_module(tmp_path, "data=kdef")


@pytest.mark.parametrize("module", ["train", "evaluate", "predict"])
def test_a_regex_hydra_cannot_read_ends_with_the_quoted_spelling(module, monkeypatch, capsys):
    import importlib

    main = importlib.import_module(f"fer_lightning.{module}").main
    monkeypatch.setattr("sys.argv", [f"fer-{module}", "data=ckplus", r"data.subject_regex=^(S\d+)_"])
    with pytest.raises(SystemExit) as exit_:
        main()
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and err.count("\n") == 0 and "Exception" not in err
    assert err == (r"""fer-lightning: error: data.subject_regex=^(S\d+)_: Hydra's override grammar cannot read """
                   r"""this value; quote it, with the shell's quotes around the whole override: """
                   r"""'data.subject_regex="^(S\d+)_"'""")


def test_the_log_says_when_images_are_upscaled(tmp_path, caplog):
    root = ckplus48(tmp_path / "CK+48", subjects=5, per_class=1)
    with caplog.at_level(logging.INFO, logger="fer_lightning.data.decoded"):
        data_module(tmp_path, "data=folder", f"data.root={root}", "data.image_size=112", "data.val_size=7",
                    "data.test_size=7", "data.split=paper")
    lines = [r for r in caplog.records if "upscaled" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING
    assert lines[0].getMessage() == (
        "images are upscaled 2.3x: most common source size 48x48 px (median shorter side 48 px) vs "
        "data.image_size=112; set data.image_size=48 to train at the source size")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="fer_lightning.data.decoded"):
        data_module(tmp_path, "data=ckplus", f"data.root={root}", "data.val_size=7")  # the preset: 48 px
    assert not [r for r in caplog.records if "upscaled" in r.getMessage()]


def test_the_log_says_what_the_feature_store_costs_before_computing_it(tmp_path, caplog):
    import torch

    from fer_lightning.features.tables import feature_store

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=["model=handcrafted", "data.image_size=224"])
    assert sum(build(cfg.features).block_dims().values()) == 26_734  # the FER2013 figure
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=["model=handcrafted", "data.image_size=48"])
    extractor = build(cfg.features)
    per_image = sum(extractor.block_dims().values())
    images = torch.randint(0, 256, (10, 1, 48, 48), dtype=torch.uint8)
    for attempt in range(2):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="fer_lightning.features.tables"):
            store = feature_store(extractor, images, "tiny", tmp_path, torch.device("cpu"))
        cost = [r.getMessage() for r in caplog.records if "values per image" in r.getMessage()]
        if attempt == 0:  # said once, before computing; a store that exists costs nothing more
            assert cost == [f"HOG+LBP: {per_image:,} values per image x 10 images x 4 bytes (float32) = "
                            f"{per_image * 10 * 4 / 1e6:.1f} MB in {tmp_path}"]
        else:
            assert cost == []
    assert sum(a.nbytes for a in (store.array(b) for b in store.meta["arrays"])) == per_image * 10 * 4
