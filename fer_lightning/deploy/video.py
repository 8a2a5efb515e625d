"""Expressions in video files and from live cameras (``predict input=clip.mp4`` / ``input=camera:0``).

Frames are decoded with PyAV (the optional extra ``video``; it bundles FFmpeg). Every ``stride``-th frame is
turned grey exactly like an image file (ITU-R 601 luma), every face in it is found with the checkpoint's face
crop and prepared as in training (crop, resize to the checkpoint's size), and classified. One row per (frame,
face): frame index, time in seconds, a face track id, the face box, the class probabilities, the predicted
label and a temporally smoothed label: an exponential moving average of the face's probabilities,
``ema = smoothing * ema + (1 - smoothing) * p`` (``smoothing=0``: none), carried along a track that follows the
face from one processed frame to the next (best box overlap, IoU >= 0.3). With ``output_video`` the input is
written again with each face's box and smoothed label drawn on every frame.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from fer_lightning.data.crop import Face
from fer_lightning.deploy.inference import Classifier
from fer_lightning.errors import FERError

log = logging.getLogger(__name__)
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")
CAMERA = "camera:"
EXTRA = "video"
MIN_IOU = 0.3
BOX_COLOUR = (255, 64, 32)


def is_video(target: str | Path) -> bool:
    """A video file (by suffix) or a camera (``camera:<index or device>``)."""
    text = str(target)
    return text.startswith(CAMERA) or Path(text).suffix.lower() in VIDEO_SUFFIXES


def _av():
    try:
        import av
    except ImportError as e:
        raise FERError(
            f"video input needs the optional extra '{EXTRA}' (PyAV): pip install 'fer-lightning[{EXTRA}]' "
            f"or uv sync --extra {EXTRA}"
        ) from e
    return av


def open_input(target: str | Path):
    """A PyAV container for a video file or a camera: ``camera:0`` is ``/dev/video0`` through v4l2 on Linux,
    camera 0 through AVFoundation on macOS, and ``camera:<name>`` a DirectShow device on Windows."""
    av = _av()
    text = str(target)
    try:
        if text.startswith(CAMERA):
            name = text[len(CAMERA):]
            if sys.platform.startswith("linux"):
                return av.open(name if name.startswith("/dev/") else f"/dev/video{name}", format="v4l2")
            if sys.platform == "darwin":
                return av.open(name, format="avfoundation")
            return av.open(f"video={name}", format="dshow")
        path = Path(text).expanduser()
        if not path.is_file():
            raise FERError(f"input={path}: no such video file")
        return av.open(str(path))
    except av.FFmpegError as e:
        raise FERError(f"input={text}: cannot open this video or camera ({e.__class__.__name__}: {e})") from e


def iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """Intersection over union of two ``(top, left, height, width)`` boxes."""
    top, left = max(a[0], b[0]), max(a[1], b[1])
    bottom, right = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
    inter = max(0, bottom - top) * max(0, right - left)
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


@dataclass
class Track:
    id: int
    box: tuple[int, int, int, int]
    ema: np.ndarray


class Smoother:
    """Exponential moving averages of class probabilities, one per face track (see the module docstring)."""

    def __init__(self, smoothing: float) -> None:
        if not 0.0 <= smoothing < 1.0:
            raise FERError(f"smoothing={smoothing} must be in [0, 1): 0 is no smoothing, 0.9 is strong smoothing")
        self.smoothing = float(smoothing)
        self.tracks: list[Track] = []
        self.next_id = 0

    def update(self, boxes: list[tuple[int, int, int, int]], probs: np.ndarray) -> list[Track]:
        """The tracks of this frame's faces (same order as ``boxes``), their averages updated."""
        pairs = sorted(((iou(t.box, b), ti, bi) for ti, t in enumerate(self.tracks) for bi, b in enumerate(boxes)),
                       reverse=True)
        match: dict[int, Track] = {}
        used: set[int] = set()
        for overlap, ti, bi in pairs:
            if overlap < MIN_IOU:
                break
            if ti not in used and bi not in match:
                used.add(ti)
                match[bi] = self.tracks[ti]
        out = []
        for bi, (box, p) in enumerate(zip(boxes, probs, strict=True)):
            t = match.get(bi)
            if t is None:
                t = Track(self.next_id, box, p.astype(np.float64))
                self.next_id += 1
            else:
                t.box, t.ema = box, self.smoothing * t.ema + (1.0 - self.smoothing) * p
            out.append(t)
        self.tracks = out  # a face unseen in a processed frame starts a new track when it comes back
        return out


def _grey(rgb: np.ndarray) -> np.ndarray:
    """8-bit grey with PIL's ITU-R 601 luma, as image files are read."""
    return np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.uint8)


