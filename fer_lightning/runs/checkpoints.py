"""Reading fer-lightning checkpoints safely, once, and checking they fit the model at hand.

Every read is ``torch.load(..., weights_only=True)`` (no code in a pickle runs): our own reads through
:func:`read_checkpoint`, and Lightning's (resuming ``fit`` from ``ckpt_path``) through :class:`CheckedCheckpointIO`,
which a command installs on its trainer. A command reads each checkpoint file once and passes the loaded
dict on (``load_model(ckpt)``, ``model.load_state_dict(ckpt["state_dict"])``).

Fitted layers (z-score, PCA: tens of MB that never change while a head trains) are written once per run, beside
the checkpoints, as ``fitted-<digest>.pt`` (content-addressed; :meth:`RunFolder.fitted_file
<fer_lightning.runs.folder.RunFolder.fitted_file>`), and every checkpoint names that file in its record: a model puts
them under :data:`FITTED_KEY` of the checkpoint dict, :class:`CheckedCheckpointIO` moves them out when it writes, and
every read here puts them back into ``state_dict`` (checked against the digest). A checkpoint written before this,
with its fitted layers in ``state_dict``, loads as it always did.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins import CheckpointIO

from fer_lightning.errors import FERError
from fer_lightning.io.atomic import atomic_torch_save
from fer_lightning.runs.folder import RunFolder

FORMAT_KEY = "fer_lightning"
# a checkpoint dict's fitted layers, {"digest": ..., "tensors": {state-dict key: tensor}}, until they are written
FITTED_KEY = "fer_lightning_fitted"


def tensors_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """A digest (16 hex digits of SHA-256) of named tensors: their names, dtypes, shapes and bytes.

    Examples:
        >>> a = tensors_digest({"w": torch.zeros(3)})
        >>> a == tensors_digest({"w": torch.zeros(3)}), a == tensors_digest({"w": torch.ones(3)}), len(a)
        (True, False, 16)
    """
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(tensors[name].shape)}|".encode())
        h.update(t.view(torch.uint8).numpy())  # its bytes where they are (no copy)
    return h.hexdigest()[:16]


def write_fitted(checkpoint: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """``checkpoint`` as it is written to ``path``: its fitted layers (:data:`FITTED_KEY`) saved once beside it
    (``fitted-<digest>.pt``, left as it is when already there) and named in its record instead."""
    fitted = checkpoint.get(FITTED_KEY)
    if fitted is None:
        return checkpoint
    target = RunFolder.fitted_file(Path(path).parent, fitted["digest"])
    if not target.is_file():
        atomic_torch_save(target, fitted["tensors"])
    out = {k: v for k, v in checkpoint.items() if k != FITTED_KEY}
    out[FORMAT_KEY] = {**checkpoint[FORMAT_KEY], "fitted": {"file": target.name, "digest": fitted["digest"]}}
    return out


def _with_fitted(ckpt: dict[str, Any], path: Path, option: str) -> dict[str, Any]:
    """``ckpt`` with its fitted layers back in ``state_dict``: from the file its record names, beside it (checked
    against the digest), or from the checkpoint itself; a checkpoint of the old layout as it is."""
    fitted = ckpt.pop(FITTED_KEY, None)
    if fitted is not None:
        tensors = fitted["tensors"]
    else:
        ref = ckpt[FORMAT_KEY].get("fitted")
        if not isinstance(ref, Mapping):
            return ckpt
        file = path.parent / Path(str(ref.get("file"))).name
        what = f"{option}={path}: its fitted z-score/PCA layers ({file.name}, written beside it by the run)"
        if not file.is_file():
            raise FERError(f"{what} are missing; copy the run's whole checkpoints/ folder, not the .ckpt alone")
        try:
            tensors = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as e:
            raise FERError(f"{what} are unreadable ({e.__class__.__name__}); copy that file again from the run") from e
        if not isinstance(tensors, dict) or tensors_digest(tensors) != ref.get("digest"):
            raise FERError(f"{what} are damaged (their digest is not {ref.get('digest')}); copy that file again "
                           "from the run")
    ckpt["state_dict"] = {**ckpt.get("state_dict", {}), **tensors}
    return ckpt


def checkpoint_file(path: str | Path, option: str = "ckpt_path") -> Path:
    """``path`` as a file that exists (checked without reading it)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FERError(f"{option}={path}: no such checkpoint file")
    return path


def _checked(path: Path, option: str, load: Callable[[], Any]) -> dict[str, Any]:
    try:
        ckpt = load()
    except Exception as e:
        first = next((line.strip() for line in str(e).splitlines() if line.strip()), "")[:200]  # one line
        raise FERError(f"{option}={path}: not a loadable PyTorch checkpoint ({e.__class__.__name__}: {first})") from e
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get(FORMAT_KEY), dict):
        raise FERError(f"{option}={path}: not a fer-lightning checkpoint (no '{FORMAT_KEY}' record in it)")
    return _with_fitted(ckpt, path, option)


def read_checkpoint(path: str | Path, option: str = "ckpt_path") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (no arbitrary code from pickles) and check it is ours."""
    path = checkpoint_file(path, option)
    return _checked(path, option, lambda: torch.load(path, map_location="cpu", weights_only=True))


def check_record(ckpt: Mapping[str, Any], model: Any, where: str = "the checkpoint") -> None:
    """Raise unless ``ckpt`` was written by the same kind of model as ``model``, with the same classes."""
    info = ckpt.get(FORMAT_KEY)
    if not isinstance(info, Mapping):
        raise FERError(f"{where}: not a fer-lightning checkpoint (no '{FORMAT_KEY}' record in it)")
    if info.get("model") != model.model_name:
        raise FERError(
            f"{where} holds a '{info.get('model')}' model, not '{model.model_name}'; "
            f"use model={info.get('model')} or a checkpoint of a {model.model_name} run"
        )
    if list(info.get("class_names", [])) != list(model.class_names):
        raise FERError(f"{where} was trained on classes {info.get('class_names')}, not {list(model.class_names)}")


class CheckedCheckpointIO(CheckpointIO):
    """The strategy's checkpoint I/O with every load made ``weights_only=True`` and checked like
    :func:`read_checkpoint` (one-line errors); saving is the wrapped I/O's.

    ``guard(trainer)`` installs it: Lightning then reads a ``ckpt_path`` given to ``fit`` once, safely.
    """

    def __init__(self, inner: CheckpointIO, option: str = "ckpt_path") -> None:
        self.inner, self.option = inner, option

    @classmethod
    def guard(cls, trainer: Any, option: str = "ckpt_path") -> None:
        if not isinstance(trainer.strategy.checkpoint_io, cls):
            trainer.strategy.checkpoint_io = cls(trainer.strategy.checkpoint_io, option)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        kwargs = {} if map_location is None else {"map_location": map_location}
        return _checked(Path(path), self.option, lambda: self.inner.load_checkpoint(path, weights_only=True, **kwargs))

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        """A local checkpoint is written beside its name and renamed when complete (a crash or a full disk never
        leaves part of one looking whole; a full disk ends the run with one line naming it), its fitted layers
        once beside it (:func:`write_fitted`); remote paths go through the wrapped I/O, the fitted layers inside."""
        if "://" in str(path):
            self.inner.save_checkpoint(checkpoint, path, storage_options=storage_options)
            return
        atomic_torch_save(path, write_fitted(checkpoint, path))

    def remove_checkpoint(self, path: Any) -> None:
        self.inner.remove_checkpoint(path)

    def teardown(self) -> None:
        self.inner.teardown()
