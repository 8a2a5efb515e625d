"""Pre-train, then fine-tune: a deep or hybrid model started from another run's fine-tuned backbone.

``model.init_from=<checkpoint or run folder>`` names a checkpoint written by this framework (of a ``deep`` or
``hybrid`` run, on any dataset). Before training starts (never on a resume: the resumed checkpoint holds the
weights), :func:`start_from` copies its MobileNetV2 backbone into the model; a ``deep`` model also keeps the
source's head when both runs have the same classes, in the same order, and the same head layers, and starts a
fresh head otherwise. One log line says which layers were loaded, which re-initialised, and both class lists.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fer_lightning.errors import FERError
from fer_lightning.runs.checkpoints import FORMAT_KEY, read_checkpoint
from fer_lightning.runs.folder import resolve_checkpoint

OPTION = "model.init_from"
log = logging.getLogger(__name__)


def _part(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _check_same_shapes(source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor],
                       prefix: str = "") -> str | None:
    """Why ``source`` cannot be loaded into ``target`` (None when it can): missing, extra or reshaped tensors."""
    missing, extra = sorted(set(target) - set(source)), sorted(set(source) - set(target))
    if missing or extra:
        return (f"{len(missing)} tensors missing (e.g. {prefix}{(missing or ['-'])[0]}), {len(extra)} unknown "
                f"(e.g. {prefix}{(extra or ['-'])[0]})")
    for k, v in target.items():
        if tuple(source[k].shape) != tuple(v.shape):
            return f"{prefix}{k} is {tuple(source[k].shape)}, this model's is {tuple(v.shape)}"
    return None


@dataclass(frozen=True)
class Source:
    """A checkpoint to start from, read and checked (:func:`read_source`): its file, model, classes and the
    ``state_dict``'s ``backbone.*`` and ``head.*`` tensors (prefix removed)."""

    checkpoint: Path
    model: str
    class_names: list[str]
    backbone: dict[str, torch.Tensor]
    head: dict[str, torch.Tensor]


def read_source(path: str | Path, option: str = OPTION) -> Source:
    """The checkpoint ``path`` (a ``.ckpt`` file, or a run folder: its best checkpoint), read safely
    (``weights_only``) and refused in one line unless it is this framework's and has a backbone; the training
    command reads it before the data is prepared, so a wrong file is named at once."""
    path = Path(path).expanduser().absolute()  # recorded as it was found, whatever the directory of a later reader
    path = resolve_checkpoint(path, option)
    ckpt = read_checkpoint(path, option)
    record, state = ckpt[FORMAT_KEY], ckpt.get("state_dict")
    state = state if isinstance(state, Mapping) else {}
    kind, classes = record.get("model"), list(record.get("class_names") or [])
    backbone = _part(state, "backbone.")
    if not backbone:
        raise FERError(f"{option}={path} holds a '{kind}' model, which has no backbone; give the checkpoint of a "
                       "model=deep or model=hybrid run")
    return Source(path, str(kind), classes, backbone, _part(state, "head."))


def start_from(model: Any, path: str | Path | Source, option: str = OPTION) -> dict[str, Any]:
    """Load the fine-tuned backbone of the checkpoint ``path`` (a file, or a run folder: its best checkpoint) into
    ``model`` and return what was done (also kept as ``model.started_from``, recorded in its checkpoints).

    The head of a ``deep`` model is taken too when the source is a ``deep`` run with the same class list and the
    same head layers; otherwise it keeps its fresh initialisation (a ``hybrid`` model's head is always fitted on
    this run's data). Nothing read from disk runs as code (``weights_only`` loading).

    Args:
        model: a model with a ``backbone`` (``deep`` or ``hybrid``), freshly built.
        path: a ``.ckpt`` written by this framework, or the folder of the run that wrote it (or that checkpoint
            already read with :func:`read_source`).
        option: the option named in errors and in the log.

    Returns:
        ``{"checkpoint", "model", "class_names", "loaded", "reinitialised"}``: the source checkpoint, its model
        and classes, and the parts of ``model`` loaded from it and left re-initialised.

    Examples:
        >>> from fer_lightning.models.deep import DeepFER
        >>> import tempfile, os
        >>> source = DeepFER(["a", "b", "c"], backbone={"weights": "none"})
        >>> with tempfile.TemporaryDirectory() as d:
        ...     ckpt = os.path.join(d, "source.ckpt")
        ...     torch.save({"state_dict": source.state_dict(),
        ...                 "fer_lightning": {"model": "deep", "class_names": ["a", "b", "c"]}}, ckpt)
        ...     target = DeepFER(["x", "y"], backbone={"weights": "none"})
        ...     info = start_from(target, ckpt)
        >>> info["loaded"], info["reinitialised"]
        (['backbone'], ['head'])
        >>> torch.equal(target.backbone.features[0][0].weight, source.backbone.features[0][0].weight)
        True
    """
    backbone = getattr(model, "backbone", None)
    if backbone is None:
        raise FERError(f"{option}: model '{model.model_name}' has no backbone to start from a checkpoint; "
                       "use model=deep or model=hybrid")
    src = path if isinstance(path, Source) else read_source(path, option)
    path, kind, classes, source = src.checkpoint, src.model, src.class_names, src.backbone
    why = _check_same_shapes(source, backbone.state_dict(), "backbone.")
    if why:
        raise FERError(f"{option}={path}: its backbone is not this model's MobileNetV2 ({why})")
    backbone.load_state_dict(source)
    loaded, fresh = ["backbone"], []
    head = getattr(model, "head", None) if model.model_name == "deep" else None
    if head is not None:
        if kind == "deep" and classes == list(model.class_names) and not _check_same_shapes(src.head,
                                                                                           head.state_dict()):
            head.load_state_dict(src.head)
            loaded.append("head")
        else:
            fresh.append("head")
    else:
        fresh.append("fusion head (fitted on this run's training split)")
    info = {"checkpoint": str(path), "model": kind, "class_names": classes, "loaded": loaded,
            "reinitialised": fresh}
    model.started_from = info
    log.info("%s=%s: loaded %s from a '%s' run; re-initialised %s; its classes %s, this run's %s", option, path,
             ", ".join(loaded), kind, ", ".join(fresh) or "nothing", classes, list(model.class_names))
    return info
