"""Grad-CAM (Selvaraju et al., ICCV 2017): where in the image a model's convolutional features drive a class score.

For a layer with activations ``A`` of shape ``(K, h, w)`` and a class score ``y_c`` (the logit), the channel weights
are the spatially averaged gradients ``alpha_k = mean_ij dy_c / dA_kij`` and the map is
``ReLU(sum_k alpha_k A_k)``, upsampled (bilinear) to the input size and scaled to ``[0, 1]`` per image.

A forward hook on the layer keeps its output (made a leaf that requires grad when the layer is frozen, as the
hybrid model's backbone is), and ``torch.autograd.grad`` takes the class scores' gradient with respect to it:
no parameter's ``.grad`` is touched and the model's state is restored afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def cam_layer(model: nn.Module) -> nn.Module | None:
    """The layer Grad-CAM uses for a fer-lightning model: the last block of its MobileNetV2 backbone (1280
    channels, 1/32 of the input size), or None for a model without a CNN (``handcrafted``)."""
    backbone = getattr(model, "backbone", None)
    features = getattr(backbone, "features", None)
    return features[-1] if isinstance(features, nn.Sequential) and len(features) else None


class GradCAM:
    """Grad-CAM maps of ``model``'s class scores at ``layer``.

    ``model(images)`` must return logits ``(B, C)``, each row depending on its own image only (true in eval mode,
    which is used here).
    """

    def __init__(self, model: nn.Module, layer: nn.Module) -> None:
        self.model, self.layer = model, layer
        self._activation: torch.Tensor | None = None

    def _keep(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        if not output.requires_grad:  # a frozen layer: start the graph here
            output = output.detach().requires_grad_(True)
        self._activation = output
        return output

    def __call__(
        self, images: torch.Tensor, classes: Sequence[int] | torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``images (B, ...)`` -> ``(maps (B, H, W) in [0, 1], probabilities (B, C))``; ``classes``: the class
        explained per image (default: the predicted one)."""
        was_training = self.model.training
        handle = self.layer.register_forward_hook(self._keep)
        try:
            self.model.eval()
            with torch.enable_grad():
                logits = self.model(images)
                activation = self._activation
                if activation is None:
                    raise RuntimeError("the Grad-CAM layer was not used in the model's forward pass")
                target = logits.argmax(1) if classes is None else torch.as_tensor(classes, device=logits.device)
                score = logits.gather(1, target.view(-1, 1).long()).sum()
                (grad,) = torch.autograd.grad(score, activation)
        finally:
            handle.remove()
            self._activation = None
            self.model.train(was_training)
        weights = grad.mean(dim=(2, 3), keepdim=True)
        cam = F.relu((weights * activation.detach()).sum(1, keepdim=True))
        cam = F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        top = cam.flatten(1).amax(1).view(-1, 1, 1)
        cam = torch.where(top > 0, cam / top.clamp_min(1e-12), torch.zeros_like(cam))
        return cam, logits.detach().float().softmax(-1)
