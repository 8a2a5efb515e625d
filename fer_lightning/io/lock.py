"""The one file lock: an exclusive advisory ``flock`` that the kernel releases when its holder exits, however it exits.

Processes that share a cache (DataLoader workers, DDP ranks, parallel Hydra jobs, a second run) take turns with it:
the first builds an entry, the others wait, then find it and read it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)


@contextlib.contextmanager
def file_lock(path: str | Path, what: str | None = None) -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` (created when missing) for the ``with`` block. ``what``: what the
    holder builds, logged once when this process has to wait for another. Without ``fcntl`` (not POSIX) there is no
    lock: each process may build, and atomic writes keep the files whole."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if what:
                log.info("waiting for another process that is building %s", what)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def one_at_a_time(folder: str | Path | None) -> Iterator[None]:
    """Hold ``<folder>/.lock`` while building what goes into ``folder`` (nothing to hold for ``folder=None``)."""
    if folder is None:
        yield
        return
    with file_lock(Path(folder).expanduser() / ".lock"):
        yield
