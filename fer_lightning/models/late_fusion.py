"""Late fusion: the class probabilities of trained models (e.g. the deep and the handcrafted one) combined by a
weighted mean. Nothing is trained; the weights come from the validation split."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fer_lightning.data.contract import DataNeeds, ModelData
from fer_lightning.data.preprocessing import to_unit
from fer_lightning.errors import FERError
from fer_lightning.features.extractor import blocks_in_batches
from fer_lightning.models.base import FERClassifier
from fer_lightning.models.components.fusion import WEIGHTINGS, EqualWeights
from fer_lightning.models.registry import MODELS, load_model


class LateFusionFER(FERClassifier):
    """``(B, 1, H, W)`` -> ``log(sum_m w_m p_m)``, where ``p_m`` are the member models' class probabilities.

    ``members``: ``{name: checkpoint}`` of fer-lightning models with the same classes (in a pipeline, stage names
    that the pipeline replaces by those stages' best checkpoints). ``weights``: ``mean`` (equal weights) or
    ``loglik`` (``w_m`` proportional to ``exp(-NLL_m)``, member m's per-image geometric-mean likelihood of the true
    class on the validation split). Every member runs on the raw images with its own preprocessing (features,
    backbone). The members' weights and settings travel in the checkpoint, which loads with nothing else.
    """

    model_name = "late_fusion"
    # nothing to fit: training validates (fixing the weights) and tests; in a pipeline, members name earlier stages
    needs = DataNeeds(trains=False, members_from_stages=True)

    def __init__(
        self,
        class_names: Sequence[str],
        members: Mapping[str, str] | Sequence[str] | None = None,
        weights: str = "loglik",
        member_specs: dict[str, dict[str, Any]] | None = None,
        optim: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(class_names, optim=optim)
        self.weighting = WEIGHTINGS.get(weights)()
        if member_specs is None:
            member_specs = self._load_members(members)
        if len(member_specs) < 2:
            raise FERError("model=late_fusion needs at least two members (model.members={name: checkpoint, ...})")
        self.members = nn.ModuleDict({name: self._build(name, spec) for name, spec in member_specs.items()})
        self.members.requires_grad_(False).eval()
        self.register_buffer("weights", torch.full((len(member_specs),), 1.0 / len(member_specs)))
        self.register_buffer("fitted", torch.tensor(False))
        self.save_hyperparameters(ignore=["members", "member_specs"])
        self.hparams["member_specs"] = {
            n: {"model": spec["model"], "hparams": spec["hparams"]} for n, spec in member_specs.items()
        }

    # ------------------------------------------------------------------ members
    def _load_members(self, members: Mapping[str, str] | Sequence[str] | None) -> dict[str, dict[str, Any]]:
        if not members:
            raise FERError("model=late_fusion needs model.members={name: checkpoint, ...} (two or more)")
        if not isinstance(members, Mapping):
            members = {Path(str(p)).parent.parent.name or f"m{i}": p for i, p in enumerate(members)}
        specs = {}
        for name, path in members.items():
            model = load_model(str(path), option=f"model.members.{name}")
            if list(model.class_names) != list(self.class_names):
                raise FERError(f"model.members.{name}={path} has classes {list(model.class_names)}, "
                               f"not {list(self.class_names)}")
            specs[name] = {"model": model.model_name, "hparams": dict(model.hparams), "module": model}
        return specs

    @staticmethod
    def _build(name: str, spec: dict[str, Any]) -> FERClassifier:
        if "module" in spec:
            return spec.pop("module")
        if spec["model"] not in MODELS:
            raise FERError(f"late fusion member {name}: unknown model '{spec['model']}'")
        cls = MODELS.get(spec["model"])
        hparams = {**spec["hparams"], **cls.offline_overrides(spec["hparams"])}
        return cls(**hparams)

    @classmethod
    def offline_overrides(cls, hparams: dict[str, Any]) -> dict[str, Any]:
        return {"members": None}

    def train(self, mode: bool = True) -> LateFusionFER:
        super().train(mode)
        self.members.eval()  # members are fixed: dropout off, BatchNorm statistics unchanged
        return self

    # ------------------------------------------------------------------ weights
    def member_probs(self, images: torch.Tensor) -> torch.Tensor:
        """``(M, B, C)`` class probabilities of each member."""
        return torch.stack([m(images).float().softmax(-1) for m in self.members.values()])

    @torch.no_grad()
    def fit_weights(self, images: torch.Tensor, targets: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        """Set the weights from validation images ``(N, 1, H, W)`` uint8 and their labels; returns them."""
        probs = torch.zeros(len(self.members), 0, self.num_classes)
        if self.weighting.uses_validation and len(images):
            self.members.eval()  # fixed members: dropout off, BatchNorm statistics untouched
            per_image = blocks_in_batches(lambda x: {"p": self.member_probs(to_unit(x)).transpose(0, 1)}, images,
                                          batch_size, self.weights.device)["p"]
            probs = per_image.transpose(0, 1)  # (M, N, C)
        w = (self.weighting if len(images) else EqualWeights())(probs, targets)
        self.weights = w.to(self.weights.device, self.weights.dtype)
        self.fitted.fill_(True)
        self.hparams["fitted_weights"] = {n: round(float(v), 6) for n, v in zip(self.members, w, strict=True)}
        return self.weights

    def prepare(self, data: ModelData, stage: str) -> None:
        """Fix the weights on the validation split (once)."""
        if bool(self.fitted):
            return
        val = torch.as_tensor(data.split.val, dtype=torch.long)
        self.fit_weights(data.images[val], data.targets[val])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        p = torch.einsum("m,mbc->bc", self.weights.float(), self.member_probs(images))
        return p.clamp_min(torch.finfo(p.dtype).tiny).log()
