"""Datasets as people download them: split folders (FER2013's and RAF-DB's image copies), numeric class folders with
``data.label_map``, a manifest's split column used by default (``data.split=auto``), validation sizes as fractions
(JAFFE keeps the paper's counts), and the warning naming the classes missing from validation or test."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from PIL import Image
from sklearn.model_selection import StratifiedGroupKFold

from fer_lightning.data import FolderDataModule
from fer_lightning.data.datamodule import FERDataModule
from fer_lightning.data.settings import SplitSettings
from fer_lightning.data.sources.folder import FolderSource, scan_folder
from fer_lightning.data.splits import Split, official_split, subject_kfold_split
from fer_lightning.engine.configs import config_dir
from fer_lightning.engine.training import train
from fer_lightning.errors import FERError

FER2013_FOLDERS = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
RAFDB_CODES = {"1": "surprise", "2": "fear", "3": "disgust", "4": "happiness", "5": "sadness", "6": "anger",
               "7": "neutral"}


def write_faces(folder: Path, n: int, seed: int, size: int = 48) -> list[Path]:
    """``n`` distinct grey JPEG faces (noise around a level set by ``seed``) in ``folder``, named 00000.jpg, ..."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        pixels = np.clip(rng.normal(40 + 25 * (seed % 8), 30, (size, size)), 0, 255).astype(np.uint8)
        paths.append(folder / f"{i:05d}.jpg")
        Image.fromarray(pixels).save(paths[-1], quality=90)
    return paths


def split_folders(root: Path, classes, parts: dict[str, int]) -> Path:
    """``root/<part>/<class>/*.jpg`` with ``parts[part]`` images per class (Kaggle's FER2013 / RAF-DB layout)."""
    for p, (part, n) in enumerate(parts.items()):
        for c, cls in enumerate(classes):
            write_faces(root / part / cls, n, seed=100 * p + c)
    return root


def module(root: Path, tmp_path: Path, **options) -> FERDataModule:
    options = {"split": "auto", "test_size": 0.2, "val_size": 0.15, "decode_workers": 0, **options}
    return FolderDataModule(root=str(root), image_size=32, cache_dir=str(tmp_path / "cache"), **options)


def compose_data(*overrides: str):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose("train", overrides=list(overrides)).data


def test_fer2013_split_folders_are_detected_and_validation_drawn_from_train(tmp_path, caplog):
    root = split_folders(tmp_path / "fer2013", FER2013_FOLDERS, {"train": 10, "test": 4})
    recs = scan_folder(root)
    assert len(recs) == 7 * 14 and {r.split for r in recs} == {"train", "test"}
    assert {r.label for r in recs} == {"anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise"}
    assert all(r.name.split("/")[0] == r.split for r in recs)
    dm = module(root, tmp_path, val_size=0.15)
    with caplog.at_level(logging.INFO):
        dm.setup()
    assert dm.split_settings.name == "folders"
    assert sum("data.split=auto uses it as data.split=folders" in r.getMessage() for r in caplog.records) == 1
    names = dm.file_names()
    assert sorted(names[i] for i in dm.split.test) == sorted(r.name for r in recs if r.split == "test")
    val = [names[i] for i in dm.split.val]
    assert len(val) == round(0.15 * 70) == 10 and all(v.startswith("train/") for v in val)
    assert len({dm.source.records[i].label for i in dm.split.val}) == 7  # stratified: one image of each class
    assert len(dm.split.train) == 60
    again = module(root, tmp_path, val_size=0.15)
    again.setup()
    assert np.array_equal(again.split.val, dm.split.val)  # seeded


def test_three_split_folders_use_the_given_validation(tmp_path):
    root = split_folders(tmp_path / "three", ("happy", "neutral"), {"train": 6, "validation": 3, "test": 2})
    dm = module(root, tmp_path)
    dm.setup()
    names = dm.file_names()
    assert sorted(names[i].split("/")[0] for i in dm.split.val) == ["validation"] * 6
    assert {names[i].split("/")[0] for i in dm.split.train} == {"train"} and len(dm.split.train) == 12
    assert {names[i].split("/")[0] for i in dm.split.test} == {"test"} and len(dm.split.test) == 4


def test_a_test_folder_without_a_class_is_warned_about(tmp_path, caplog):
    root = split_folders(tmp_path / "fer", ("happy", "neutral", "sad"), {"train": 10, "test": 3})
    shutil.rmtree(root / "test" / "sad")
    with caplog.at_level(logging.WARNING):
        module(root, tmp_path).setup()
    assert [r.getMessage() for r in caplog.records if "has no image of" in r.getMessage()] == [
        "test (folders split) has no image of: sadness; its per-class metrics of this class are absent, and its "
        "averages cover the other classes"]


