"""Reading fer-lightning checkpoints safely, once, and checking they fit the model at hand.

Every read is ``torch.load(..., weights_only=True)`` (no code in a pickle runs): our own reads through
:func:`read_checkpoint`, and Lightning's (resuming ``fit`` from ``ckpt_path``) through :class:`CheckedCheckpointIO`,
which a command installs on its trainer. A command reads each checkpoint file once and passes the loaded
dict on (``load_model(ckpt)``, ``model.load_state_dict(ckpt["state_dict"])``).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins import CheckpointIO

from fer_lightning.errors import FERError
from fer_lightning.io.atomic import atomic_write_bytes

FORMAT_KEY = "fer_lightning"


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
    return ckpt


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
        leaves part of one looking whole; a full disk ends the run with one line naming it); remote paths go
        through the wrapped I/O."""
        if "://" in str(path):
            self.inner.save_checkpoint(checkpoint, path, storage_options=storage_options)
            return
        buffer = io.BytesIO()  # serialised first (as Lightning does): the file write is then the only thing to fail
        torch.save(checkpoint, buffer)
        atomic_write_bytes(path, buffer.getvalue())

    def remove_checkpoint(self, path: Any) -> None:
        self.inner.remove_checkpoint(path)

    def teardown(self) -> None:
        self.inner.teardown()
