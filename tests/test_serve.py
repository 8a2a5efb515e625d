"""fer-serve: answers equal fer-predict's (London photos, generated images, every upload way), bad requests are
4xx and leave the server up, /info and /metrics say what they should, an exported ONNX file is served."""

from __future__ import annotations

import io
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from fer_lightning.data.images import read_grey
from fer_lightning.data.preprocessing import Preprocessing
from fer_lightning.deploy.exporters import export
from fer_lightning.deploy.metrics import ServeMetrics
from fer_lightning.deploy.prediction import predict

from .conftest import LONDON_FIXTURES
from .serving import london_photos, serving

ATOL = 1e-5


@pytest.fixture(scope="module")
def deep_server(tiny_checkpoints, tmp_path_factory):
    """The tiny deep checkpoint served with dynamic batching and small request limits."""
    ckpt = tiny_checkpoints["deep"]
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with serving(ckpt, "max_batch_size=4", "batch_timeout=0.05", "max_bytes=3000000", "max_pixels=4000000",
                 "threads=1", log=log) as url:
        yield ckpt, url


def post_file(url: str, path: Path, raw: bool = False) -> httpx.Response:
    data = path.read_bytes()
    if raw:
        kind = {".jpg": "image/jpeg", ".png": "image/png", ".webp": "image/webp"}.get(path.suffix, "image/tiff")
        return httpx.post(f"{url}/predict", content=data, headers={"content-type": kind}, timeout=120)
    return httpx.post(f"{url}/predict", files={"image": (path.name, data)}, timeout=120)


def assert_equal_to_predict(ckpt: Path, url: str, files: list[Path], raw: bool = False, atol: float = ATOL) -> None:
    """Each served answer: the label and every probability of fer-predict's row for the same file."""
    rows, skipped = predict(str(ckpt), files)
    assert not skipped and len(rows) == len(files)
    with ThreadPoolExecutor(8) as pool:  # concurrent: the server forms batches
        answers = list(pool.map(lambda f: post_file(url, f, raw), files))
    for row, answer in zip(rows, answers, strict=True):
        assert answer.status_code == 200, answer.text
        got = answer.json()
        assert got["label"] == row["predicted"], row["file"]
        assert list(got["probabilities"]) == got["classes"] == [k[2:] for k in row if k.startswith("p_")]
        for cls, p in got["probabilities"].items():
            assert abs(p - float(row[f"p_{cls}"])) <= atol, (row["file"], cls, p, row[f"p_{cls}"])


@pytest.mark.slow
def test_served_answers_equal_fer_predict_on_20_london_photos(deep_server):
    ckpt, url = deep_server
    files = london_photos(20)
    if len(files) < 20:
        pytest.skip("the London faces (../shared/data/london-faces-256) are not beside the clone; "
                    "test_served_answers_equal_fer_predict_on_generated_images still runs")
    assert_equal_to_predict(ckpt, url, files)


@pytest.mark.slow
def test_served_answers_equal_fer_predict_on_generated_images(deep_server, tmp_path, synthetic_dir):
    """Every upload format and way: synthetic TIFFs, their PNG / WebP / JPEG copies, a colour fixture photo, a
    photo stored sideways (EXIF orientation 6); multipart and raw bodies."""
    ckpt, url = deep_server
    files = sorted(synthetic_dir.glob("*.tiff"))[:4]
    for i, f in enumerate(files[:3]):
        for suffix in (".png", ".webp", ".jpg"):
            Image.open(f).save(tmp_path / f"{i}{suffix}", **({"lossless": True} if suffix == ".webp" else {}))
            files.append(tmp_path / f"{i}{suffix}")
    photo = Image.open(LONDON_FIXTURES / "happiness" / "001.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6
    photo.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "sideways.jpg", exif=exif)
    files += [LONDON_FIXTURES / "neutral" / "001.jpg", tmp_path / "sideways.jpg"]
    assert read_grey(tmp_path / "sideways.jpg").shape == np.asarray(photo).shape[:2]  # read upright
    assert_equal_to_predict(ckpt, url, files)
    assert_equal_to_predict(ckpt, url, files[:6], raw=True)


