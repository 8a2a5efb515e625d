"""The model a server holds: a checkpoint or an exported file, and the way an uploaded image becomes its answer.

An upload is decoded in memory (:func:`~fer_lightning.data.images.decode_grey`: the same grey image that
:func:`~fer_lightning.data.images.read_grey` makes of a file, EXIF orientation included) and prepared by the
model's own :class:`~fer_lightning.data.preprocessing.Preprocessing` (face crop, resize), so a served answer equals
``fer-predict``'s on the same file. No path from a request is ever opened: the image arrives as bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fer_lightning.data.images import decode_grey
from fer_lightning.data.preprocessing import Preprocessing
from fer_lightning.deploy.exported import ExportedModel
from fer_lightning.deploy.inference import Classifier

# what an upload may be (PIL's names): the formats a browser or a camera sends
UPLOAD_FORMATS = ("JPEG", "PNG", "TIFF", "WEBP")
EXPORTED_SUFFIXES = (".onnx", ".pt2")


class ServedModel:
    """A checkpoint (``.ckpt``) or an exported file (``.onnx``, ``.pt2``) ready to answer uploads.

    Args:
        path: the model file (a run folder is resolved to its checkpoint by the command, before).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:<n>`` (a checkpoint); an ONNX file runs on the CPU
            (onnxruntime's CUDA provider first when ``device`` is a CUDA device and onnxruntime has it).
        threads: intra-op threads of onnxruntime (an exported file); None: its default.

    Examples:
        >>> ServedModel("missing.onnx")
        Traceback (most recent call last):
        ...
        fer_lightning.errors.FERError: missing.onnx: no such exported model file
    """

    def __init__(self, path: str | Path, device: str = "auto", threads: int | None = None) -> None:
        self.path = Path(path).expanduser()
        if self.path.suffix in EXPORTED_SUFFIXES:
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if str(device).startswith("cuda") else None
            self._exported = ExportedModel(self.path, providers, threads)
            meta = self._exported.metadata
            self.preprocessing = Preprocessing(int(meta["image_size"]), dict(meta["face_crop"]))
            self.classes, self.name = list(meta["class_names"]), str(meta["model"])
            self._float_input = meta["input"]["dtype"] != "uint8"
            self._classifier = None
        else:
            self._classifier = Classifier(self.path, device)
            backbone = getattr(self._classifier.model, "backbone", None)
            if backbone is not None and hasattr(backbone, "channels_last"):  # a CNN: faster in batches (NHWC)
                backbone.to(memory_format=torch.channels_last)
                backbone.channels_last = True
            self.preprocessing, self.classes = self._classifier.preprocessing, self._classifier.classes
            self.name = str(self._classifier.model.model_name)

    def info(self) -> dict[str, Any]:
        """What ``/info`` says about the model: its file, kind, classes and preprocessing."""
        return {"file": self.path.name, "format": self.path.suffix.lstrip(".") or "ckpt", "name": self.name,
                "classes": self.classes, "preprocessing": self.preprocessing.record()}

    def prepare(self, data: bytes, max_pixels: int | None = None) -> dict[str, Any]:
        """An uploaded image -> ``{"face": (S, S) uint8, "box": [top, left, height, width] or None, "found": bool}``
        (``box`` only with a face crop; ``found``: False where no face was found and the centre crop was used).
        Raises :class:`FERError` for bytes that are not an image of :data:`UPLOAD_FORMATS` or hold more than
        ``max_pixels`` pixels."""
        grey = decode_grey(data, "the upload", max_pixels, UPLOAD_FORMATS)
        cropper = self.preprocessing.cropper
        missed = len(cropper.missed)
        face = cropper.face(grey, "the upload")
        found = len(cropper.missed) == missed
        del cropper.missed[missed:]  # a server runs for long: the names of faceless uploads are not kept
        box = None if self.preprocessing.face_crop["mode"] == "none" else [int(v) for v in face.box]
        return {"face": self.preprocessing.resize(face.image), "box": box, "found": found}

    def probabilities(self, faces: Sequence[np.ndarray]) -> np.ndarray:
        """``(N, classes)`` class probabilities of prepared faces (``(S, S)`` uint8 each)."""
        if self._classifier is not None:
            return self._classifier.probabilities(faces)
        x = np.stack(faces)[:, None]
        if self._float_input:
            x = x.astype(np.float32) / np.float32(255)
        return np.asarray(self._exported(x), dtype=np.float64)

    def answer(self, probs: np.ndarray, prepared: dict[str, Any]) -> dict[str, Any]:
        """The JSON answer to one upload: label, the probability of every class, the face box, model and classes."""
        out: dict[str, Any] = {
            "label": self.classes[int(np.argmax(probs))],
            "probabilities": {c: float(p) for c, p in zip(self.classes, probs, strict=True)},
            "model": self.name, "classes": self.classes,
        }
        if prepared["box"] is not None:
            out["face"] = {"box": prepared["box"], "found": prepared["found"]}
        return out


def set_threads(threads: int | None) -> None:
    """Torch's intra-op threads in a serving worker (None: as torch chose)."""
    if threads:
        torch.set_num_threads(int(threads))


__all__ = ["EXPORTED_SUFFIXES", "UPLOAD_FORMATS", "ServedModel", "set_threads"]
