"""Export a checkpoint of any model to one self-contained file: ONNX or a ``torch.export`` program (``fer-export``).

The file maps a batch of grey faces ``(B, 1, S, S)`` (S the training size, any batch size B; uint8, or float32 in
``[0, 1]`` with ``input_dtype=float32``) to class probabilities ``(B, num_classes)``. Everything is inside the graph:
grey to RGB, ImageNet normalisation, MobileNetV2, HOG, uniform-LBP histograms (exactly scikit-image's codes), z-score,
PCA and the head. What a user needs to prepare the input (class names, the checkpoint's
:class:`~fer_lightning.data.preprocessing.Preprocessing`; the model and its checkpoint) travels in the file's
metadata: ONNX ``metadata_props["fer_lightning"]``, pt2 the extra file ``fer_lightning.json``, both a JSON object.

Each format is one :class:`Exporter` class in :data:`FORMATS` (``format=onnx|pt2``); a new format is one more class.
ONNX files use opset 18 (antialiased ``Resize`` for multi-scale descriptors needs it), are checked with
``onnx.checker`` and run once with onnxruntime against the PyTorch model before they take their name.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fer_lightning.data.preprocessing import Preprocessing, to_unit
from fer_lightning.deploy.exported import INPUT_NAME, METADATA_KEY, OUTPUT_NAME, ExportedModel, require_onnx
from fer_lightning.errors import FERError
from fer_lightning.models import load_model
from fer_lightning.runs.checkpoints import FORMAT_KEY, read_checkpoint
from fer_lightning.runtime.registry import Registry, choose

log = logging.getLogger("fer_lightning.export")
INPUT_DTYPES = {"uint8": torch.uint8, "float32": torch.float32}
OPSET = 18


class Probabilities(nn.Module):
    """A fer-lightning model as a deployable function: uint8 faces (or float in ``[0, 1]``) -> class probabilities.

    Shape:
        - Input: :math:`(B, 1, S, S)` uint8 (scaled to ``[0, 1]`` as in training) or float.
        - Output: :math:`(B, C)` float32, rows summing to 1.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(to_unit(images)).float().softmax(-1)


class Exporter(ABC):
    """One file format: writes a traced program with its metadata to ``dest``."""

    name = "format"

    def check_available(self) -> None:  # noqa: B027 (most formats need nothing more)
        """Raise :class:`FERError` naming the extra to install when this format's packages are missing."""

    @abstractmethod
    def write(self, program: torch.export.ExportedProgram, dest: Path, meta: dict[str, Any]) -> None:
        """Write ``program`` (inputs ``images``, outputs ``probabilities``) and ``meta`` to ``dest``."""


FORMATS: Registry[type[Exporter]] = Registry("format")


@FORMATS.register("onnx")
class OnnxExporter(Exporter):
    """ONNX (opset 18), checked with ``onnx.checker``; needs the optional extra ``export``."""

    name = "onnx"

    def check_available(self) -> None:
        require_onnx()

    def write(self, program: torch.export.ExportedProgram, dest: Path, meta: dict[str, Any]) -> None:
        onnx, _ = require_onnx()
        onnx_program = torch.onnx.export(program, dynamo=True, opset_version=OPSET, input_names=[INPUT_NAME],
                                         output_names=[OUTPUT_NAME], verbose=False, optimize=True)
        proto = onnx_program.model_proto
        proto.producer_name = "fer-lightning"
        del proto.metadata_props[:]
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, json.dumps({**meta, "opset": OPSET}, sort_keys=True)
        onnx.checker.check_model(proto, full_check=True)
        dest.write_bytes(proto.SerializeToString())


@FORMATS.register("pt2")
class Pt2Exporter(Exporter):
    """A ``torch.export`` program (``torch.export.load`` runs it), metadata in the extra file ``fer_lightning.json``."""

    name = "pt2"

    def write(self, program: torch.export.ExportedProgram, dest: Path, meta: dict[str, Any]) -> None:
        torch.export.save(program, str(dest),
                          extra_files={f"{METADATA_KEY}.json": json.dumps({**meta, "opset": None}, sort_keys=True)})


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def example_input(size: int, dtype: torch.dtype, batch: int = 2) -> torch.Tensor:
    """A seeded random batch of faces ``(batch, 1, size, size)`` in the input dtype (what export traces and checks)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (batch, 1, size, size), generator=gen, dtype=torch.uint8)
    return x if dtype == torch.uint8 else to_unit(x).to(dtype)


def trace(net: Probabilities, example: torch.Tensor) -> torch.export.ExportedProgram:
    """The deployable function as one ``torch.export`` program with a dynamic batch dimension."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    with torch.no_grad():
        return torch.export.export(net, (example,), dynamic_shapes={"images": {0: batch}}, strict=False)


