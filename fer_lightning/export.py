"""Export a checkpoint of any model to one self-contained file: ONNX or a ``torch.export`` program.

    python -m fer_lightning.export ckpt_path=run/checkpoints/epoch_033.ckpt format=onnx output=fer.onnx
    fer-export ckpt_path=... format=pt2 output=fer.pt2

The file maps a batch of grey faces ``(B, 1, S, S)`` (S the training size, any batch size B; uint8, or float32
in ``[0, 1]`` with ``input_dtype=float32``) to class probabilities ``(B, num_classes)``. Everything is inside
the graph: grey to RGB, ImageNet normalisation, MobileNetV2, HOG, uniform-LBP histograms (exactly
scikit-image's codes), z-score, PCA and the head. What a user needs to prepare the input (class names, image
size, the face-crop settings; the model and its checkpoint) travels in the file's metadata: ONNX
``metadata_props["fer_lightning"]``, pt2 the extra file ``fer_lightning.json``, both a JSON object.

ONNX files use opset 18 (antialiased ``Resize`` for multi-scale descriptors needs it; onnxruntime has run it
since 1.14), are checked with ``onnx.checker`` and run once with onnxruntime against the PyTorch model before
they are written. Needs the optional extra ``export`` (onnx, onnxscript, onnxruntime) for ONNX.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from fer_lightning.checkpoints import FORMAT_KEY, preprocessing, read_checkpoint
from fer_lightning.cli import fail, start_command
from fer_lightning.config import config_dir
from fer_lightning.errors import FERError
from fer_lightning.models import load_model

log = logging.getLogger("fer_lightning.export")
FORMATS = ("onnx", "pt2")
INPUT_DTYPES = {"uint8": torch.uint8, "float32": torch.float32}
OPSET = 18
METADATA_KEY = "fer_lightning"
INPUT_NAME, OUTPUT_NAME = "images", "probabilities"
EXTRA = "export"


class Probabilities(nn.Module):
    """A fer-lightning model as a deployable function: ``(B, 1, S, S)`` uint8 (or float in ``[0, 1]``) ->
    ``(B, num_classes)`` class probabilities. uint8 faces are scaled to ``[0, 1]`` as the data modules do."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(torch.float32) / 255.0 if images.dtype == torch.uint8 else images
        return self.model(x).float().softmax(-1)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _require_onnx():
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


def _example(size: int, dtype: torch.dtype, batch: int = 2) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (batch, 1, size, size), generator=gen, dtype=torch.uint8)
    return x if dtype == torch.uint8 else x.to(dtype) / 255.0


def _export_program(net: Probabilities, example: torch.Tensor) -> torch.export.ExportedProgram:
    batch = torch.export.Dim("batch", min=1, max=4096)
    with torch.no_grad():
        return torch.export.export(net, (example,), dynamic_shapes={"images": {0: batch}}, strict=False)


def _write_onnx(program: torch.export.ExportedProgram, dest: Path, meta: dict[str, Any]) -> None:
    onnx, _ = _require_onnx()
    onnx_program = torch.onnx.export(program, dynamo=True, opset_version=OPSET, input_names=[INPUT_NAME],
                                     output_names=[OUTPUT_NAME], verbose=False, optimize=True)
    proto = onnx_program.model_proto
    proto.producer_name = "fer-lightning"
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta, sort_keys=True)
    onnx.checker.check_model(proto, full_check=True)
    dest.write_bytes(proto.SerializeToString())


def _write_pt2(program: torch.export.ExportedProgram, dest: Path, meta: dict[str, Any]) -> None:
    torch.export.save(program, str(dest), extra_files={f"{METADATA_KEY}.json": json.dumps(meta, sort_keys=True)})


def metadata(ckpt_path: str | Path, model: nn.Module, input_dtype: str) -> dict[str, Any]:
    """What the exported file says about itself and how to prepare its input."""
    record = read_checkpoint(ckpt_path)[FORMAT_KEY]
    prep = preprocessing(record)
    size = int(prep["image_size"])
    return {
        "format": 1,
        "producer": "fer-lightning",
        "model": model.model_name,
        "class_names": list(model.class_names),
        "image_size": size,
        "face_crop": prep["face_crop"],
        "input": {"name": INPUT_NAME, "shape": ["batch", 1, size, size], "dtype": input_dtype,
                  "range": [0, 255] if input_dtype == "uint8" else [0.0, 1.0],
                  "preparation": "8-bit grey (ITU-R 601 luma), face_crop, antialiased bilinear resize to image_size"},
        "output": {"name": OUTPUT_NAME, "shape": ["batch", len(model.class_names)], "meaning": "class probabilities"},
        "torch": torch.__version__,
        "checkpoint": {"file": Path(ckpt_path).name, "sha256": file_sha256(ckpt_path)},
    }


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
            onnx, ort = _require_onnx()
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
        if self.session is not None:
            return self.session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
        with torch.no_grad():
            return self.program(torch.from_numpy(x)).numpy()


