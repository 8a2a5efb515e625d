"""predict on videos (PyAV): every n-th frame, one row per face, EMA smoothing, the annotated copy."""

import csv
import math
import sys
from fractions import Fraction

import numpy as np
import pytest
import torch
from PIL import Image

from fer_lightning.data.decoded import decode_store
from fer_lightning.data.images import resize_grey
from fer_lightning.data.preprocessing import Preprocessing
from fer_lightning.data.sources.jaffe import scan_jaffe
from fer_lightning.deploy.video import BOX_COLOUR, Smoother, is_video, video_rows
from fer_lightning.errors import FERError
from fer_lightning.models import load_model

from .conftest import run_cli

av = pytest.importorskip("av")
FPS, N_FRAMES, SIDE = 10, 12, 96


def write_video(path, frames, fps=FPS):
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        for rgb in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def read_frames(path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


@pytest.fixture(scope="module")
def clip(synthetic_dir, cache_dir, tmp_path_factory):
    """A 12-frame, 10 fps video: one synthetic face for six frames, then another expression of the same person."""
    records = [r for r in scan_jaffe(synthetic_dir) if r.subject == scan_jaffe(synthetic_dir)[0].subject]
    store = decode_store([records[0], records[-1]], Preprocessing(SIDE), cache_dir, name="video-faces")
    a, b = store.images[:, 0].numpy()
    frames = [np.repeat((a if i < N_FRAMES // 2 else b)[:, :, None], 3, axis=2) for i in range(N_FRAMES)]
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    write_video(path, frames)
    return path


def ema_labels(rows, classes, smoothing):
    ema, out = None, []
    for r in rows:
        p = np.array([float(r[f"p_{c}"]) for c in classes])
        ema = p if ema is None else smoothing * ema + (1 - smoothing) * p
        out.append(classes[int(ema.argmax())])
    return out


@pytest.mark.slow
def test_video_rows_frames_smoothing_and_annotated_copy(tiny_checkpoints, clip, tmp_path):
    ckpt = tiny_checkpoints["handcrafted"]
    model = load_model(str(ckpt)).eval()
    classes = list(model.class_names)
    annotated = tmp_path / "annotated.mp4"
    rows = list(video_rows(str(ckpt), clip, stride=2, smoothing=0.8, output_video=annotated))
    # every second frame, one face each (face_crop none: the whole frame), at the frame's time
    assert [r["frame"] for r in rows] == list(range(0, N_FRAMES, 2))
    assert [float(r["time"]) for r in rows] == pytest.approx([i / FPS for i in range(0, N_FRAMES, 2)], abs=1e-3)
    assert {r["face"] for r in rows} == {0} and {(r["top"], r["left"], r["height"], r["width"]) for r in rows} == {
        (0, 0, SIDE, SIDE)}
    # the probabilities are the model's on the decoded frames, prepared as image files are
    decoded = read_frames(clip)
    assert len(decoded) == N_FRAMES
    grey = [np.asarray(Image.fromarray(decoded[r["frame"]]).convert("L")) for r in rows]
    x = torch.from_numpy(np.stack([resize_grey(g, 64) for g in grey])).unsqueeze(1).float() / 255
    with torch.no_grad():
        expected = model(x).softmax(-1).numpy()
    got = np.array([[float(r[f"p_{c}"]) for c in classes] for r in rows])
    np.testing.assert_allclose(got, expected, atol=2e-6)
    assert [r["predicted"] for r in rows] == [classes[i] for i in expected.argmax(1)]
    assert [r["smoothed"] for r in rows] == ema_labels(rows, classes, 0.8)
    unsmoothed = list(video_rows(str(ckpt), clip, stride=2, smoothing=0.0))
    assert [r["smoothed"] for r in unsmoothed] == [r["predicted"] for r in unsmoothed]
    # the annotated copy: every frame, same size, the face box drawn on the frame's border
    out = read_frames(annotated)
    assert len(out) == N_FRAMES and out[0].shape == decoded[0].shape
    red_minus_green = BOX_COLOUR[0] - BOX_COLOUR[1]
    for before, after in zip(decoded, out, strict=True):
        # the left edge of the box (the whole frame), below the label: red on a grey face
        edge = after[SIDE // 4 :, 0].astype(float)
        assert (edge[:, 0] - edge[:, 1]).mean() > red_minus_green / 2, (edge[:, 0] - edge[:, 1]).mean()
        assert abs((before[SIDE // 4 :, 0, 0].astype(float) - before[SIDE // 4 :, 0, 1]).mean()) < 10
        centre = slice(SIDE // 3, 2 * SIDE // 3)
        assert np.abs(after[centre, centre].astype(float) - before[centre, centre]).mean() < 6  # the face untouched


def test_smoother_tracks_faces_by_overlap():
    s = Smoother(0.5)
    p = np.array([[1.0, 0.0], [0.0, 1.0]])
    first = s.update([(0, 0, 10, 10), (0, 50, 10, 10)], p)
    assert [t.id for t in first] == [0, 1]
    second = s.update([(0, 52, 10, 10), (1, 1, 10, 10)], np.array([[1.0, 0.0], [1.0, 0.0]]))
    assert [t.id for t in second] == [1, 0]  # matched by overlap, not by order
    np.testing.assert_allclose(second[0].ema, [0.5, 0.5]) and np.testing.assert_allclose(second[1].ema, [1.0, 0.0])
    third = s.update([(100, 100, 10, 10)], np.array([[0.0, 1.0]]))
    assert [t.id for t in third] == [2]  # a new face, a new track
    with pytest.raises(FERError, match=r"smoothing=1.0 must be in \[0, 1\)"):
        Smoother(1.0)


def test_video_inputs_and_errors(tiny_checkpoints, tmp_path, monkeypatch):
    assert is_video("a/b.MP4") and is_video("x.webm") and is_video("camera:0") and not is_video("a.jpg")
    ckpt = str(tiny_checkpoints["handcrafted"])
    with pytest.raises(FERError, match="no such video file"):
        list(video_rows(ckpt, tmp_path / "missing.mp4"))
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    with pytest.raises(FERError, match="bad.mp4: cannot open this video"):
        list(video_rows(ckpt, tmp_path / "bad.mp4"))
    with pytest.raises(FERError, match="stride=0 must be 1 or more"):
        list(video_rows(ckpt, tmp_path / "bad.mp4", stride=0))
    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(FERError, match=r"optional extra 'video' \(PyAV\): pip install 'fer-lightning\[video\]'"):
        list(video_rows(ckpt, tmp_path / "bad.mp4"))


@pytest.mark.slow
def test_predict_cli_on_a_video(tiny_checkpoints, clip, tmp_path):
    out = tmp_path / "rows.csv"
    res = run_cli("fer_lightning.predict", f"ckpt_path={tiny_checkpoints['deep']}", f"input={clip}", "stride=3",
                  f"output={out}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == math.ceil(N_FRAMES / 3) and list(rows[0])[:9] == [
        "frame", "time", "face", "top", "left", "height", "width", "predicted", "smoothed"]
    assert Fraction(rows[1]["time"]) == Fraction(3, FPS)