def metadata(ckpt: Mapping[str, Any], ckpt_path: str | Path, model: nn.Module, input_dtype: str) -> dict[str, Any]:
    """What the exported file says about itself and how to prepare its input (from the checkpoint already read)."""
    prep = Preprocessing.from_record(ckpt[FORMAT_KEY])
    size = prep.image_size
    return {
        "format": 1,
        "producer": "fer-lightning",
        "model": model.model_name,
        "class_names": list(model.class_names),
        "image_size": size,
        "face_crop": prep.face_crop,
        "input": {"name": INPUT_NAME, "shape": ["batch", 1, size, size], "dtype": input_dtype,
                  "range": [0, 255] if input_dtype == "uint8" else [0.0, 1.0],
                  "preparation": "8-bit grey (ITU-R 601 luma), face_crop, antialiased bilinear resize to image_size"},
        "output": {"name": OUTPUT_NAME, "shape": ["batch", len(model.class_names)], "meaning": "class probabilities"},
        "torch": torch.__version__,
        "checkpoint": {"file": Path(ckpt_path).name, "sha256": file_sha256(ckpt_path)},
    }


def destinations(ckpt_path: Path, formats: list[str], output: str | Path | None) -> dict[str, Path]:
    """Where each format is written: ``output`` (with each format's suffix when there are several), or beside the
    checkpoint as ``<stem>.<format>``."""
    if output is None:
        return {f: ckpt_path.with_suffix(f".{f}") for f in formats}
    out = Path(output).expanduser()
    if len(formats) == 1:
        if out.suffix != f".{formats[0]}":
            raise FERError(f"output={out}: give a file name ending in .{formats[0]} for format={formats[0]}")
        return {formats[0]: out}
    return {f: out.with_suffix(f".{f}") for f in formats}


def _write_checked(exporter: Exporter, program: torch.export.ExportedProgram, dest: Path, meta: dict[str, Any],
                   example: torch.Tensor, expected: np.ndarray, check_atol: float) -> float:
    """Write beside ``dest``, check the file reproduces ``expected`` within ``check_atol``, then give it the name."""
    umask = os.umask(0)
    os.umask(umask)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, staged_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.stem}-", suffix=f".{exporter.name}")
    os.close(fd)
    staged = Path(staged_name)
    try:
        exporter.write(program, staged, meta)
        err = float(np.abs(ExportedModel(staged)(example) - expected).max())
        if not err <= check_atol:
            raise FERError(f"the exported {exporter.name} file differs from the PyTorch model by {err:.2e} "
                           f"(> {check_atol})")
        staged.chmod(0o666 & ~umask)
        os.replace(staged, dest)
    finally:
        staged.unlink(missing_ok=True)
    return err


def export(ckpt_path: str | Path, fmt: str | list[str] = "onnx", output: str | Path | None = None,
           input_dtype: str = "uint8", overwrite: bool = False, check_atol: float = 1e-4) -> dict[str, Path]:
    """Export ``ckpt_path`` in the format ``fmt`` (``onnx``, ``pt2``, or several: one trace serves them all) to
    ``output`` (default: beside the checkpoint, ``<stem>.<format>``; with several formats, ``output`` with each
    format's suffix). The checkpoint is read once. Each file is checked before it takes its name: it must reproduce
    the PyTorch model's probabilities within ``check_atol`` on a random batch. Returns ``{format: path}``."""
    formats = [fmt] if isinstance(fmt, str) else list(fmt)
    exporters = {f: FORMATS.get(f)() for f in formats}
    choose(input_dtype, INPUT_DTYPES, "input_dtype")
    ckpt_path = Path(ckpt_path).expanduser()
    dests = destinations(ckpt_path, formats, output)
    for dest in dests.values():
        if dest.exists() and not overwrite:
            raise FERError(f"output={dest} exists; give another output= or overwrite=true")
    for exporter in exporters.values():
        exporter.check_available()
    ckpt = read_checkpoint(ckpt_path)  # the one read of the file (weights_only: no code in it runs)
    model = load_model(ckpt).eval()
    meta = metadata(ckpt, ckpt_path, model, input_dtype)
    net = Probabilities(model)
    example = example_input(meta["image_size"], INPUT_DTYPES[input_dtype])
    with torch.no_grad():
        expected = net(example).numpy()  # also checks, eagerly, that the fitted layers were fitted
    program = trace(net, example)
    for f, dest in dests.items():
        err = _write_checked(exporters[f], program, dest, meta, example, expected, check_atol)
        log.info("exported the %s checkpoint %s to %s (%s, input %s (B, 1, %d, %d), max |p - p_torch| = %.1e)",
                 model.model_name, ckpt_path, dest, f, input_dtype, meta["image_size"], meta["image_size"], err)
    return dests