def _destinations(ckpt_path: Path, formats: list[str], output: str | Path | None) -> dict[str, Path]:
    if output is None:
        return {f: ckpt_path.with_suffix(f".{f}") for f in formats}
    out = Path(output).expanduser()
    if len(formats) == 1:
        if out.suffix != f".{formats[0]}":
            raise FERError(f"output={out}: give a file name ending in .{formats[0]} for format={formats[0]}")
        return {formats[0]: out}
    return {f: out.with_suffix(f".{f}") for f in formats}


def export(ckpt_path: str | Path, fmt: str | list[str] = "onnx", output: str | Path | None = None,
           input_dtype: str = "uint8", overwrite: bool = False, check_atol: float = 1e-4) -> dict[str, Path]:
    """Export ``ckpt_path`` in the format ``fmt`` (``onnx``, ``pt2``, or several: one trace serves them all) to
    ``output`` (default: beside the checkpoint, ``<stem>.<format>``; with several formats, ``output`` with each
    format's suffix). Each file is checked before it takes its name: it must reproduce the PyTorch model's
    probabilities within ``check_atol`` on a random batch. Returns ``{format: path}``."""
    formats = [fmt] if isinstance(fmt, str) else list(fmt)
    for f in formats:
        if f not in FORMATS:
            raise FERError(f"format={f} is unknown; choose one of: {', '.join(FORMATS)}")
    if input_dtype not in INPUT_DTYPES:
        raise FERError(f"input_dtype={input_dtype} is unknown; choose one of: {', '.join(INPUT_DTYPES)}")
    ckpt_path = Path(ckpt_path).expanduser()
    dests = _destinations(ckpt_path, formats, output)
    for dest in dests.values():
        if dest.exists() and not overwrite:
            raise FERError(f"output={dest} exists; give another output= or overwrite=true")
    if "onnx" in formats:
        _require_onnx()
    model = load_model(str(ckpt_path)).eval()
    meta = metadata(ckpt_path, model, input_dtype)
    net = Probabilities(model)
    example = _example(meta["image_size"], INPUT_DTYPES[input_dtype])
    with torch.no_grad():
        expected = net(example).numpy()  # also checks, eagerly, that the fitted layers were fitted
    program = _export_program(net, example)
    umask = os.umask(0)
    os.umask(umask)
    for f, dest in dests.items():
        # written beside the destination and checked there; only a checked file takes the destination's name
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, staged = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.stem}-", suffix=f".{f}")
        os.close(fd)
        staged = Path(staged)
        try:
            file_meta = {**meta, "opset": OPSET if f == "onnx" else None}
            (_write_onnx if f == "onnx" else _write_pt2)(program, staged, file_meta)
            err = float(np.abs(ExportedModel(staged)(example) - expected).max())
            if not err <= check_atol:
                raise FERError(f"the exported {f} file differs from the PyTorch model by {err:.2e} (> {check_atol})")
            staged.chmod(0o666 & ~umask)
            os.replace(staged, dest)
        finally:
            staged.unlink(missing_ok=True)
        log.info("exported the %s checkpoint %s to %s (%s, input %s (B, 1, %d, %d), max |p - p_torch| = %.1e)",
                 model.model_name, ckpt_path, dest, f, input_dtype, meta["image_size"], meta["image_size"], err)
    return dests


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="export")
def main(cfg: DictConfig) -> None:
    start_command(cfg)
    try:
        if not cfg.ckpt_path:
            raise FERError("give ckpt_path=<a fer-lightning checkpoint> (and format=onnx|pt2, output=<file>)")
        fmt = cfg.format if isinstance(cfg.format, str) else list(cfg.format)
        dests = export(cfg.ckpt_path, fmt, cfg.output, cfg.input_dtype, bool(cfg.overwrite))
    except FERError as e:
        fail(e)
    for dest in dests.values():
        print(f"wrote {dest}")


if __name__ == "__main__":
    main()
