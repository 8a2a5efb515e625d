"""A checkpoint ready to classify raw grey images: its model with the preprocessing its run recorded.

The one place where ``predict`` (image files) and :mod:`fer_lightning.video` (frames) turn a face into the
model's input exactly as training did: the run's face crop, the run's image size, uint8 scaled to ``[0, 1]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from fer_lightning.checkpoints import FORMAT_KEY, preprocessing, read_checkpoint
from fer_lightning.data.crop import FaceCropper
from fer_lightning.data.images import resize_grey
from fer_lightning.features.extractor import resolve_device
from fer_lightning.models import load_model


class Classifier:
    """``Classifier(ckpt_path)``: ``cropper`` finds faces in ``(H, W)`` uint8 grey images, :meth:`probabilities`
    classifies crops, :meth:`columns` names the result like every predictions file."""

    def __init__(self, ckpt_path: str | Path, device: str = "auto") -> None:
        ckpt = read_checkpoint(ckpt_path)  # the one read of the file
        prep = preprocessing(ckpt[FORMAT_KEY])
        self.model = load_model(ckpt).eval().to(resolve_device(device))
        self.cropper = FaceCropper.from_settings(prep["face_crop"])
        self.image_size = int(prep["image_size"])
        self.classes = list(self.model.class_names)

    def prepare(self, face: np.ndarray) -> np.ndarray:
        """A face crop resized to the model's input size (uint8)."""
        return resize_grey(face, self.image_size)

    @torch.no_grad()
    def probabilities(self, prepared: Sequence[np.ndarray]) -> np.ndarray:
        """``(N, classes)`` class probabilities of prepared faces."""
        x = torch.from_numpy(np.stack(prepared)).unsqueeze(1).float().div_(255.0)
        return self.model(x.to(self.model.device)).float().softmax(-1).cpu().numpy()

    def label(self, probs: np.ndarray) -> str:
        return self.classes[int(np.argmax(probs))]

    def columns(self, probs: np.ndarray) -> dict[str, str]:
        """``{p_<class>: probability}`` with six decimals."""
        return {f"p_{c}": f"{float(v):.6f}" for c, v in zip(self.classes, probs, strict=True)}
