"""How a raw image becomes a model's input: ONE object, the same for training, evaluate, predict, video and export.

An image file is read as 8-bit grey (ITU-R 601 luma; palette, 16-bit and float images converted), its face is
cropped (``face_crop``: none, a fixed box, detection, landmark alignment), the crop is resized to
``image_size x image_size`` (antialiased bilinear) and kept as uint8; on the device it is scaled to ``[0, 1]``
(:func:`to_unit`, the scaling every model input goes through). Training keeps the uint8 crops once (the decoded
images); a checkpoint records this object (:meth:`Preprocessing.record`), and every later use rebuilds it from there
(:meth:`Preprocessing.from_record`), so predict, evaluate, video and exported files prepare faces as training did.

Examples:
    >>> import numpy as np
    >>> from fer_lightning.data.preprocessing import Preprocessing, to_unit
    >>> prep = Preprocessing(image_size=48)
    >>> prep.record()
    {'image_size': 48, 'face_crop': {'mode': 'none'}}
    >>> prep(np.zeros((120, 100), dtype=np.uint8)).shape
    (48, 48)
    >>> Preprocessing.from_record({"model": "deep"}) == Preprocessing()  # records older than the preprocessing record
    True
    >>> Preprocessing.from_options(image_size=64, face_crop="box", crop_box=[0, 0, 50, 50]).data_options()
    {'image_size': 64, 'face_crop': 'box', 'crop_box': [0, 0, 50, 50]}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from fer_lightning.data.crop import Face, FaceCropper
from fer_lightning.data.images import read_grey, resize_grey
from fer_lightning.errors import FERError
from fer_lightning.features.extractor import to_unit

__all__ = ["DEFAULT_RECORD", "Preprocessing", "to_unit"]

# what a checkpoint written before the preprocessing record (0.1.0) was trained with; dated shim, remove in 0.3
DEFAULT_RECORD: dict[str, Any] = {"image_size": 224, "face_crop": {"mode": "none"}}
MIN_IMAGE_SIZE = 32  # MobileNetV2's five stride-2 stages need at least this


@dataclass(frozen=True)
class Preprocessing:
    """Raw grey image -> the uint8 face a model sees, ``image_size x image_size``.

    Args:
        image_size: side of the square input in pixels (at least 32).
        face_crop: the face cropper's settings (:meth:`~fer_lightning.data.crop.FaceCropper.settings`):
            ``{"mode": "none"}`` (the image as it is), ``{"mode": "box", "box": [top, left, h, w]}``,
            ``{"mode": "detect", "margin": 0.2, ...}`` or ``{"mode": "align", ...}``.

    Shape:
        - Input: :math:`(H, W)` uint8 grey, any size.
        - Output: :math:`(S, S)` uint8, ``S = image_size``.
    """

    image_size: int = 224
    face_crop: dict[str, Any] = field(default_factory=lambda: {"mode": "none"})

    def __post_init__(self) -> None:
        if int(self.image_size) < MIN_IMAGE_SIZE:
            raise FERError(f"data.image_size={self.image_size} is too small; MobileNetV2 needs at least "
                           f"{MIN_IMAGE_SIZE} pixels")
        object.__setattr__(self, "image_size", int(self.image_size))
        object.__setattr__(self, "face_crop", FaceCropper.from_settings(self.face_crop).settings())

    # ------------------------------------------------------------------ the ways in and out
    @classmethod
    def from_options(cls, image_size: int = 224, face_crop: str = "none", crop_margin: float = 0.2,
                     crop_box: Sequence[int] | None = None) -> Preprocessing:
        """From the data options a user sets (``data.image_size``, ``data.face_crop``, ``data.crop_margin``,
        ``data.crop_box``)."""
        return cls(int(image_size), FaceCropper(face_crop, crop_margin, crop_box).settings())

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Preprocessing:
        """From a checkpoint's ``fer_lightning`` record (its ``preprocessing`` entry, or the defaults of checkpoints
        written before it was recorded)."""
        prep = {**DEFAULT_RECORD, **dict(record.get("preprocessing") or {})}
        return cls(int(prep["image_size"]), dict(prep["face_crop"]))

    def record(self) -> dict[str, Any]:
        """What a checkpoint records (and :meth:`from_record` reads back)."""
        return {"image_size": self.image_size, "face_crop": dict(self.face_crop)}

    def data_options(self) -> dict[str, Any]:
        """The same as data options (``image_size``, ``face_crop``, ``crop_margin``, ``crop_box``), for a data module
        that must prepare images as a checkpoint's run did."""
        out: dict[str, Any] = {"image_size": self.image_size, "face_crop": self.face_crop.get("mode", "none")}
        if "margin" in self.face_crop:
            out["crop_margin"] = self.face_crop["margin"]
        if "box" in self.face_crop:
            out["crop_box"] = self.face_crop["box"]
        return out

    # ------------------------------------------------------------------ images
    @cached_property
    def cropper(self) -> FaceCropper:
        """The face cropper (its ``missed`` list names the images where no face was found)."""
        return FaceCropper.from_settings(self.face_crop)

    def resize(self, face: np.ndarray) -> np.ndarray:
        """A face crop ``(h, w)`` -> ``(S, S)`` uint8 (antialiased bilinear)."""
        return resize_grey(face, self.image_size)

    def faces(self, grey: np.ndarray, where: str | Path = "") -> list[Face]:
        """Every face of a grey image (video frames), the largest first, before resizing."""
        return self.cropper.faces(grey, where)

    def __call__(self, grey: np.ndarray, where: str | Path = "") -> np.ndarray:
        """The image's face (the largest; a centre crop, warned about, where none is found), resized."""
        return self.resize(self.cropper(grey, where))

    def read(self, path: str | Path) -> np.ndarray:
        """An image file, prepared: read grey, face, resized."""
        return self(read_grey(path), path)
