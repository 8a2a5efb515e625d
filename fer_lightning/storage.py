"""Atomic file writes: a crash or a full disk never leaves half a file where an earlier good one was.

Files get the permissions any new file would get (``0666`` less the process umask), like ``open()`` gives, so the
other users of a shared results folder can read them when the umask lets them. Text is written as UTF-8; file
names that are not valid UTF-8 (which Python carries as lone surrogates) are written escaped (``caf\\xe9.jpg``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def current_umask() -> int:
    """The process umask, read without changing it where the system says it (Linux), else by setting it back."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def escape_surrogates(text: str) -> str:
    """``text`` with the bytes of non-UTF-8 file names (surrogate escapes) written as ``\\xNN``."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # lone surrogates that are no file-name bytes
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def _atomic(dest: Path, write) -> None:
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name, suffix=".tmp")
    try:
        write(fd, tmp)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600
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
        with os.fdopen(fd, "wb") as f:
            f.write(escape_surrogates(text).encode("utf-8"))

    _atomic(dest, write)
