"""Atomic file writes: a crash or a full disk never leaves half a file where an earlier good one was.

A file is written beside its destination under a temporary name and renamed over it only when complete, so a reader
sees the old file or the new one, never a part. A full disk (or quota) ends the write with one :class:`FERError` line
naming the file, and the temporary file is removed. Files get the permissions any new file would get (``0666`` less
the process umask), like ``open()`` gives. Text is written as UTF-8; file names that are not valid UTF-8 (which Python
carries as lone surrogates) are written escaped (``caf\\xe9.jpg``).

Examples:
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> write_json(folder / "metrics.json", {"test/acc": 0.5})
    >>> (folder / "metrics.json").read_text()
    '{\\n  "test/acc": 0.5\\n}\\n'
    >>> write_csv(folder / "rows.csv", [{"file": "a.png", "label": "happiness"}], ["file", "label"])
    >>> (folder / "rows.csv").read_text().splitlines()
    ['file,label', 'a.png,happiness']
    >>> escape_surrogates("caf" + b"\\xe9".decode("utf-8", "surrogateescape") + ".jpg")
    'caf\\\\xe9.jpg'
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fer_lightning.errors import FERError

# what a write fails with when there is no room: the disk is full, or the user's quota is spent
NO_SPACE = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


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


def no_space(error: BaseException, dest: str | Path) -> FERError | None:
    """The one line for a write of ``dest`` that failed for want of space (None for any other failure)."""
    if isinstance(error, OSError) and error.errno in NO_SPACE:
        return FERError(f"{dest}: the disk is full ({os.strerror(error.errno)}) while writing it; free some space "
                        f"in {Path(dest).parent} (or give another folder) and run again")
    return None


def atomic_write(dest: str | Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` to write the file, then move it to ``dest`` in one rename. A failed write leaves
    ``dest`` as it was; a full disk raises :class:`FERError` naming ``dest``."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name, suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600
        os.replace(tmp, dest)
    except OSError as e:
        full = no_space(e, dest)
        if full is not None:
            raise full from None
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_bytes(dest: str | Path, data: bytes) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    atomic_write(dest, write)


def atomic_torch_save(dest: str | Path, obj: Any) -> None:
    """``torch.save(obj)`` to ``dest`` as :func:`atomic_write` writes files, serialised straight into the file (no
    copy of it in memory: a checkpoint's fitted layers can be 100 MB)."""
    import torch

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            torch.save(obj, f)

    atomic_write(dest, write)


def atomic_write_text(dest: str | Path, text: str) -> None:
    atomic_write_bytes(dest, escape_surrogates(text).encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_csv(path: str | Path, rows: Iterable[Mapping[str, Any]], fieldnames: Sequence[str]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(fieldnames), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())
