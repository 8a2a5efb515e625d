"""Photos stored turned, with an EXIF orientation tag, are read upright: in the store (training, evaluate), in
predict, and the store's key tells them apart from the sideways decodings of earlier versions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fer_lightning.data import decoded as decoded_module
from fer_lightning.data.decoded import decode_store, fingerprint
from fer_lightning.data.images import exif_orientation, read_grey
from fer_lightning.data.preprocessing import Preprocessing
from fer_lightning.data.sources.base import Record
from fer_lightning.deploy.prediction import predict

# how the camera stored the pixels for each orientation: the inverse of the turn that makes them upright
STORED = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}


def upright_face() -> np.ndarray:
    """A 64 x 48 grey picture with no symmetry (a gradient, a bright block at the top left), sides multiples of 16
    so JPEG blocks fall on the same pixels whichever way it is turned."""
    y, x = np.mgrid[0:64, 0:48]
    img = (2 * y + x).astype(np.uint8)
    img[4:20, 4:16] = 250
    return img


def save(img: np.ndarray, path: Path, orientation: int | None = None) -> Path:
    """``img`` saved to ``path``, stored turned as a camera would with the tag ``orientation``."""
    pil = Image.fromarray(img)
    if orientation is None:
        pil.save(path, quality=95) if path.suffix == ".jpg" else pil.save(path)
        return path
    exif = Image.Exif()
    exif[0x0112] = orientation
    options = {"quality": 95} if path.suffix == ".jpg" else {}
    pil.transpose(STORED[orientation]).save(path, exif=exif, **options)
    return path


@pytest.mark.parametrize("orientation", sorted(STORED))
def test_a_turned_copy_reads_as_the_upright_image(tmp_path, orientation):
    face = upright_face()
    png = save(face, tmp_path / "turned.png", orientation)
    assert exif_orientation(png) == orientation and exif_orientation(save(face, tmp_path / "up.png")) == 1
    assert np.array_equal(read_grey(png), face)  # lossless: exactly the upright pixels
    with Image.open(png) as raw:
        assert np.asarray(raw).shape != face.shape or not np.array_equal(np.asarray(raw), face)  # stored turned

    upright_jpg = read_grey(save(face, tmp_path / "up.jpg"))
    turned_jpg = read_grey(save(face, tmp_path / "turned.jpg", orientation))
    assert turned_jpg.shape == face.shape
    assert np.abs(turned_jpg.astype(int) - upright_jpg).mean() < 1.5  # JPEG noise only
    assert np.abs(np.rot90(turned_jpg, 2).astype(int) - upright_jpg).mean() > 20  # (it would show a turn)


def test_the_store_holds_upright_pixels_and_its_key_marks_turned_files(tmp_path, monkeypatch):
    face = upright_face()
    up = Record(path=save(face, tmp_path / "up.png"), label="happiness", name="up.png")
    turned = Record(path=save(face, tmp_path / "turned.png", 6), label="happiness", name="turned.png")
    prep = Preprocessing.from_options(48, "none", 0.2, None)
    store = decode_store([up, turned], prep, tmp_path / "cache")
    assert np.array_equal(store.images[0].numpy(), store.images[1].numpy())
    assert store.sizes.tolist() == [[64, 48], [64, 48]]

    settings = {"image_size": 48, "crop": "none"}
    new_up, new_both = fingerprint([up], settings), fingerprint([up, turned], settings)
    monkeypatch.setattr(decoded_module, "exif_orientation", lambda path: 1)  # the key before orientations counted
    assert fingerprint([up], settings) == new_up  # untagged files: the same key, the same store and runs
    assert fingerprint([up, turned], settings) != new_both  # a store decoded sideways is never reused


@pytest.mark.slow
def test_predict_gives_a_turned_photo_the_upright_prediction(tmp_path, tiny_checkpoints, synthetic_dir):
    face = read_grey(sorted(synthetic_dir.glob("*.tiff"))[0])[:240, :240]  # sides multiples of 16
    files = [save(face, tmp_path / "up.png"), save(face, tmp_path / "turned6.png", 6),
             save(face, tmp_path / "turned3.png", 3), save(face, tmp_path / "up.jpg"),
             save(face, tmp_path / "turned8.jpg", 8)]
    sideways = tmp_path / "sideways.png"
    Image.fromarray(face).transpose(STORED[6]).save(sideways)  # the same turn without its tag
    rows, skipped = predict(str(tiny_checkpoints["handcrafted"]), [*files, sideways], device="cpu")
    assert not skipped
    probs = {Path(r["file"]).name: np.array([float(v) for k, v in r.items() if k.startswith("p_")]) for r in rows}
    assert len({r["predicted"] for r in rows[:5]}) == 1
    for turned in ("turned6.png", "turned3.png"):  # the same pixels (up to the last printed digit of a batch)
        assert np.abs(probs[turned] - probs["up.png"]).max() <= 2e-6
    assert np.abs(probs["turned8.jpg"] - probs["up.jpg"]).max() < 0.05
    assert np.abs(probs["sideways.png"] - probs["up.png"]).max() > 1e-3  # the model does see the turn
