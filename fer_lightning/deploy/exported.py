"""An exported file (ONNX or a ``torch.export`` program) loaded to run, with the metadata it carries about itself.

``probabilities = ExportedModel("fer.onnx")(images)``: ``images`` a ``(B, 1, S, S)`` array of the file's input dtype
(uint8 0..255, or float32 0..1), prepared as its ``metadata`` says (grey, face crop, resize to ``image_size``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fer_lightning.errors import FERError

METADATA_KEY = "fer_lightning"
INPUT_NAME, OUTPUT_NAME = "images", "probabilities"
EXTRA = "export"


def require_onnx():
    try:
        import onnx
        import onnxruntime
        import onnxscript  # noqa: F401  (torch.onnx's exporter needs it)
    except ImportError as e:
        raise FERError(
            f"format=onnx needs the optional extra '{EXTRA}' (onnx, onnxscript, onnxruntime; missing: {e.name}): "
            f"pip install 'fer-lightning[{EXTRA}]' or uv sync --extra {EXTRA}"
        ) from e
    return onnx, onnxruntime



class ExportedModel:
    """An exported file, loaded to run: ``probabilities = ExportedModel(path)(images)`` with ``images`` a
    ``(B, 1, S, S)`` array or tensor of the file's input dtype; ``metadata`` is the file's JSON record.

    ONNX files run with onnxruntime (``providers``, default the CPU; ``threads``: its intra-op threads, default one
    per core), pt2 files with ``torch.export.load``."""

    def __init__(self, path: str | Path, providers: list[str] | None = None, threads: int | None = None) -> None:
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise FERError(f"{self.path}: no such exported model file")
        if self.path.suffix == ".onnx":
            onnx, ort = require_onnx()
            try:
                proto = onnx.load(str(self.path), load_external_data=False)
            except Exception as e:
                raise FERError(f"{self.path}: cannot read this ONNX file ({e.__class__.__name__}: {e})") from e
            props = {p.key: p.value for p in proto.metadata_props}
            self.metadata = self._parse(props.get(METADATA_KEY))
            options = ort.SessionOptions()
            if threads:
                options.intra_op_num_threads = int(threads)
            self.session = ort.InferenceSession(str(self.path), options,
                                                providers=providers or ["CPUExecutionProvider"])
            self.program = None
        else:
            extra = {f"{METADATA_KEY}.json": ""}
            try:
                program = torch.export.load(str(self.path), extra_files=extra)
            except Exception as e:
                raise FERError(f"{self.path}: not a torch.export program ({e.__class__.__name__}: {e})") from e
            self.metadata = self._parse(extra[f"{METADATA_KEY}.json"])
            self.program = program.module()
            self.session = None

    def _parse(self, text: str | None) -> dict[str, Any]:
        try:
            meta = json.loads(text or "")
        except json.JSONDecodeError:
            meta = None
        if not isinstance(meta, dict) or meta.get("producer") != "fer-lightning":
            raise FERError(f"{self.path}: not a fer-lightning export (no '{METADATA_KEY}' metadata)")
        return meta

    def __call__(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        x = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
        if not x.flags.writeable:  # a read-only array (a memory-mapped face): torch would warn, onnxruntime copies
            x = x.copy()
        if self.session is not None:
            return self.session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
        with torch.no_grad():
            return self.program(torch.from_numpy(x)).numpy()