def test_train_and_val_folders_only_make_val_the_test_set(tmp_path):
    root = split_folders(tmp_path / "affectnet", ("0", "1", "7"), {"train": 10, "val": 3})
    codes = {0: "neutral", 1: "happiness", 7: "contempt"}
    recs = scan_folder(root, label_map=codes)
    assert {r.split for r in recs if r.name.startswith("val/")} == {"test"}
    dm = module(root, tmp_path, label_map=codes, split="folders", val_size=0.1)
    dm.setup()
    assert dm.class_names == ("contempt", "happiness", "neutral")
    assert len(dm.split.test) == 9 and len(dm.split.val) == 3 and len(dm.split.train) == 27


def test_split_folder_layout_errors(tmp_path):
    mixed = split_folders(tmp_path / "mixed", ("happy", "neutral"), {"train": 2, "test": 2})
    write_faces(mixed / "happy", 2, seed=1)
    with pytest.raises(FERError, match=r"mixes split folders \(test, train\) with other folders \(happy\)"):
        scan_folder(mixed)
    both = split_folders(tmp_path / "both", ("happy", "neutral"), {"train": 2, "val": 1, "valid": 1, "test": 1})
    with pytest.raises(FERError, match="'val' and 'valid' are both the val split; keep one of them"):
        scan_folder(both)
    only = split_folders(tmp_path / "only", ("happy", "neutral"), {"train": 3})
    with pytest.raises(FERError, match=r"has only the split folder 'train'; add root/test/<class>/, or point"):
        scan_folder(only)
    no_train = split_folders(tmp_path / "no_train", ("happy", "neutral"), {"val": 3, "test": 3})
    with pytest.raises(FERError, match="but no train folder"):
        scan_folder(no_train)
    classes = tmp_path / "classes"
    for c, cls in enumerate(("happy", "neutral")):
        write_faces(classes / cls, 4, seed=c)
    with pytest.raises(FERError, match=r"^data.split=folders needs split folders .* holds class folders; use "):
        module(classes, tmp_path, split="folders").setup()


def test_class_folders_work_as_before_with_auto(tmp_path, caplog):
    """``data=folder`` without split folders: ``auto`` is the subject k-fold of before, image for image."""
    root = tmp_path / "kdef"
    for c, cls in enumerate(("happy", "neutral", "sad")):
        for subject in range(6):
            for k, path in enumerate(write_faces(root / cls / f"s{subject}", 2, seed=10 * c + subject)):
                path.rename(path.with_name(f"S{subject:02d}_{cls}_{k}.jpg"))
    assert compose_data("data=folder").split == "auto"
    with caplog.at_level(logging.INFO):
        auto = module(root, tmp_path, subject_regex=r"^(S\d+)_", val_size=0.2, folds=3)
        auto.setup()
    explicit = module(root, tmp_path, subject_regex=r"^(S\d+)_", val_size=0.2, folds=3, split="subject_kfold")
    explicit.setup()
    assert auto.split_settings.name == "subject_kfold"
    assert "has no split of its own: data.split=auto draws data.split=subject_kfold" in caplog.text
    for part in ("train", "val", "test"):
        assert np.array_equal(getattr(auto.split, part), getattr(explicit.split, part))
    assert all(r.split is None for r in auto.source.records)


def test_numeric_folders_need_a_label_map(tmp_path):
    root = split_folders(tmp_path / "DATASET", tuple(RAFDB_CODES), {"train": 4, "test": 2})
    with pytest.raises(FERError, match=r"DATASET/test/1: class folder '1' is a numeric code; say which class each "
                                       r"code is with data.label_map \(RAF-DB's copy: data=rafdb_folders"):
        scan_folder(root)
    cfg = compose_data("data=rafdb_folders", f"data.root={root}")
    assert cfg.split == "folders" and cfg.name == "rafdb" and cfg.image_size == 100
    recs = FolderSource(root, label_map=cfg.label_map).records
    assert {r.name.split("/")[1]: r.label for r in recs} == RAFDB_CODES
    with pytest.raises(FERError, match="class folder '7' is neither a class name nor a code of data.label_map"):
        scan_folder(root, label_map={k: v for k, v in RAFDB_CODES.items() if k != "7"})
    dropped = scan_folder(root, label_map={**RAFDB_CODES, "7": None})
    assert len(dropped) == 6 * 6 and "neutral" not in {r.label for r in dropped}
    affectnet = compose_data("data=affectnet_folders", "data.root=/x")
    assert affectnet.label_map[7] == "contempt" and affectnet.label_map[0] == "neutral"