def bad_requests() -> list[tuple[str, dict]]:
    """30 requests the server must refuse with a 4xx: (what, httpx.post keyword arguments)."""
    png = io.BytesIO()
    Image.new("L", (64, 64), 128).save(png, "PNG")
    good = png.getvalue()
    bomb = io.BytesIO()
    Image.new("1", (4000, 4000)).save(bomb, "PNG")  # 16 M pixels in a few kB: over max_pixels=4e6
    jpeg = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(jpeg, "JPEG")
    gif = io.BytesIO()
    Image.new("L", (8, 8)).save(gif, "GIF")
    big = b"\xff" * (50 * 2**20)  # a 50 MB body
    cases = [
        ("text as an image", {"content": b"hello, not an image", "headers": {"content-type": "image/png"}}),
        ("text upload", {"files": {"image": ("a.png", b"plain text")}}),
        ("truncated PNG", {"content": good[: len(good) // 2], "headers": {"content-type": "image/png"}}),
        ("truncated JPEG", {"content": jpeg.getvalue()[:200], "headers": {"content-type": "image/jpeg"}}),
        ("truncated upload", {"files": {"image": ("t.jpg", jpeg.getvalue()[:300])}}),
        ("PNG header only", {"content": good[:8], "headers": {"content-type": "image/png"}}),
        ("decompression bomb", {"content": bomb.getvalue(), "headers": {"content-type": "image/png"}}),
        ("decompression bomb upload", {"files": {"image": ("b.png", bomb.getvalue())}}),
        ("50 MB body", {"content": big, "headers": {"content-type": "image/jpeg"}}),
        ("50 MB upload", {"files": {"image": ("big.jpg", big)}}),
        ("JSON", {"json": {"image": "/etc/passwd"}}),
        ("a path as text", {"content": b"/etc/passwd", "headers": {"content-type": "text/plain"}}),
        ("a path as the body", {"content": b"/etc/passwd", "headers": {"content-type": "image/png"}}),
        ("form field, no file", {"data": {"image": "/etc/passwd"}}),
        ("form of text fields", {"data": {"path": "x.jpg"}, "files": {}}),
        ("empty body", {"content": b"", "headers": {"content-type": "image/jpeg"}}),
        ("empty octet stream", {"content": b"", "headers": {"content-type": "application/octet-stream"}}),
        ("empty upload", {"files": {"image": ("e.png", b"")}}),
        ("no content type", {"content": good}),
        ("HTML", {"content": b"<html></html>", "headers": {"content-type": "text/html"}}),
        ("XML", {"content": b"<a/>", "headers": {"content-type": "application/xml"}}),
        ("video", {"content": good, "headers": {"content-type": "video/mp4"}}),
        ("GIF (not accepted)", {"content": gif.getvalue(), "headers": {"content-type": "application/octet-stream"}}),
        ("broken multipart", {"content": b"--x\r\nnonsense", "headers": {"content-type": "multipart/form-data; "
                                                                                        "boundary=x"}}),
        ("multipart, no boundary", {"content": good, "headers": {"content-type": "multipart/form-data"}}),
        ("url-encoded form", {"content": b"image=a.jpg", "headers": {"content-type":
                                                                      "application/x-www-form-urlencoded"}}),
        ("zeros", {"content": bytes(5000), "headers": {"content-type": "image/tiff"}}),
        ("random bytes", {"content": np.random.default_rng(0).bytes(5000), "headers": {"content-type": "image/webp"}}),
        ("TIFF header only", {"content": b"II*\x00\x08\x00\x00\x00", "headers": {"content-type": "image/tiff"}}),
        ("one byte over max_bytes", {"content": b"\x89PNG" + bytes(3_000_000 - 3),
                                     "headers": {"content-type": "image/png"}}),
    ]
    assert len(cases) == 30
    return cases


@pytest.mark.slow
def test_30_bad_requests_are_4xx_and_the_server_stays_up(deep_server):
    _, url = deep_server
    for what, kwargs in bad_requests():
        r = httpx.post(f"{url}/predict", timeout=60, **kwargs)
        assert 400 <= r.status_code < 500, (what, r.status_code, r.text)
        error = r.json()["error"]
        assert error and "\n" not in error and r.text.count("\n") == 0, (what, r.text)
    assert httpx.get(f"{url}/health", timeout=10).text == "ok"
    ok = httpx.post(f"{url}/predict", files={"image": ("f.jpg", (LONDON_FIXTURES / "neutral" / "001.jpg")
                                                        .read_bytes())}, timeout=60)
    assert ok.status_code == 200 and ok.json()["label"]


@pytest.mark.slow
def test_info_and_metrics(deep_server):
    ckpt, url = deep_server
    info = httpx.get(f"{url}/info", timeout=10).json()["model"]
    rows, _ = predict(str(ckpt), [LONDON_FIXTURES / "neutral" / "001.jpg"])
    assert info["classes"] == [k[2:] for k in rows[0] if k.startswith("p_")]
    assert info["name"] == "deep" and info["format"] == "ckpt" and info["file"] == Path(ckpt).name
    assert info["preprocessing"] == {"image_size": 64, "face_crop": {"mode": "none"}}
    assert info["max_batch_size"] == 4 and info["max_pixels"] == 4000000 and info["version"]

    def counts() -> dict[str, float]:
        text = httpx.get(f"{url}/metrics", timeout=10).text
        return {k: float(v) for k, v in (line.rsplit(" ", 1) for line in text.splitlines() if line[0] != "#")}

    before = counts()
    photo = (LONDON_FIXTURES / "happiness" / "001.jpg").read_bytes()
    with ThreadPoolExecutor(6) as pool:
        statuses = list(pool.map(lambda _: httpx.post(f"{url}/predict", files={"image": ("p.jpg", photo)},
                                                      timeout=60).status_code, range(6)))
    httpx.post(f"{url}/predict", content=b"", headers={"content-type": "image/png"}, timeout=10)
    after = counts()
    assert statuses == [200] * 6
    ok, refused = 'fer_serve_requests_total{status="200"}', 'fer_serve_requests_total{status="400"}'
    assert after[ok] - before.get(ok, 0) == 6 and after[refused] - before.get(refused, 0) == 1
    assert after["fer_serve_latency_seconds_count"] - before.get("fer_serve_latency_seconds_count", 0) == 6
    quantiles = [after[f'fer_serve_latency_seconds{{quantile="{q}"}}'] for q in (0.5, 0.95, 0.99)]
    assert 0 < quantiles[0] <= quantiles[1] <= quantiles[2]
    sizes = {int(k.split('"')[1]): v - before.get(k, 0) for k, v in after.items() if k.startswith("fer_serve_batches")}
    assert sum(s * n for s, n in sizes.items()) == 6 and max(sizes) <= 4  # every image in one batch of <= 4


def test_metrics_count_batches_once():
    m = ServeMetrics()
    for _ in range(3):
        m.record(200, 0.5, 3)
    m.record(200, 0.1, 1)
    m.record(413, 0.01)
    assert m.batches() == {1: 1, 3: 1} and m.summary()["requests"] == {200: 4, 413: 1}
    assert m.percentiles()[0.5] == pytest.approx(0.5)


def test_the_batching_worker_waits_then_fills_a_batch():
    """A worker takes what is queued up to max_batch_size, waits batch_timeout after a batch's first request for
    more (no longer), blocks (no polling) while nothing comes, and stops on LitServe's sentinel."""
    import queue
    import threading
    import time

    from litserve.loops.base import _SENTINEL_VALUE, _StopLoopError

    from fer_lightning.deploy.serving import WaitingBatchedLoop

    class API:
        max_batch_size, batch_timeout, request_timeout = 3, 1.0, 30

    loop, requests = WaitingBatchedLoop(), queue.Queue()
    for i in range(4):
        requests.put((0, f"u{i}", time.monotonic(), i))
    batch, late = loop.get_batch_requests(API, requests, None)
    assert [x for _, _, x in batch] == [0, 1, 2] and late == []
    threading.Timer(0.1, requests.put, [(0, "u4", time.monotonic(), 4)]).start()  # well within the batch's 1 s wait
    began = time.monotonic()
    batch, _ = loop.get_batch_requests(API, requests, None)
    assert [x for _, _, x in batch] == [3, 4] and 0.99 <= time.monotonic() - began < 6
    began = time.monotonic()
    assert loop.get_batch_requests(API, requests, None) == ([], []) and time.monotonic() - began >= 0.9
    requests.put(_SENTINEL_VALUE)
    with pytest.raises(_StopLoopError):
        loop.get_batch_requests(API, requests, None)


@pytest.mark.slow
def test_onnx_file_of_a_handcrafted_model_with_face_detection(make_cfg, tmp_path):
    """An exported ONNX file is served: the answers equal fer-predict's on its checkpoint (within the export's own
    tolerance), and the face box is the one the run's preprocessing crops."""
    from fer_lightning.engine.training import train

    ckpt = Path(train(make_cfg("model=handcrafted", "trainer.max_epochs=1", "data.face_crop=detect"))[
        "best_checkpoint"])
    onnx = export(ckpt, "onnx", tmp_path / "fer.onnx")["onnx"]
    files = [LONDON_FIXTURES / c / n for c in ("happiness", "neutral") for n in ("001.jpg", "002.jpg")]
    with serving(onnx, "max_batch_size=4", log=tmp_path / "serve.log") as url:
        info = httpx.get(f"{url}/info", timeout=10).json()["model"]
        assert info["format"] == "onnx" and info["name"] == "handcrafted"
        assert info["preprocessing"]["face_crop"]["mode"] == "detect"
        assert_equal_to_predict(ckpt, url, files, atol=1e-4)
        prep = Preprocessing.from_record({"preprocessing": info["preprocessing"]})
        for f in files:
            answer = post_file(url, f).json()
            face = prep.cropper.face(read_grey(f))
            assert answer["face"]["box"] == list(face.box), f
    assert json.loads(json.dumps(answer))["model"] == "handcrafted"
