"""LightningModules: the shared classifier base and one module per model.

``DeepFER``, ``HandcraftedFER``, ``HybridFER``, ``LateFusionFER`` (and their base ``FERClassifier``) are imported
on first use, so ``from fer_lightning.models import load_model`` stays light.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fer_lightning.checkpoints import FORMAT_KEY, read_checkpoint
from fer_lightning.errors import FERError

_LAZY = {
    "FERClassifier": "fer_lightning.models.base",
    "DeepFER": "fer_lightning.models.deep",
    "HandcraftedFER": "fer_lightning.models.handcrafted",
    "HybridFER": "fer_lightning.models.hybrid",
    "LateFusionFER": "fer_lightning.models.late_fusion",
}
__all__ = ["DeepFER", "FERClassifier", "HandcraftedFER", "HybridFER", "LateFusionFER", "load_model", "model_classes"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def model_classes() -> dict:
    """``model_name -> class`` of every fer-lightning model."""
    from fer_lightning.models.deep import DeepFER
    from fer_lightning.models.handcrafted import HandcraftedFER
    from fer_lightning.models.hybrid import HybridFER
    from fer_lightning.models.late_fusion import LateFusionFER

    return {cls.model_name: cls for cls in (DeepFER, HandcraftedFER, HybridFER, LateFusionFER)}


def load_model(checkpoint: str | Path | Mapping[str, Any], option: str = "ckpt_path", map_location: str = "cpu"):
    """Any fer-lightning model from its checkpoint file, or from a checkpoint already read with
    :func:`~fer_lightning.checkpoints.read_checkpoint` (safe ``weights_only`` loading, nothing else needed)."""
    ckpt = checkpoint if isinstance(checkpoint, Mapping) else read_checkpoint(checkpoint, option)
    kind = ckpt[FORMAT_KEY].get("model")
    classes = model_classes()
    if kind not in classes:
        where = f"{option}={checkpoint}" if isinstance(checkpoint, str | Path) else f"the {option} checkpoint"
        raise FERError(f"{where} holds an unknown model '{kind}'; known: {', '.join(classes)}")
    return classes[kind].from_checkpoint(ckpt, map_location=map_location)
