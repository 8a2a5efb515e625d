"""Face cropping before resizing: none, a fixed box, scikit-image's LBP frontal-face cascade, or landmark
alignment (MTCNN's eyes, :mod:`fer_lightning.data.align`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from fer_lightning.errors import FERError
from fer_lightning.runtime.registry import choose

log = logging.getLogger(__name__)
MODES = ("none", "detect", "box", "align")


@dataclass(frozen=True)
class Face:
    """A face of an image: ``box`` ``(top, left, height, width)`` is the region it was taken from (for ``align``,
    the axis-aligned box around the rotated crop); ``image`` is the crop, before resizing."""

    box: tuple[int, int, int, int]
    image: np.ndarray


class FaceCropper:
    """Crops a ``(H, W)`` uint8 image to the face.

    * ``none``: the image as it is (JAFFE, as in the paper);
    * ``box``: the fixed box ``[top, left, height, width]`` in pixels;
    * ``detect``: the largest face found by ``skimage.feature.Cascade`` with the bundled LBP frontal-face
      cascade, grown by ``margin`` (a fraction of the face size) on every side, made square and kept inside the
      image; where no face is found, a centre square of ``fallback`` x the shorter side, with one warning line.
    * ``align``: the largest face found by MTCNN (:mod:`fer_lightning.data.align`, the optional extra ``align``),
      rotated and scaled about its eyes to a canonical square: eyes level, ``eye_distance`` x the side apart, at
      ``eye_height`` x the side from the top; where no face is found, the same centre crop as ``detect``.

    :meth:`faces` gives every face of an image (video frames); calling the cropper gives the image's one face.
    """

    def __init__(self, mode: str = "none", margin: float = 0.2, box: Sequence[int] | None = None,
                 min_face: float = 0.15, fallback: float = 0.6, eye_distance: float = 0.3,
                 eye_height: float = 0.4) -> None:
        choose(mode, MODES, "data.face_crop")
        if mode == "box" and (box is None or len(box) != 4 or min(box[2:]) <= 0):
            raise FERError("data.face_crop=box needs data.crop_box=[top, left, height, width] in pixels")
        self.mode, self.margin, self.box = mode, float(margin), None if box is None else [int(v) for v in box]
        self.min_face, self.fallback = float(min_face), float(fallback)
        if not (0 < eye_distance < 1 and 0 < eye_height < 1):
            raise FERError(f"face alignment: eye_distance={eye_distance} and eye_height={eye_height} must be in (0, 1)")
        self.eye_distance, self.eye_height = float(eye_distance), float(eye_height)
        self.missed: list[str] = []

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> FaceCropper:
        """The cropper that :meth:`settings` describes."""
        s = dict(settings)
        return cls(s.pop("mode", "none"), **s)

    def settings(self) -> dict[str, Any]:
        """What changes the cropped pixels (part of the decoded-image cache key)."""
        if self.mode == "none":
            return {"mode": "none"}
        if self.mode == "box":
            return {"mode": "box", "box": self.box}
        if self.mode == "align":
            return {"mode": "align", "min_face": self.min_face, "fallback": self.fallback,
                    "eye_distance": self.eye_distance, "eye_height": self.eye_height}
        return {"mode": "detect", "margin": self.margin, "min_face": self.min_face, "fallback": self.fallback}

    @cached_property
    def _cascade(self):
        from skimage.data import lbp_frontal_face_cascade_filename
        from skimage.feature import Cascade

        return Cascade(lbp_frontal_face_cascade_filename())

    @cached_property
    def _landmarks(self):
        from fer_lightning.data.align import LandmarkDetector

        return LandmarkDetector()

    def _smallest(self, img: np.ndarray) -> int:
        return max(24, int(self.min_face * min(img.shape)))

    def detect_all(self, img: np.ndarray) -> list[tuple[int, int, int, int]]:
        """Every face the cascade finds, ``(top, left, height, width)``, the largest first."""
        h, w = img.shape
        smallest = self._smallest(img)
        faces = self._cascade.detect_multi_scale(img=img, scale_factor=1.1, step_ratio=1,
                                                 min_size=(smallest, smallest), max_size=(h, w))
        faces = sorted(faces, key=lambda d: -d["width"] * d["height"])
        return [(int(f["r"]), int(f["c"]), int(f["height"]), int(f["width"])) for f in faces]

    def detect(self, img: np.ndarray) -> tuple[int, int, int, int] | None:
        """The largest face ``(top, left, height, width)``, or None."""
        faces = self.detect_all(img)
        return faces[0] if faces else None

    def _grown(self, face: tuple[int, int, int, int], shape: tuple[int, int]) -> tuple[int, int, int, int]:
        """A detected face grown by ``margin`` on every side, squared and kept inside the image."""
        h, w = shape
        top, left, fh, fw = face
        side = min(int(round(max(fh, fw) * (1 + 2 * self.margin))), h, w)
        cy, cx = top + fh / 2, left + fw / 2
        top = int(round(min(max(cy - side / 2, 0), h - side)))
        left = int(round(min(max(cx - side / 2, 0), w - side)))
        return top, left, side, side

    def _fallback(self, img: np.ndarray, path: str | Path) -> tuple[int, int, int, int]:
        h, w = img.shape
        self.missed.append(str(path))
        log.warning("%s: no face found; using a centre crop", path)
        side = int(round(self.fallback * min(h, w)))
        return (h - side) // 2, (w - side) // 2, side, side

    def region(self, img: np.ndarray, path: str | Path = "") -> tuple[int, int, int, int]:
        """The crop ``(top, left, height, width)`` for this image (inside it); for ``box`` and ``detect``."""
        h, w = img.shape
        if self.mode == "box":
            top, left, bh, bw = self.box
            if top < 0 or left < 0 or top + bh > h or left + bw > w:
                raise FERError(f"{path}: data.crop_box={self.box} does not fit in this {h}x{w} image")
            return top, left, bh, bw
        face = self.detect(img)
        return self._fallback(img, path) if face is None else self._grown(face, (h, w))

    def _aligned(self, img: np.ndarray) -> list[Face]:
        from fer_lightning.data.align import eye_transform, footprint, warp

        out = []
        for f in self._landmarks(img):
            if min(f.box[2] - f.box[0], f.box[3] - f.box[1]) < self._smallest(img):
                continue
            m, side = eye_transform(f.left_eye, f.right_eye, self.eye_distance, self.eye_height)
            out.append(Face(footprint(m, side, img.shape), warp(img, m, side)))
        return out

    def faces(self, img: np.ndarray, path: str | Path = "") -> list[Face]:
        """Every face of the image, the largest first (none found: an empty list): the whole image for ``none``,
        the box for ``box``; no fallback crop."""
        if self.mode == "none":
            return [Face((0, 0, *img.shape), img)]
        if self.mode == "box":
            top, left, ch, cw = self.region(img, path)
            return [Face((top, left, ch, cw), img[top : top + ch, left : left + cw])]
        if self.mode == "align":
            return self._aligned(img)
        out = []
        for face in self.detect_all(img):
            top, left, ch, cw = self._grown(face, img.shape)
            out.append(Face((top, left, ch, cw), img[top : top + ch, left : left + cw]))
        return out

    def face(self, img: np.ndarray, path: str | Path = "") -> Face:
        """The image's face (the largest) and where it was taken from; the centre crop, with a warning (and
        ``path`` added to ``missed``), where none is found."""
        if self.mode == "none":
            return Face((0, 0, *img.shape), img)
        if self.mode == "align":
            faces = self._aligned(img)
            if faces:
                return faces[0]
            top, left, ch, cw = self._fallback(img, path)
        else:
            top, left, ch, cw = self.region(img, path)
        return Face((top, left, ch, cw), img[top : top + ch, left : left + cw])

    def __call__(self, img: np.ndarray, path: str | Path = "") -> np.ndarray:
        """The image's face (the largest), or the centre crop with a warning where none is found."""
        return self.face(img, path).image
