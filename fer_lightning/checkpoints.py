"""Reading fer-lightning checkpoints safely and checking they fit the model at hand."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fer_lightning.errors import FERError

FORMAT_KEY = "fer_lightning"


def read_checkpoint(path: str | Path, option: str = "ckpt_path") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (no arbitrary code from pickles) and check it is ours."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FERError(f"{option}={path}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise FERError(f"{option}={path}: not a loadable PyTorch checkpoint ({e.__class__.__name__}: {e})") from e
    if not isinstance(ckpt, dict) or FORMAT_KEY not in ckpt:
        raise FERError(f"{option}={path}: not a fer-lightning checkpoint (no '{FORMAT_KEY}' record in it)")
    return ckpt


def check_checkpoint(path: str | Path, model: Any, option: str = "ckpt_path") -> dict[str, Any]:
    """The checkpoint, after checking it was written by the same kind of model with the same classes."""
    ckpt = read_checkpoint(path, option)
    info = ckpt[FORMAT_KEY]
    if info.get("model") != model.model_name:
        raise FERError(
            f"{option}={path} holds a '{info.get('model')}' model, not '{model.model_name}'; "
            f"use model={info.get('model')} or a checkpoint of a {model.model_name} run"
        )
    if list(info.get("class_names", [])) != list(model.class_names):
        raise FERError(
            f"{option}={path} was trained on classes {info.get('class_names')}, not {list(model.class_names)}"
        )
    return ckpt


DEFAULT_PREPROCESSING = {"image_size": 224, "face_crop": {"mode": "none"}}


def preprocessing(record: dict[str, Any]) -> dict[str, Any]:
    """How raw images become a checkpoint's inputs (``image_size``, ``face_crop`` settings), from its
    ``fer_lightning`` record; checkpoints written before it was recorded get the defaults."""
    return {**DEFAULT_PREPROCESSING, **record.get("preprocessing", {})}