def _annotate(rgb: np.ndarray, labels: list[tuple[tuple[int, int, int, int], str]]) -> np.ndarray:
    img = Image.fromarray(rgb)
    draw = ImageDraw.Draw(img)
    width = max(2, min(rgb.shape[:2]) // 120)  # two pixels at least: chroma is subsampled 2x2 in the video
    for (top, left, h, w), text in labels:
        draw.rectangle([left, top, left + w - 1, top + h - 1], outline=BOX_COLOUR, width=width)
        tx, ty = left + width + 1, max(0, top - 12) if top >= 12 else top + width + 1
        draw.rectangle(draw.textbbox((tx, ty), text), fill=BOX_COLOUR)
        draw.text((tx, ty), text, fill=(255, 255, 255))
    return np.asarray(img)


class _Writer:
    """The annotated copy of the input: same size (trimmed to even), same frame rate; written under a temporary
    name and renamed when complete."""

    def __init__(self, dest: Path, rate: Fraction, width: int, height: int) -> None:
        av = _av()
        self.dest = dest
        self.tmp = dest.with_name(f".{dest.stem}.partial{dest.suffix}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        self.container = av.open(str(self.tmp), "w")
        codec = "libvpx" if dest.suffix.lower() == ".webm" else "h264" if "h264" in av.codecs_available else "mpeg4"
        self.stream = self.container.add_stream(codec, rate=rate)
        self.width, self.height = width - width % 2, height - height % 2
        self.stream.width, self.stream.height, self.stream.pix_fmt = self.width, self.height, "yuv420p"
        self.av = av

    def write(self, rgb: np.ndarray) -> None:
        frame = self.av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb[: self.height, : self.width]),
                                                format="rgb24")
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def close(self, complete: bool) -> None:
        try:
            if complete:
                for packet in self.stream.encode():
                    self.container.mux(packet)
        finally:
            self.container.close()
        if complete:
            os.replace(self.tmp, self.dest)
        else:
            self.tmp.unlink(missing_ok=True)


def video_rows(
    ckpt_path: str,
    target: str | Path,
    stride: int = 1,
    smoothing: float = 0.6,
    output_video: str | Path | None = None,
    device: str = "auto",
    max_frames: int | None = None,
) -> Iterator[dict[str, Any]]:
    """Rows ``{frame, time, face, top, left, height, width, predicted, smoothed, p_<class>...}``, one per face
    of every ``stride``-th frame, as the frames are decoded (a camera streams until it is interrupted or
    ``max_frames`` frames were read)."""
    if int(stride) < 1:
        raise FERError(f"stride={stride} must be 1 or more (every n-th frame)")
    smoother = Smoother(smoothing)
    clf = Classifier(ckpt_path, device)
    container = open_input(target)
    writer: _Writer | None = None
    complete = False
    try:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or Fraction(25)
        labels: list[tuple[tuple[int, int, int, int], str]] = []
        start: float | None = None
        for index, frame in enumerate(container.decode(stream)):
            if max_frames is not None and index >= max_frames:
                break
            rgb = frame.to_ndarray(format="rgb24")
            if output_video and writer is None:
                writer = _Writer(Path(output_video).expanduser(), Fraction(rate), rgb.shape[1], rgb.shape[0])
            if index % stride == 0:
                seconds = float(frame.time) if frame.time is not None else index / float(rate)
                start = seconds if start is None else start
                faces = clf.preprocessing.faces(_grey(rgb), f"{target}#frame{index}")
                rows = _classify(clf, faces, smoother, index, seconds - start)
                labels = [((r["top"], r["left"], r["height"], r["width"]), f"{r['face']}: {r['smoothed']}")
                          for r in rows]
                yield from rows
            if writer is not None:
                writer.write(_annotate(rgb, labels))
        complete = True
    finally:
        if writer is not None:
            writer.close(complete)
        container.close()


def _classify(clf: Classifier, faces: list[Face], smoother: Smoother, index: int,
              seconds: float) -> list[dict[str, Any]]:
    if not faces:
        smoother.update([], np.zeros((0, len(clf.classes))))
        return []
    probs = clf.probabilities([clf.preprocessing.resize(f.image) for f in faces])
    tracks = smoother.update([f.box for f in faces], probs)
    rows = []
    for face, p, track in zip(faces, probs, tracks, strict=True):
        top, left, h, w = face.box
        rows.append({"frame": index, "time": f"{seconds:.3f}", "face": track.id, "top": top, "left": left,
                     "height": h, "width": w, "predicted": clf.label(p), "smoothed": clf.label(track.ema),
                     **clf.columns(p)})
    return rows


def collect_video(cfg: Any, echo: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """All rows of the predict command's video or camera input (``cfg``: the predict config), each passed to
    ``echo`` as it comes; Ctrl-C ends a camera (or a video) early, keeping the rows so far."""
    rows: list[dict[str, Any]] = []
    try:
        for row in video_rows(cfg.ckpt_path, cfg.input, int(cfg.stride), float(cfg.smoothing), cfg.output_video,
                              cfg.device, None if cfg.max_frames is None else int(cfg.max_frames)):
            rows.append(row)
            if echo is not None:
                echo(row)
    except KeyboardInterrupt:
        log.info("interrupted after %d rows", len(rows))
    return rows