def test_fer2013_folders_preset_trains_at_the_source_size(tmp_path):
    root = split_folders(tmp_path / "fer2013", FER2013_FOLDERS, {"train": 10, "test": 4})
    cfg = compose_data("data=fer2013_folders", f"data.root={root}")
    assert (cfg.split, cfg.name, cfg.image_size, cfg.batch_size) == ("folders", "fer2013", 48, 64)
    recs = FolderSource(root).records
    assert len(recs) == 7 * 14 and sum(r.split == "test" for r in recs) == 7 * 4
    assert {r.label for r in recs} == {"anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise"}


def manifest_root(tmp_path: Path, split_column: bool, blank: int = 0) -> Path:
    root = tmp_path / "listed"
    lines = ["path,label,split" if split_column else "path,label"]
    for c, cls in enumerate(("happy", "neutral")):
        for i, path in enumerate(write_faces(root / cls, 20, seed=c)):
            part = "test" if i < 3 else "train"
            part = "" if i < blank else part
            lines.append(f"{path.relative_to(root).as_posix()},{cls}" + (f",{part}" if split_column else ""))
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root


def manifest_module(root: Path, tmp_path: Path, **options) -> FERDataModule:
    cfg = compose_data("data=manifest", f"data.root={root}", "data.manifest=labels.csv", "data.decode_workers=0",
                       "data.image_size=32", f"data.cache_dir={tmp_path / 'cache'}")
    assert cfg.split == "auto"
    options = {k: v for k, v in {**cfg, **options}.items() if not k.startswith("_")}
    return FERDataModule.from_options(**options)


def test_the_manifest_split_column_is_used_by_default(tmp_path):
    dm = manifest_module(manifest_root(tmp_path, split_column=True), tmp_path)
    dm.setup()
    assert dm.split_settings.name == "manifest"
    names = dm.file_names()
    assert sorted(names[i] for i in dm.split.test) == sorted(f"{c}/{i:05d}.jpg" for c in ("happy", "neutral")
                                                            for i in range(3))
    plain = manifest_module(manifest_root(tmp_path / "plain", split_column=False), tmp_path / "plain")
    plain.setup()
    assert plain.split_settings.name == "paper" and len(plain.split.test) == 8  # 0.2 of 40, random
    partial = manifest_module(manifest_root(tmp_path / "partial", split_column=True, blank=1), tmp_path / "partial")
    with pytest.raises(FERError, match=r"^labels: 2 of 40 images have no split \(train/val/test\)"):
        partial.setup()


def test_missing_classes_are_named_for_validation_and_test(tmp_path, caplog):
    """Contempt posed by two subjects only: the fold testing one of them can hold no contempt in validation (the
    other must stay in training), and says so; no other fold lacks a class."""
    y, s = [], []
    for subject in range(12):
        for cls in ("happiness", "neutral", "sadness") + (("contempt",) if subject in (0, 1) else ()):
            y += [cls] * 2
            s += [f"S{subject:02d}"] * 2
    warned = []
    for fold in range(4):
        split = subject_kfold_split(y, s, folds=4, fold=fold, val_size=0.2, seed=0)
        assert "contempt" in {y[i] for i in split.train}
        caplog.clear()
        from fer_lightning.data.coverage import warn_missing_classes
        with caplog.at_level(logging.WARNING):
            lines = warn_missing_classes(split, y, SplitSettings("subject_kfold", fold=fold))
        assert [r.getMessage() for r in caplog.records] == lines
        warned += lines
    tested = [f for f in range(4) if "contempt" in {y[i] for i in subject_kfold_split(
        y, s, folds=4, fold=f, val_size=0.2, seed=0).test}]
    expected = [f"validation (subject_kfold fold {f}) has no image of: contempt; its per-class metrics of this class "
                "are absent, and its averages cover the other classes" for f in tested]
    assert len(tested) in (1, 2) and all(e in warned for e in expected)
    assert sum(w.startswith("test (") for w in warned) == 4 - len(tested)  # the other folds test no contempt


