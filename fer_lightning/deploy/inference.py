"""A checkpoint ready to classify raw grey images: its model with the preprocessing its run recorded.

The one place where ``predict`` (image files) and :mod:`fer_lightning.deploy.video` (frames) turn a face into the
model's input exactly as training did: the checkpoint's :class:`~fer_lightning.data.preprocessing.Preprocessing`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from fer_lightning.data.preprocessing import Preprocessing, to_unit
from fer_lightning.models import load_model
from fer_lightning.runs.checkpoints import FORMAT_KEY, read_checkpoint
from fer_lightning.runtime.devices import resolve_device


class Classifier:
    """``Classifier(ckpt_path)``: ``preprocessing`` turns grey images into faces the model takes,
    :meth:`probabilities` classifies them, :meth:`columns` names the result like every predictions file."""

    def __init__(self, ckpt_path: str | Path, device: str = "auto") -> None:
        ckpt = read_checkpoint(ckpt_path)  # the one read of the file
        self.preprocessing = Preprocessing.from_record(ckpt[FORMAT_KEY])
        self.model = load_model(ckpt).eval().to(resolve_device(device))
        self.classes = list(self.model.class_names)

    @torch.no_grad()
    def probabilities(self, prepared: Sequence[np.ndarray]) -> np.ndarray:
        """``(N, classes)`` class probabilities of prepared faces (``(S, S)`` uint8 each)."""
        x = to_unit(torch.from_numpy(np.stack(prepared)).unsqueeze(1))
        return self.model(x.to(self.model.device)).float().softmax(-1).cpu().numpy()

    def label(self, probs: np.ndarray) -> str:
        return self.classes[int(np.argmax(probs))]

    def columns(self, probs: np.ndarray) -> dict[str, str]:
        """``{p_<class>: probability}`` with six decimals."""
        return {f"p_{c}": f"{float(v):.6f}" for c, v in zip(self.classes, probs, strict=True)}
