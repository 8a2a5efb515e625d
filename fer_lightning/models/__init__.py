"""LightningModules: the shared classifier base and one module per model, registered in
:data:`~fer_lightning.models.registry.MODELS`.

``DeepFER``, ``HandcraftedFER``, ``HybridFER``, ``LateFusionFER``, ``EnsembleFER`` (and their base
``FERClassifier``) are imported on first use, so ``from fer_lightning.models import load_model`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

from fer_lightning.models.registry import MODELS, load_model, model_classes

__all__ = ["MODELS", "DeepFER", "EnsembleFER", "FERClassifier", "HandcraftedFER", "HybridFER", "LateFusionFER",
           "load_model", "model_classes"]


def __getattr__(name: str) -> Any:
    if name == "FERClassifier":
        return importlib.import_module("fer_lightning.models.base").FERClassifier
    for cls in model_classes().values():  # the registry is the one list of models
        if cls.__name__ == name:
            return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
