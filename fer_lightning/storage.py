"""Atomic file writes: a crash or a full disk never leaves half a file where an earlier good one was."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def _atomic(dest: Path, write) -> None:
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name, suffix=".tmp")
    try:
        write(fd, tmp)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_torch_save(obj: Any, dest: Path) -> None:
    def write(fd: int, tmp: str) -> None:
        os.close(fd)
        torch.save(obj, tmp)

    _atomic(dest, write)


def atomic_write_text(dest: Path, text: str) -> None:
    def write(fd: int, tmp: str) -> None:
        with os.fdopen(fd, "w", newline="") as f:
            f.write(text)

    _atomic(dest, write)
