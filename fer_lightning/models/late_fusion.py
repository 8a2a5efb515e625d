"""Late fusion: the class probabilities of trained models (e.g. the deep and the handcrafted one) combined by a
weighted mean. Nothing is trained; the weights come from the validation split, the part of it reserved for the
fusion, or out-of-fold predictions of the training images (``model.fit_on=crossfit``)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fer_lightning.data.contract import DataNeeds, ModelData
from fer_lightning.data.preprocessing import to_unit
from fer_lightning.data.splits import Split, inner_split
from fer_lightning.errors import FERError
from fer_lightning.features.extractor import blocks_in_batches
from fer_lightning.models.base import FERClassifier
from fer_lightning.models.components.fusion import WEIGHTINGS, EqualWeights, calibrate
from fer_lightning.models.components.tta import TTA_VIEWS, tta_probs
from fer_lightning.models.registry import MODELS, load_model
from fer_lightning.runs.folder import resolve_checkpoint
from fer_lightning.runtime.registry import choose

log = logging.getLogger(__name__)
# model.fit_on: auto (the validation images reserved for the fusion, data.fusion_reserve, when there are some; else
# the validation split) | val (the validation split, on which the members were selected, even with a reserve) |
# crossfit (out-of-fold predictions of every training image by the members' runs on model.crossfit_folds inner folds)
FIT_ON = ("auto", "val", "crossfit")
CROSSFIT_FOLDS = 3  # model.crossfit_folds when none is given


def crossfit_folds(options: Mapping[str, Any]) -> int:
    """The number of inner folds a late fusion's options (``model.*``) cross-fit its weights on; 0 when they do
    not (neither ``weights=crossfit`` nor ``fit_on=crossfit``).

    Examples:
        >>> crossfit_folds({"weights": "crossfit", "crossfit_folds": 3}), crossfit_folds({"weights": "loglik"})
        (3, 0)
    """
    weights = options.get("weights") or LateFusionFER.default_weights
    crossfits = options.get("fit_on") == "crossfit" or WEIGHTINGS.get(weights).crossfits
    return int(options.get("crossfit_folds") or CROSSFIT_FOLDS) if crossfits else 0


def out_of_fold_probs(fold_probs: Sequence[Callable[[torch.Tensor], torch.Tensor]], split: Split,
                      labels: Sequence[str], subjects: Sequence[str], images: torch.Tensor, *, seed: int = 0,
                      by_subject: bool = False) -> torch.Tensor:
    """Out-of-fold class probabilities of every training image: ``fold_probs[i]`` (the run trained on inner fold
    ``i`` of ``k = len(fold_probs)``, ``data.inner_folds=k data.inner_fold=i``) predicts exactly the training
    images that fold held out (:func:`~fer_lightning.data.splits.inner_split`), which it never trained on.

    Shape:
        - images: :math:`(N, 1, H, W)`, every image of the dataset; ``fold_probs[i]``: :math:`(B, 1, H, W)` ->
          :math:`(B, C)`.
        - Output: :math:`(T, C)`, the T training images in the order of ``split.train``.

    Examples:
        >>> from fer_lightning.data.splits import Split
        >>> split = Split(train=np.arange(6), val=np.arange(6, 8), test=np.arange(8, 10))
        >>> labels, images = ["a", "b"] * 5, torch.arange(10.0).reshape(10, 1, 1, 1)
        >>> fold = lambda x: torch.stack([x.flatten(), -x.flatten()], 1)  # "probabilities" that name the image
        >>> out_of_fold_probs([fold, fold], split, labels, labels, images)[:, 0]
        tensor([0., 1., 2., 3., 4., 5.])
    """
    train = np.asarray(split.train)
    position = {int(row): i for i, row in enumerate(train)}
    out: torch.Tensor | None = None
    covered = torch.zeros(len(train), dtype=torch.bool)
    for i, probs_of in enumerate(fold_probs):
        held = inner_split(split, labels, subjects, folds=len(fold_probs), fold=i, seed=seed,
                           by_subject=by_subject).test
        probs = probs_of(images[torch.as_tensor(held, dtype=torch.long)])
        out = probs.new_zeros(len(train), probs.shape[-1]) if out is None else out
        at = torch.as_tensor([position[int(r)] for r in held], dtype=torch.long)
        out[at], covered[at] = probs, True
    if out is None or not bool(covered.all()):
        raise RuntimeError("out-of-fold predictions do not cover every training image")
    return out


class LateFusionFER(FERClassifier):
    """``(B, 1, H, W)`` -> ``log(sum_m w_m p_m)``, where ``p_m`` are the member models' class probabilities.

    ``members``: ``{name: checkpoint}`` of fer-lightning models with the same classes, each a checkpoint file or a
    run folder (its tested checkpoint); in a pipeline, stage names that the pipeline replaces by those stages' best
    checkpoints. ``weights`` (:data:`~fer_lightning.models.components.fusion.WEIGHTINGS`): ``mean`` (equal
    weights), ``loglik`` (``w_m`` proportional to ``exp(-NLL_m)``, member m's per-image geometric-mean likelihood of
    the true class on the validation split), ``shrunk`` (halfway between the two) or ``calibrated`` (each member's
    probabilities temperature-scaled on the validation split, then equal weights). Every member runs on the raw
    images with its own preprocessing (features, backbone). ``tta`` (:data:`~fer_lightning.models.components.tta.
    TTA_VIEWS`): ``none``, ``flip`` or ``flip_shift``, each member's probabilities averaged over transformed copies
    of the face (at validation, which fits the weights, test, evaluation, prediction and in exported files).
    ``fit_on``: ``auto`` fits the weights on the validation images reserved for them (``data.fusion_reserve``),
    which no member was selected on, when there are some, else on the validation split; ``val``: on the
    validation split even with a reserve; ``crossfit`` (implied by ``weights=crossfit``, which is ``loglik``
    fitted there): on out-of-fold predictions of every training image (:func:`out_of_fold_probs`) by each
    member's ``crossfit_folds`` inner-fold runs, ``crossfit_members`` ``{name: [run of inner fold 0, ...]}``
    (in a pipeline, trained for you). The members' weights and settings travel in the checkpoint, which loads
    with nothing else.
    """

    model_name = "late_fusion"
    # nothing to fit: training validates (fixing the weights) and tests; in a pipeline, members name earlier stages
    needs = DataNeeds(trains=False, members_from_stages=True)
    min_members = 2
    default_weights = "mean"  # model.weights when none is given (docs "Fusion weights": chosen on validation)

    def __init__(
        self,
        class_names: Sequence[str],
        members: Mapping[str, str] | Sequence[str] | None = None,
        weights: str | None = None,
        member_specs: dict[str, dict[str, Any]] | None = None,
        optim: dict[str, Any] | None = None,
        tta: str = "none",
        fit_on: str = "auto",
        crossfit_folds: int = CROSSFIT_FOLDS,
        crossfit_members: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        super().__init__(class_names, optim=optim)
        self.fit_on = choose(fit_on, FIT_ON, "model.fit_on")
        weights = weights or self.default_weights
        self.weighting = WEIGHTINGS.get(weights)()
        self.crossfits = self.fit_on == "crossfit" or self.weighting.crossfits
        if self.crossfits and member_specs is None and not crossfit_members:
            raise FERError(self._no_crossfit_runs(weights))
        TTA_VIEWS.get(tta)
        self.tta = tta
        if member_specs is None:
            member_specs = self._load_members(members)
        if len(member_specs) < self.min_members:
            raise FERError(f"model={self.model_name} needs at least {self.min_members} member(s) "
                           "(model.members={name: checkpoint or run folder, ...})")
        self.members = nn.ModuleDict({name: self._build(name, spec) for name, spec in member_specs.items()})
        self.members.requires_grad_(False).eval()
        self.register_buffer("weights", torch.full((len(member_specs),), 1.0 / len(member_specs)))
        # per-member temperatures, in the checkpoint only for a calibrating weighting (older checkpoints load)
        self.register_buffer("temperatures", torch.ones(len(member_specs)), persistent=self.weighting.calibrates)
        self.register_buffer("fitted", torch.tensor(False))
        self.save_hyperparameters(ignore=["members", "member_specs"])
        self.hparams["member_specs"] = {
            n: {"model": spec["model"], "hparams": spec["hparams"]} for n, spec in member_specs.items()
        }

    # ------------------------------------------------------------------ members
    def _load_members(self, members: Mapping[str, str] | Sequence[str] | None) -> dict[str, dict[str, Any]]:
        if not members:
            raise FERError(f"model={self.model_name} needs model.members={{name: checkpoint, ...}} "
                           f"({self.min_members} or more)")
        if not isinstance(members, Mapping):
            members = self.member_names(members)
        specs = {}
        for name, path in members.items():
            model = load_model(str(resolve_checkpoint(str(path), f"model.members.{name}")),
                               option=f"model.members.{name}")
            if list(model.class_names) != list(self.class_names):
                raise FERError(f"model.members.{name}={path} has classes {list(model.class_names)}, "
                               f"not {list(self.class_names)}")
            specs[name] = {"model": model.model_name, "hparams": dict(model.hparams), "module": model}
        return specs

    @staticmethod
    def member_names(paths: Sequence[str]) -> dict[str, str]:
        """A list of members named by their run folders (``<run>/checkpoints/x.ckpt`` or ``<run>``)."""
        names = {}
        for i, p in enumerate(paths):
            path = Path(str(p))
            name = (path.parent.parent.name if path.suffix == ".ckpt" else path.name) or f"m{i}"
            names[name if name not in names else f"{name}_{i}"] = str(p)
        return names

    @staticmethod
    def _build(name: str, spec: dict[str, Any]) -> FERClassifier:
        if "module" in spec:
            return spec.pop("module")
        if spec["model"] not in MODELS:
            raise FERError(f"late fusion member {name}: unknown model '{spec['model']}'")
        cls = MODELS.get(spec["model"])
        hparams = {**spec["hparams"], **cls.offline_overrides(spec["hparams"])}
        return cls(**hparams)

    def _no_crossfit_runs(self, weights: str) -> str:
        return (f"model={self.model_name} model.weights={weights} model.fit_on={self.fit_on} cross-fits the weights, "
                "which needs each member's runs on inner folds of the training split (model.crossfit_members={name: "
                "[run with data.inner_folds=k data.inner_fold=0, ..., k-1]}); experiment=late_fusion trains them "
                "for you; or use model.weights=mean")

    @classmethod
    def offline_overrides(cls, hparams: dict[str, Any]) -> dict[str, Any]:
        return {"members": None, "crossfit_members": None}

    def train(self, mode: bool = True) -> LateFusionFER:
        super().train(mode)
        self.members.eval()  # members are fixed: dropout off, BatchNorm statistics unchanged
        return self

    # ------------------------------------------------------------------ weights
    def member_probs(self, images: torch.Tensor) -> torch.Tensor:
        """``(M, B, C)`` class probabilities of each member (temperature-scaled when the weighting calibrates)."""
        probs = tta_probs(self._member_probs, images, self.tta)
        return calibrate(probs, self.temperatures) if self.weighting.calibrates else probs

    def _member_probs(self, images: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(images).float().softmax(-1) for m in self.members.values()])

    @torch.no_grad()
    def fit_weights(self, images: torch.Tensor, targets: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        """Set the weights from validation images ``(N, 1, H, W)`` uint8 and their labels; returns them."""
        probs = torch.zeros(len(self.members), 0, self.num_classes)
        self.temperatures.fill_(1.0)
        if self.weighting.uses_validation and len(images):
            self.members.eval()  # fixed members: dropout off, BatchNorm statistics untouched
            per_image = blocks_in_batches(lambda x: {"p": self.member_probs(to_unit(x)).transpose(0, 1)}, images,
                                          batch_size, self.weights.device)["p"]
            probs = per_image.transpose(0, 1)  # (M, N, C)
        return self.fit_weights_on(probs, targets)

    @torch.no_grad()
    def fit_weights_on(self, probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Set the weights (and temperatures) from the members' held-out probabilities ``(M, N, C)``, not yet
        calibrated, and the labels ``(N,)``; returns the weights."""
        self.temperatures.fill_(1.0)
        if self.weighting.calibrates and len(targets):
            t = self.weighting.temperatures(probs, targets)
            self.temperatures.copy_(t.to(self.temperatures.dtype))
            probs = calibrate(probs, t)
        w = (self.weighting if len(targets) else EqualWeights())(probs, targets)
        self.weights = w.to(self.weights.device, self.weights.dtype)
        self.fitted.fill_(True)
        record = self.fit_record()
        self.hparams["fitted_weights"] = record["fusion_weights"]
        if "fusion_temperatures" in record:
            self.hparams["fitted_temperatures"] = record["fusion_temperatures"]
        return self.weights

    def fit_record(self) -> dict[str, Any]:
        """What the weighting fitted, for the run's ``metrics.json``: ``fusion_weights`` (and
        ``fusion_temperatures`` when it calibrates), ``{member: value}``."""
        record = {"fusion_weighting": self.hparams["weights"], "fusion_fitted_on": self.hparams.get("fitted_on"),
                  "fusion_weights": {
            n: round(float(v), 6) for n, v in zip(self.members, self.weights, strict=True)}}
        if self.hparams.get("reserve_acc") is not None:
            record["fusion_reserve_acc"] = self.hparams["reserve_acc"]
        if self.weighting.calibrates:
            record["fusion_temperatures"] = {n: round(float(v), 6)
                                             for n, v in zip(self.members, self.temperatures, strict=True)}
        return record

    def prepare(self, data: ModelData, stage: str) -> None:
        """Fix the weights (once) on the validation images reserved for them (``data.fusion_reserve``), which no
        member was selected on; without a reserve, on the validation split; with ``fit_on=crossfit``, on the
        out-of-fold predictions of the training images."""
        if bool(self.fitted):
            return
        reserve = torch.as_tensor(data.split.reserve, dtype=torch.long)
        if self.crossfits:
            self._fit_crossfit(data)
        else:
            part = "reserve" if len(reserve) and self.fit_on == "auto" else "val"
            rows = torch.as_tensor(getattr(data.split, part), dtype=torch.long)
            log.info("fusion weights (%s) fitted on the %d %s images", self.hparams["weights"], len(rows),
                     "reserved validation" if part == "reserve" else "validation")
            self.fit_weights(data.images[rows], data.targets[rows])
            self.hparams["fitted_on"] = f"{part} ({len(rows)} images)"
        if len(reserve):  # the fused accuracy on the reserve, which selected no member: what chooses a weighting
            self.hparams["reserve_acc"] = self.accuracy(data.images[reserve], data.targets[reserve])

    def _fit_crossfit(self, data: ModelData) -> None:
        folds, runs = int(self.hparams["crossfit_folds"]), self.hparams.get("crossfit_members") or {}
        if set(runs) != set(self.members) or any(len(runs[n]) != folds for n in runs):
            raise FERError(f"{self._no_crossfit_runs(self.hparams['weights'])} (model.crossfit_folds={folds} runs "
                           f"of each of {', '.join(self.members)})")
        device = self.weights.device
        per_member = []
        for name in self.members:
            fold_models = [load_model(str(resolve_checkpoint(str(p), f"model.crossfit_members.{name}")),
                                      option=f"model.crossfit_members.{name}").eval().to(device) for p in runs[name]]
            per_member.append(out_of_fold_probs([self._probs_of(m) for m in fold_models], data.split, data.labels,
                                                data.subjects, data.images, seed=data.seed,
                                                by_subject=data.subject_independent))
        train = torch.as_tensor(np.asarray(data.split.train), dtype=torch.long)
        log.info("fusion weights (%s) fitted on out-of-fold predictions of the %d training images (%d folds)",
                 self.hparams["weights"], len(train), folds)
        self.fit_weights_on(torch.stack(per_member).cpu(), data.targets[train])
        self.hparams["fitted_on"] = f"crossfit ({folds} folds, {len(train)} training images)"

    def _probs_of(self, model: nn.Module, batch_size: int = 32) -> Callable[[torch.Tensor], torch.Tensor]:
        """uint8 images ``(B, 1, H, W)`` -> ``(B, C)`` class probabilities of ``model``, with this fusion's TTA."""
        def probs(x: torch.Tensor) -> torch.Tensor:
            return tta_probs(lambda im: model(im).float().softmax(-1), to_unit(x), self.tta)
        return lambda images: blocks_in_batches(lambda x: {"p": probs(x)}, images, batch_size,
                                                self.weights.device)["p"]

    @torch.no_grad()
    def accuracy(self, images: torch.Tensor, targets: torch.Tensor, batch_size: int = 32) -> float:
        """The fused accuracy on ``(N, 1, H, W)`` uint8 images with labels ``targets``."""
        logits = blocks_in_batches(lambda x: {"p": self(to_unit(x))}, images, batch_size, self.weights.device)["p"]
        return round(float((logits.argmax(-1) == targets.cpu()).float().mean()), 6)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        p = torch.einsum("m,mbc->bc", self.weights.float(), self.member_probs(images))
        return p.clamp_min(torch.finfo(p.dtype).tiny).log()


class EnsembleFER(LateFusionFER):
    """``model=ensemble``: the mean class probabilities of one or more checkpoints (seeds of one model, or
    different models), weighted like a late fusion (``weights``, default ``mean``).

    ``members``: a list of checkpoint files or run folders (each run's tested checkpoint), or ``{name: path}``.
    It is a late fusion whose members come from finished runs, so it evaluates (``fer-eval``), predicts
    (``fer-predict``) and exports (``fer-export``) like one. An ensemble of one checkpoint is that checkpoint.
    """

    model_name = "ensemble"
    min_members = 1
    default_weights = "mean"

