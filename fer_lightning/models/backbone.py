"""MobileNetV2 from torchvision as a GAP feature extractor, with clear errors when weights are unavailable."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from torch import nn
from torchvision.models import MobileNet_V2_Weights, MobileNetV2, mobilenet_v2

from fer_lightning.data.augment import grey_to_imagenet
from fer_lightning.data.preprocessing import to_unit
from fer_lightning.errors import FERError
from fer_lightning.features.extractor import blocks_in_batches

IMAGENET_WEIGHTS = MobileNet_V2_Weights.IMAGENET1K_V1
_PREFIXES = ("module.", "model.", "net.", "backbone.")


def imagenet_weights_file() -> Path:
    """Where torchvision looks for (and downloads) the ImageNet MobileNetV2 file: ``$TORCH_HOME/hub/checkpoints``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(IMAGENET_WEIGHTS.url)


def _load_imagenet() -> MobileNetV2:
    try:  # torchvision's mobilenet_v2(weights=...), but unpickling the downloaded file with weights_only=True
        net = mobilenet_v2(weights=None)
        net.load_state_dict(IMAGENET_WEIGHTS.get_state_dict(progress=True, check_hash=True, weights_only=True))
        return net
    except Exception as e:  # offline, proxy, truncated download, ...
        torch_home = os.environ.get("TORCH_HOME", "unset, so ~/.cache/torch")
        raise FERError(
            f"cannot load the ImageNet MobileNetV2 weights: torchvision expects {imagenet_weights_file()} "
            f"(TORCH_HOME={torch_home}) and could not download it ({e.__class__.__name__}: {e}); "
            "copy mobilenet_v2-b0353104.pth there or point TORCH_HOME at a cache holding it, "
            "or set model.backbone.weights=none (random init) or model.backbone.weights=/path/to/state_dict.pth"
        ) from e


def _load_state_dict_file(path: Path) -> MobileNetV2:
    if not path.is_file():
        raise FERError(
            f"model.backbone.weights={path}: no such file; use imagenet, none, or the path of a MobileNetV2 state dict"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise FERError(
            f"model.backbone.weights={path}: not a loadable PyTorch state dict ({e.__class__.__name__})"
        ) from e
    if isinstance(state, dict) and "state_dict" in state:  # a Lightning checkpoint
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise FERError(f"model.backbone.weights={path}: holds a {type(state).__name__}, not a state dict")
    clean = {}
    for k, v in state.items():
        while k.startswith(_PREFIXES):
            k = k.split(".", 1)[1]
        clean[k] = v
    net = mobilenet_v2(weights=None)
    features = {k: v for k, v in clean.items() if k.startswith("features.")}
    expected = {k for k in net.state_dict() if k.startswith("features.")}
    missing = sorted(expected - set(features))
    if missing:
        raise FERError(
            f"model.backbone.weights={path}: not a MobileNetV2 state dict ({len(missing)} backbone tensors missing, "
            f"e.g. {missing[0]})"
        )
    net.load_state_dict(features, strict=False)
    return net


def backbone_state_from_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The fine-tuned MobileNetV2 ``features.*`` tensors of a fer-lightning ``deep`` run's checkpoint."""
    from fer_lightning.runs.checkpoints import read_checkpoint

    ckpt = read_checkpoint(path, option="model.backbone.checkpoint")
    kind = ckpt["fer_lightning"].get("model")
    if kind != "deep":
        raise FERError(
            f"model.backbone.checkpoint={path} holds a '{kind}' model; give the checkpoint of a model=deep run"
        )
    prefix = "backbone."
    return {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix + "features.")}


def load_mobilenet_v2(weights: str | None = "imagenet") -> MobileNetV2:
    """A full torchvision MobileNetV2 (classifier included): ``imagenet`` | ``none`` | path to a state dict."""
    spec = "none" if weights is None else str(weights)
    if spec.lower() == "none":
        return mobilenet_v2(weights=None)
    if spec.lower() == "imagenet":
        return _load_imagenet()
    return _load_state_dict_file(Path(spec).expanduser())


class MobileNetV2Backbone(nn.Module):
    """MobileNetV2 without its classifier: ``(B, 1, H, W)`` grey in ``[0, 1]`` -> ``(B, 1280)`` GAP features.

    The grey input is repeated to 3 channels and ImageNet-normalised inside, on the input's device. With
    ``trainable=False`` the parameters are frozen and BatchNorm statistics stay fixed (the module stays in eval
    mode even when its parent is put in training mode).

    Args:
        weights: ``imagenet`` (torchvision's IMAGENET1K_V1, offline from ``$TORCH_HOME``), ``none`` (random) or a
            path to a MobileNetV2 state dict.
        trainable: fine-tune it (True) or keep it frozen.
        checkpoint: a deep run's checkpoint whose fine-tuned backbone to take (instead of ``weights``).

    Shape:
        - Input: :math:`(B, 1, H, W)` grey in ``[0, 1]``, ``H, W >= 32``.
        - Output: :math:`(B, 1280)` global-average-pooled features.

    Examples:
        >>> backbone = MobileNetV2Backbone(weights="none", trainable=False)
        >>> backbone(torch.rand(2, 1, 64, 64)).shape
        torch.Size([2, 1280])
    """

    out_features = 1280
    channels_last = False  # set by the model's configure_model: inputs then go in channels-last memory format

    def __init__(self, weights: str | None = "imagenet", trainable: bool = True, checkpoint: str | None = None) -> None:
        super().__init__()
        net = load_mobilenet_v2("none" if checkpoint else weights)
        self.to_input = grey_to_imagenet()
        self.features = net.features
        self.pool = nn.AdaptiveAvgPool2d(1)
        if checkpoint:
            self.load_state_dict(backbone_state_from_checkpoint(checkpoint), strict=False)
        self.trainable = trainable
        if not trainable:
            self.requires_grad_(False)
            self.eval()

    def train(self, mode: bool = True) -> MobileNetV2Backbone:
        return super().train(mode and self.trainable)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.to_input(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.pool(self.features(x)).flatten(1)

    def fingerprint(self) -> str:
        """A digest of the weights and BatchNorm statistics: the cache key of features computed with them."""
        h = hashlib.sha256()
        for k, v in self.state_dict().items():
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    @torch.no_grad()
    def gap_features(self, images: torch.Tensor, device: torch.device, batch_size: int = 64) -> torch.Tensor:
        """``(N, 1, H, W)`` uint8 -> ``(N, 1280)`` GAP features (eval mode, on ``device``, returned on the CPU)."""
        was_training = self.training
        self.eval().to(device)
        out = blocks_in_batches(lambda x: {"gap": self(to_unit(x))}, images, batch_size, device)["gap"]
        self.train(was_training)
        return out
