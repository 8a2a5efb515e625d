"""Silent data problems made loud (issue 10, items 12 and 13): duplicate images and tiny images."""

import logging
import shutil

import numpy as np
import pytest
from PIL import Image

from fer_lightning.data import FERDataModule
from fer_lightning.errors import FERError

from .test_folder import FIXTURES


def dm(tmp_path, **kw):
    return FERDataModule.from_options(image_size=48, cache_dir=str(tmp_path / "c"), decode_workers=0, **kw)


def _part(d, i):
    return next(name for name in ("train", "val", "test") if i in set(getattr(d.split, name).tolist()))


def test_same_image_under_two_names(jaffe_dir, tmp_path, caplog):
    original = sorted(jaffe_dir.glob("ZA.AN1.*"))[0]
    copy = jaffe_dir / original.name.lower()  # za.an1.1.tiff beside ZA.AN1.1.tiff
    shutil.copy(original, copy)
    for seed in range(4):
        d = dm(tmp_path, root=str(jaffe_dir), seed=seed)
        with caplog.at_level(logging.WARNING):
            d.setup()
        names = d.file_names()
        a, b = names.index(original.name), names.index(copy.name)
        assert _part(d, a) == _part(d, b)  # never one in train and the other in test
    assert f"1 image(s) duplicate another image's pixels (0 with another label): {original.name} = {copy.name}" \
        in caplog.text
    with pytest.raises(FERError, match=rf"{original.name} = {copy.name}.*set data.duplicates=warn"):
        dm(tmp_path, root=str(jaffe_dir), duplicates="error").setup()


@pytest.fixture
def faces(tmp_path):
    root = tmp_path / "faces"
    shutil.copytree(FIXTURES / "happiness", root / "happy")
    shutil.copytree(FIXTURES / "neutral", root / "neutral")
    return root


def test_same_file_in_two_class_folders(faces, tmp_path, caplog):
    shutil.copy(faces / "happy" / "003.jpg", faces / "neutral" / "103.jpg")
    d = dm(tmp_path, source="folder", root=str(faces), split="paper", test_size=4, val_size=2)
    with caplog.at_level(logging.WARNING):
        d.setup()
    assert "(1 with another label): happy/003.jpg = neutral/103.jpg (happiness / neutral)" in caplog.text
    names = d.file_names()
    assert _part(d, names.index("happy/003.jpg")) == _part(d, names.index("neutral/103.jpg"))


def test_class_folder_linked_to_its_parent(faces, tmp_path):
    (faces / "sad").symlink_to(faces, target_is_directory=True)
    with pytest.raises(FERError, match=r"faces/sad: this class folder is a link to .*which holds data.root itself"):
        dm(tmp_path, source="folder", root=str(faces)).setup()


def test_copy_across_a_fixed_split_is_dropped_from_test(faces, tmp_path, caplog):
    rows = ["path,label,split"]
    for i, p in enumerate(sorted(faces.glob("*/*.jpg"))):
        rows.append(f"{p.relative_to(faces).as_posix()},{p.parent.name},{('train', 'train', 'val', 'test')[i % 4]}")
    shutil.copy(faces / "happy" / "001.jpg", faces / "happy" / "copy.jpg")
    rows.append("happy/copy.jpg,happy,test")
    (faces / "list.csv").write_text("\n".join(rows) + "\n")
    d = dm(tmp_path, source="manifest", root=str(faces), manifest="list.csv", split="manifest")
    with caplog.at_level(logging.WARNING):
        d.setup()
    copy = d.file_names().index("happy/copy.jpg")
    assert _part(d, d.file_names().index("happy/001.jpg")) == "train" and copy not in set(d.split.test.tolist())
    assert "dropped 1 validation/test image(s) that copy an image of an earlier part" in caplog.text


def test_tiny_images_are_named(faces, tmp_path, caplog):
    Image.fromarray(np.full((1, 1), 128, np.uint8)).save(faces / "happy" / "dot.png")
    Image.fromarray(np.arange(20 * 30, dtype=np.uint8).reshape(20, 30)).save(faces / "neutral" / "small.png")
    with caplog.at_level(logging.WARNING):
        dm(tmp_path, source="folder", root=str(faces)).prepare_data()
    assert ("2 image(s) are smaller than data.min_side=32 px and are upscaled to 48 px: happy/dot.png (1x1), "
            "neutral/small.png (20x30)") in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        dm(tmp_path, source="folder", root=str(faces), min_side=16).prepare_data()  # the same store, another threshold
    assert "1 image(s) are smaller than data.min_side=16 px" in caplog.text
