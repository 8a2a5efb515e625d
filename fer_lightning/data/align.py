"""Landmark face alignment: MTCNN's five landmarks, then an eye-based similarity transform to a canonical face.

The landmark detector is facenet-pytorch's MTCNN (P-, R- and O-Net), whose weights ship inside its PyPI wheel:
nothing is downloaded at run time. It is an optional extra (``fer-lightning[align]``); without it,
``data.face_crop=align`` stops with one line naming the extra.

The canonical face is a square of ``side`` pixels with both eyes on one horizontal line at ``eye_height x side``
from the top, ``eye_distance x side`` apart and centred left to right. ``side`` is chosen so that the face keeps
its own resolution (the crop is resized to the training size afterwards, like every other crop).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from fer_lightning.errors import FERError

EXTRA = "align"
MISSING = (
    "data.face_crop=align needs the optional extra '{extra}' (facenet-pytorch's MTCNN landmark detector): "
    "pip install 'fer-lightning[{extra}]' or uv sync --extra {extra}"
)


@dataclass(frozen=True)
class Landmarks:
    """One face found by MTCNN, in pixel coordinates ``(x, y)`` of the image: its box ``(x1, y1, x2, y2)``, the
    eye in the left half of the image (the subject's right eye) and the other eye, and the detector's score."""

    box: tuple[float, float, float, float]
    left_eye: tuple[float, float]
    right_eye: tuple[float, float]
    score: float

    @property
    def area(self) -> float:
        x1, y1, x2, y2 = self.box
        return (x2 - x1) * (y2 - y1)


class LandmarkDetector:
    """MTCNN (facenet-pytorch) on ``(H, W)`` uint8 grey images, on the CPU; faces no smaller than
    ``min_face_px``. Built on first use."""

    def __init__(self, min_face_px: int = 20, thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)) -> None:
        self.min_face_px, self.thresholds = int(min_face_px), tuple(float(t) for t in thresholds)

    @cached_property
    def _mtcnn(self):
        try:
            from facenet_pytorch import MTCNN
        except ImportError as e:
            raise FERError(MISSING.format(extra=EXTRA)) from e
        return MTCNN(min_face_size=self.min_face_px, thresholds=list(self.thresholds), keep_all=True,
                     post_process=False, device="cpu")

    def __call__(self, img: np.ndarray) -> list[Landmarks]:
        """Every face in the image, the largest first."""
        import torch

        rgb = np.repeat(img[:, :, None], 3, axis=2)  # MTCNN reads colour; grey is the same on every channel
        threads = torch.get_num_threads()
        # MTCNN's many tiny convolutions gain nothing from threads and lose a lot on a busy machine (1.6 s
        # instead of 0.06 s per 256 px photo on 2 shared cores): one thread while it runs
        torch.set_num_threads(1)
        try:
            with torch.no_grad():
                boxes, scores, points = self._mtcnn.detect(rgb, landmarks=True)
        finally:
            torch.set_num_threads(threads)
        if boxes is None:
            return []
        faces = [
            Landmarks(tuple(float(v) for v in b), (float(p[0][0]), float(p[0][1])), (float(p[1][0]), float(p[1][1])),
                      float(s))
            for b, s, p in zip(boxes, scores, points, strict=True)
        ]
        return sorted(faces, key=lambda f: -f.area)


def eye_transform(left_eye: tuple[float, float], right_eye: tuple[float, float], eye_distance: float,
                  eye_height: float) -> tuple[np.ndarray, int]:
    """The similarity transform that maps the canonical face onto the image, and the canonical side.

    Returns ``(M, side)``: ``M`` is a 3x3 matrix taking an output pixel ``(x, y, 1)`` of the ``side x side``
    canonical face to its source position in the image (rotation about the eyes' midpoint so that they are
    level, scale so that they lie ``eye_distance x side`` apart at height ``eye_height x side``).
    """
    (lx, ly), (rx, ry) = left_eye, right_eye
    d = math.hypot(rx - lx, ry - ly)
    if d < 1e-6:
        raise ValueError("the two eyes coincide")
    side = max(8, int(round(d / eye_distance)))
    scale = d / (eye_distance * side)  # image pixels per output pixel (about 1)
    angle = math.atan2(ry - ly, rx - lx)
    c, s = scale * math.cos(angle), scale * math.sin(angle)
    cx_in, cy_in = (lx + rx) / 2, (ly + ry) / 2
    cx_out, cy_out = side / 2, eye_height * side
    m = np.array([[c, -s, cx_in - c * cx_out + s * cy_out],
                  [s, c, cy_in - s * cx_out - c * cy_out],
                  [0.0, 0.0, 1.0]])
    return m, side


def warp(img: np.ndarray, m: np.ndarray, side: int) -> np.ndarray:
    """The ``side x side`` uint8 image whose pixel ``(x, y)`` is the image at ``m @ (x, y, 1)`` (bilinear; the
    border pixels repeated outside the image)."""
    from skimage.transform import AffineTransform
    from skimage.transform import warp as sk_warp

    out = sk_warp(img, AffineTransform(matrix=m), output_shape=(side, side), order=1, mode="edge",
                  preserve_range=True)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def footprint(m: np.ndarray, side: int, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """The axis-aligned box ``(top, left, height, width)`` around the canonical square's corners in the image,
    kept inside it."""
    h, w = shape
    corners = m @ np.array([[0, side, 0, side], [0, 0, side, side], [1, 1, 1, 1]], dtype=np.float64)
    x0, x1 = max(0, int(math.floor(corners[0].min()))), min(w, int(math.ceil(corners[0].max())))
    y0, y1 = max(0, int(math.floor(corners[1].min()))), min(h, int(math.ceil(corners[1].max())))
    return y0, x0, max(1, y1 - y0), max(1, x1 - x0)
