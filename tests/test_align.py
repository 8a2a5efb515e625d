"""data.face_crop=align: MTCNN's eyes, a similarity transform to a canonical face, used the same everywhere."""

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fer_lightning.data.align import LandmarkDetector, eye_transform
from fer_lightning.data.crop import FaceCropper
from fer_lightning.data.images import read_grey
from fer_lightning.deploy.exporters import metadata
from fer_lightning.deploy.prediction import predict
from fer_lightning.engine.training import train
from fer_lightning.errors import FERError
from fer_lightning.models import load_model
from fer_lightning.runs.checkpoints import read_checkpoint

from .test_predict import assert_reproduces_run, rows_of

pytest.importorskip("facenet_pytorch")
FIXTURES = Path(__file__).parent / "fixtures" / "london-faces"
PHOTOS = sorted(FIXTURES.glob("*/*.jpg"))
SETTINGS = {"mode": "align", "min_face": 0.15, "fallback": 0.6, "eye_distance": 0.3, "eye_height": 0.4}


def assert_canonical(crop: np.ndarray, detector: LandmarkDetector, name: str) -> None:
    """The eyes of an aligned face, found again: level, 0.3 x the side apart, at 0.4 x the side from the top."""
    side = crop.shape[0]
    assert crop.shape == (side, side), name
    face = detector(crop)[0]
    (lx, ly), (rx, ry) = face.left_eye, face.right_eye
    assert abs(ly - ry) <= 0.02 * side, (name, ly, ry)
    assert abs((rx - lx) - 0.3 * side) <= 0.03 * side, (name, rx - lx)
    assert abs((ly + ry) / 2 - 0.4 * side) <= 0.03 * side and abs((lx + rx) / 2 - 0.5 * side) <= 0.03 * side, name


def test_aligned_faces_are_canonical_even_when_the_photo_is_tilted():
    crop, detector = FaceCropper("align"), LandmarkDetector()
    for p in PHOTOS:
        img = read_grey(p)
        faces = crop.faces(img, p)
        assert len(faces) == 1, p
        top, left, h, w = faces[0].box
        assert 0 <= top and 0 <= left and top + h <= img.shape[0] and left + w <= img.shape[1]
        np.testing.assert_array_equal(crop(img, p), faces[0].image)
        assert_canonical(faces[0].image, detector, p.name)
    tilted = np.asarray(Image.fromarray(read_grey(PHOTOS[0])).rotate(12, resample=Image.Resampling.BILINEAR))
    assert_canonical(crop(tilted, "tilted"), detector, "tilted")
    assert crop.missed == []


def test_eye_transform_maps_the_eyes_to_their_canonical_places():
    m, side = eye_transform((100.0, 120.0), (140.0, 110.0), 0.3, 0.4)
    d = np.hypot(40, 10)
    assert side == round(d / 0.3)
    for (x, y), (ex, ey) in (((0.35 * side, 0.4 * side), (100, 120)), ((0.65 * side, 0.4 * side), (140, 110))):
        np.testing.assert_allclose(m @ [x, y, 1], [ex, ey, 1], atol=1e-9)


def test_align_settings_fallback_and_missing_extra(monkeypatch, caplog):
    crop = FaceCropper("align")
    assert crop.settings() == SETTINGS and FaceCropper.from_settings(SETTINGS).settings() == SETTINGS
    flat = np.full((120, 120), 128, np.uint8)
    assert crop(flat, "blank.png").shape == (72, 72) and crop.faces(flat) == []  # centre crop, as detect
    assert crop.missed == ["blank.png"]
    with pytest.raises(FERError, match="eye_distance=1.5"):
        FaceCropper("align", eye_distance=1.5)
    monkeypatch.setitem(sys.modules, "facenet_pytorch", None)
    with pytest.raises(FERError, match=r"needs the optional extra 'align'.*pip install 'fer-lightning\[align\]'"):
        FaceCropper("align")(flat)


@pytest.mark.slow
def test_train_predict_video_and_export_share_the_alignment(make_cfg, tmp_path):
    faces = tmp_path / "faces"
    for source, label in (("happiness", "happy"), ("neutral", "neutral")):
        shutil.copytree(FIXTURES / source, faces / label)
    m = train(make_cfg("data=folder", f"data.root={faces}", "data.folds=3", "data.val_size=2",
                       "data.face_crop=align", "model=handcrafted", "trainer.max_epochs=1"))
    ckpt = m["best_checkpoint"]
    record = torch.load(ckpt, weights_only=True)["fer_lightning"]
    assert record["preprocessing"] == {"image_size": 64, "face_crop": SETTINGS}
    rows, _ = predict(ckpt, faces)
    assert assert_reproduces_run(tmp_path / "run", rows, root=faces) == len(rows_of(tmp_path / "run" /
                                                                                   "predictions.csv")) > 0
    assert metadata(read_checkpoint(ckpt), ckpt, load_model(ckpt), "uint8")["face_crop"] == SETTINGS
    av = pytest.importorskip("av")
    from fer_lightning.deploy.video import video_rows

    from .test_video import write_video

    frames = [np.asarray(Image.open(p).convert("RGB")) for p in PHOTOS[:3]]
    write_video(tmp_path / "faces.mp4", frames, fps=5)
    rows = list(video_rows(ckpt, tmp_path / "faces.mp4", smoothing=0.5))
    assert [r["frame"] for r in rows] == [0, 1, 2] and av is not None
    for r in rows:  # one aligned face per frame, inside the frame
        assert 0 <= r["top"] and r["top"] + r["height"] <= 256 and 0 <= r["left"] and r["left"] + r["width"] <= 256
        assert 100 <= r["height"] <= 220
