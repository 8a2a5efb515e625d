"""Face cropping before resizing: none, a fixed box, or scikit-image's LBP frontal-face cascade."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from fer_lightning.errors import FERError

log = logging.getLogger(__name__)
MODES = ("none", "detect", "box")


class FaceCropper:
    """Crops a ``(H, W)`` uint8 image to the face.

    * ``none``: the image as it is (JAFFE, as in the paper);
    * ``box``: the fixed box ``[top, left, height, width]`` in pixels;
    * ``detect``: the largest face found by ``skimage.feature.Cascade`` with the bundled LBP frontal-face
      cascade, grown by ``margin`` (a fraction of the face size) on every side, made square and kept inside the
      image; where no face is found, a centre square of ``fallback`` x the shorter side, with one warning line.
    """

    def __init__(self, mode: str = "none", margin: float = 0.2, box: Sequence[int] | None = None,
                 min_face: float = 0.15, fallback: float = 0.6) -> None:
        if mode not in MODES:
            raise FERError(f"data.face_crop={mode} is unknown; choose one of: {', '.join(MODES)}")
        if mode == "box" and (box is None or len(box) != 4 or min(box[2:]) <= 0):
            raise FERError("data.face_crop=box needs data.crop_box=[top, left, height, width] in pixels")
        self.mode, self.margin, self.box = mode, float(margin), None if box is None else [int(v) for v in box]
        self.min_face, self.fallback = float(min_face), float(fallback)
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
        return {"mode": "detect", "margin": self.margin, "min_face": self.min_face, "fallback": self.fallback}

    @cached_property
    def _cascade(self):
        from skimage.data import lbp_frontal_face_cascade_filename
        from skimage.feature import Cascade

        return Cascade(lbp_frontal_face_cascade_filename())

    def detect(self, img: np.ndarray) -> tuple[int, int, int, int] | None:
        """The largest face ``(top, left, height, width)``, or None."""
        h, w = img.shape
        smallest = max(24, int(self.min_face * min(h, w)))
        faces = self._cascade.detect_multi_scale(img=img, scale_factor=1.1, step_ratio=1,
                                                 min_size=(smallest, smallest), max_size=(h, w))
        if not faces:
            return None
        f = max(faces, key=lambda d: d["width"] * d["height"])
        return int(f["r"]), int(f["c"]), int(f["height"]), int(f["width"])

    def region(self, img: np.ndarray, path: str | Path = "") -> tuple[int, int, int, int]:
        """The crop ``(top, left, height, width)`` for this image (inside it)."""
        h, w = img.shape
        if self.mode == "box":
            top, left, bh, bw = self.box
            if top < 0 or left < 0 or top + bh > h or left + bw > w:
                raise FERError(f"{path}: data.crop_box={self.box} does not fit in this {h}x{w} image")
            return top, left, bh, bw
        face = self.detect(img)
        if face is None:
            self.missed.append(str(path))
            log.warning("%s: no face found; using a centre crop", path)
            side = int(round(self.fallback * min(h, w)))
            return (h - side) // 2, (w - side) // 2, side, side
        top, left, fh, fw = face
        side = min(int(round(max(fh, fw) * (1 + 2 * self.margin))), h, w)
        cy, cx = top + fh / 2, left + fw / 2
        top = int(round(min(max(cy - side / 2, 0), h - side)))
        left = int(round(min(max(cx - side / 2, 0), w - side)))
        return top, left, side, side

    def __call__(self, img: np.ndarray, path: str | Path = "") -> np.ndarray:
        if self.mode == "none":
            return img
        top, left, ch, cw = self.region(img, path)
        return img[top : top + ch, left : left + cw]