def test_subject_aware_validation_fits_the_fraction_covers_classes_and_keeps_test_folds():
    """A CK+-like set (118 subjects, 1-3 of 8 expressions each, contempt rare): validation is about the asked
    fraction of the training folds, in whole subjects, with every class; the test folds are StratifiedGroupKFold's."""
    rng = np.random.default_rng(0)
    classes = ["anger", "contempt", "disgust", "fear", "happiness", "neutral", "sadness", "surprise"]
    y, s = [], []
    for subject in range(118):
        weights = np.array([3, 0.6, 3, 2, 4, 6, 2.5, 4])
        for cls in rng.choice(classes, size=rng.integers(1, 4), replace=False, p=weights / weights.sum()):
            n = int(rng.integers(2, 7))
            y += [cls] * n
            s += [f"S{subject:03d}"] * n
    y_arr, s_arr = np.array(y), np.array(s)
    folds = list(StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=0).split(y_arr, y_arr, groups=s_arr))
    for fold in range(5):
        split = subject_kfold_split(y, s, folds=5, fold=fold, val_size=0.15, seed=0)
        assert np.array_equal(split.test, np.sort(folds[fold][1]))
        rest = len(split.train) + len(split.val)
        assert 0.09 < len(split.val) / rest < 0.22, (fold, len(split.val), rest)
        assert not set(s_arr[split.val]) & set(s_arr[split.train])
        assert set(y_arr[split.val]) == set(y_arr[split.train]) == set(classes)


def test_a_validation_fraction_too_small_for_the_classes_takes_one_image_per_class():
    labels = ["anger", "fear", "happiness", "neutral"] * 5
    parts = ["train"] * 16 + ["test"] * 4
    split = official_split(parts, labels, val_size=0.05, seed=0)  # 0.05 of 16 rounds to 1 image
    assert len(split.val) == 4 and sorted(labels[i] for i in split.val) == sorted(set(labels))
    with pytest.raises(FERError, match=r"data.val_size=1 cannot be met: a stratified split of 16 images over 4"):
        official_split(parts, labels, val_size=1, seed=0)  # a count is taken as given


def test_jaffe_keeps_the_paper_counts_and_other_datasets_use_fractions(synthetic_dir, tmp_path):
    for overrides in (["data=jaffe"], ["experiment=paper"], ["experiment=loso"]):
        cfg = compose_data(*overrides)
        assert (cfg.test_size, cfg.val_size) == (57, 23), overrides
    for name in ("folder", "manifest"):
        cfg = compose_data(f"data={name}")
        assert isinstance(cfg.val_size, float) and 0.05 <= cfg.val_size <= 0.2
        assert isinstance(cfg.test_size, float)
    jaffe = compose_data("data=jaffe", f"data.root={synthetic_dir}", f"data.cache_dir={tmp_path}",
                         "data.image_size=32", "data.decode_workers=0")
    dm = FERDataModule.from_options(**{k: v for k, v in jaffe.items() if not k.startswith("_")})
    dm.setup()
    # the synthetic set has 210 images: 130 / 23 / 57
    assert (len(dm.split.train), len(dm.split.val), len(dm.split.test)) == (130, 23, 57)


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["fer2013", "rafdb"])
def test_a_downloaded_copy_trains_with_data_root_alone(layout, make_cfg, tmp_path, caplog):
    """FER2013's image copy (train/test/<class>, 48 px grey JPEG) trains with ``data=folder data.root=...``; RAF-DB's
    (train/test/1..7) with ``data=rafdb_folders``. Three test images copy training images: they are dropped and
    said, and ``n_test`` is the test images less those."""
    folders = FER2013_FOLDERS if layout == "fer2013" else tuple(RAFDB_CODES)
    root = split_folders(tmp_path / layout, folders, {"train": 8, "test": 3})
    for k in range(3):
        shutil.copy(root / "train" / folders[k] / "00000.jpg", root / "test" / folders[k] / f"copy{k}.jpg")
    n_test_files = len(list((root / "test").rglob("*.jpg")))
    data = ["data=folder"] if layout == "fer2013" else ["data=rafdb_folders"]
    with caplog.at_level(logging.WARNING):
        m = train(make_cfg(*data, f"data.root={root}", "data.image_size=32", "model=handcrafted",
                           "trainer.max_epochs=1", "logger=none", "callbacks.training_pictures=null"))
    assert "dropped 3 validation/test image(s) that copy an image of an earlier part" in caplog.text
    assert m["split"] == "folders" and m["n_test"] == n_test_files - 3 == 7 * 3
    assert m["fold"] is None  # a dataset's own split has no folds
    assert m["dataset"] == (layout if layout == "fer2013" else "rafdb")
    assert len(m["class_names"]) == 7 and np.array(m["confusion_matrix"]).sum() == m["n_test"]


def test_split_dataclass_is_what_folders_fill(tmp_path):
    """The folders' split is a plain :class:`Split`: disjoint parts covering every image once."""
    root = split_folders(tmp_path / "fer", ("happy", "sad"), {"train": 5, "val": 2, "test": 2})
    dm = module(root, tmp_path)
    dm.setup()
    assert isinstance(dm.split, Split)
    assert sorted(np.concatenate([dm.split.train, dm.split.val, dm.split.test]).tolist()) == list(range(18))
