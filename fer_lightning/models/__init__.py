"""LightningModules: the shared classifier base and one module per model."""

from __future__ import annotations

from fer_lightning.checkpoints import FORMAT_KEY, read_checkpoint
from fer_lightning.errors import FERError


def model_classes() -> dict:
    """``model_name -> class`` of every fer-lightning model."""
    from fer_lightning.models.deep import DeepFER
    from fer_lightning.models.handcrafted import HandcraftedFER
    from fer_lightning.models.hybrid import HybridFER
    from fer_lightning.models.late_fusion import LateFusionFER

    return {cls.model_name: cls for cls in (DeepFER, HandcraftedFER, HybridFER, LateFusionFER)}


def load_model(path: str, option: str = "ckpt_path", map_location: str = "cpu"):
    """Any fer-lightning model from its checkpoint (safe ``weights_only`` loading, nothing else needed)."""
    kind = read_checkpoint(path, option)[FORMAT_KEY].get("model")
    classes = model_classes()
    if kind not in classes:
        raise FERError(f"{option}={path} holds an unknown model '{kind}'; known: {', '.join(classes)}")
    return classes[kind].from_checkpoint(path, map_location=map_location)
