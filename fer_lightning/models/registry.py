"""The models: ONE registry (``model_name`` -> class) and loading any of them from a checkpoint.

A model class registers under its ``model_name``; the built-in ones are imported on first use, so
``from fer_lightning.models import load_model`` stays light. A new model is one class (a
:class:`~fer_lightning.models.base.FERClassifier` with a ``model_name``), ``MODELS.register(name)`` on it, and one
YAML in ``conf/model/``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fer_lightning.errors import FERError
from fer_lightning.runs.checkpoints import FORMAT_KEY, read_checkpoint
from fer_lightning.runtime.registry import Registry

MODELS: Registry[Any] = Registry("model", {
    "deep": "fer_lightning.models.deep:DeepFER",
    "handcrafted": "fer_lightning.models.handcrafted:HandcraftedFER",
    "hybrid": "fer_lightning.models.hybrid:HybridFER",
    "late_fusion": "fer_lightning.models.late_fusion:LateFusionFER",
    "ensemble": "fer_lightning.models.late_fusion:EnsembleFER",
})


def model_classes() -> dict[str, type]:
    """``model_name -> class`` of every registered model."""
    return {name: MODELS.get(name) for name in MODELS}


def load_model(checkpoint: str | Path | Mapping[str, Any], option: str = "ckpt_path", map_location: str = "cpu"):
    """Any fer-lightning model from its checkpoint file, or from a checkpoint already read with
    :func:`~fer_lightning.runs.checkpoints.read_checkpoint` (safe ``weights_only`` loading, nothing else needed)."""
    ckpt = checkpoint if isinstance(checkpoint, Mapping) else read_checkpoint(checkpoint, option)
    kind = ckpt[FORMAT_KEY].get("model")
    if kind not in MODELS:
        where = f"{option}={checkpoint}" if isinstance(checkpoint, str | Path) else f"the {option} checkpoint"
        raise FERError(f"{where} holds an unknown model '{kind}'; known: {', '.join(MODELS)}")
    return MODELS.get(kind).from_checkpoint(ckpt, map_location=map_location)
