"""Arrays on disk, built chunk by chunk and memory-mapped read-only once complete.

One store is one folder of ``.npy`` arrays that share their first dimension (rows), plus ``meta.json`` with a
CRC-32 checksum of every chunk of rows of every array. While it is being built it lives in ``<name>.partial/``
with a ``progress.json`` that lists the chunks already written; only a finished build is renamed to
``<name>/``, so a store that was killed halfway is never taken for a complete one: the next build resumes the
missing chunks (or restarts, when the partial folder cannot be trusted) and says which. ``<name>.lock`` lets one
process build while every other process (DataLoader workers, DDP ranks, a second run) waits for it.

Opening a complete store checks every chunk's checksum (about 1.5 GB/s on one core); a chunk that fails is
rebuilt, with a log line naming it. A complete store is mapped copy-on-write: reading costs file pages (which
the kernel may reclaim), never anonymous memory, and a write by mistake never reaches the file.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import tempfile
import time
import zlib
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np

from fer_lightning.errors import FERError
from fer_lightning.io.atomic import atomic_write_text
from fer_lightning.io.lock import file_lock
from fer_lightning.runtime.progress import Progress

log = logging.getLogger(__name__)
VERSION = 1

# fill(start, stop, arrays) writes rows [start, stop) of every array and returns JSON-able notes on that chunk
Fill = Callable[[int, int, dict[str, np.ndarray]], Any]
Specs = dict[str, tuple[tuple[int, ...], str]]


def _crc(a: np.ndarray) -> int:
    return zlib.crc32(memoryview(np.ascontiguousarray(a)).cast("B"))


class Store:
    """A complete store: ``array(name)`` memory-maps an array (copy-on-write) on first use in each process;
    ``notes`` are the per-chunk notes of the build and ``extras`` what the builder recorded. Pickles as its
    folder, so DataLoader workers and spawned processes map the file instead of copying it."""

    def __init__(self, path: Path, meta: dict[str, Any], keep: Any = None) -> None:
        self.path, self.meta, self._keep = Path(path), meta, keep
        self._maps: dict[str, np.ndarray] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "meta": self.meta, "keep": self._keep}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], state["meta"], state["keep"])

    @property
    def rows(self) -> int:
        return int(self.meta["rows"])

    @property
    def notes(self) -> list[Any]:
        return self.meta.get("notes", [])

    @property
    def nbytes(self) -> int:
        return sum((self.path / f"{n}.npy").stat().st_size for n in self.meta["arrays"])

    def array(self, name: str) -> np.ndarray:
        if name not in self._maps:
            self._maps[name] = np.load(self.path / f"{name}.npy", mmap_mode="c", allow_pickle=False)
        return self._maps[name]

    def tensor(self, name: str):
        """The array as a torch tensor sharing the mapping (no copy)."""
        import torch

        return torch.from_numpy(self.array(name))

    def bad_chunks(self) -> list[tuple[str, int]]:
        """``(array, chunk)`` pairs whose bytes no longer match their checksum."""
        chunk, bad = int(self.meta["chunk"]), []
        for name, crcs in self.meta["crc"].items():
            a = np.load(self.path / f"{name}.npy", mmap_mode="r", allow_pickle=False)
            bad += [(name, k) for k, c in enumerate(crcs) if _crc(a[k * chunk : (k + 1) * chunk]) != c]
            del a
        return bad


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def _layout(specs: Specs, rows: int, chunk: int) -> dict[str, Any]:
    return {"version": VERSION, "rows": rows, "chunk": chunk,
            "arrays": {n: {"shape": [rows, *shape], "dtype": np.dtype(dt).str} for n, (shape, dt) in specs.items()}}


def _open_complete(path: Path, layout: dict[str, Any]) -> Store | None:
    meta = _read_json(path / "meta.json")  # its own chunk size defines its checksums: any chunk size will do
    if meta is None or any(meta.get(k) != v for k, v in layout.items() if k != "chunk"):
        return None
    try:
        for name, spec in layout["arrays"].items():
            a = np.load(path / f"{name}.npy", mmap_mode="r", allow_pickle=False)
            if list(a.shape) != spec["shape"] or a.dtype.str != spec["dtype"]:
                return None
            del a
        n_chunks = -(-layout["rows"] // int(meta["chunk"]))
        if {n: len(c) for n, c in meta["crc"].items()} != {n: n_chunks for n in layout["arrays"]}:
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return Store(path, meta)


def _worker_maps(partial: Path, names: list[str]) -> dict[str, np.ndarray]:
    return {n: np.load(partial / f"{n}.npy", mmap_mode="r+", allow_pickle=False) for n in names}


_WORKER: dict[str, Any] = {}


def _worker_init(fill: Fill, partial: Path, names: list[str]) -> None:
    _WORKER.update(fill=fill, maps=_worker_maps(partial, names))


def _run_chunk(k: int, start: int, stop: int, fill: Fill | None = None,
               maps: dict[str, np.ndarray] | None = None) -> tuple[int, dict[str, int], Any]:
    fill = fill or _WORKER["fill"]
    maps = maps if maps is not None else _WORKER["maps"]
    notes = fill(start, stop, maps)
    crc = {}
    for name, a in maps.items():
        a.flush()
        crc[name] = _crc(a[start:stop])
    return k, crc, notes


def _start_partial(partial: Path, layout: dict[str, Any], what: str) -> dict[str, Any]:
    """The progress of a half-built store that can be resumed, or a fresh one (saying which)."""
    progress = _read_json(partial / "progress.json") if partial.is_dir() else None
    if progress is not None and all(progress.get(k) == v for k, v in layout.items()):
        try:
            maps = _worker_maps(partial, list(layout["arrays"]))
            chunk, done = layout["chunk"], {}
            for k, entry in progress["done"].items():
                lo = int(k) * chunk
                if all(_crc(a[lo : lo + chunk]) == entry["crc"][n] for n, a in maps.items()):
                    done[k] = entry
            del maps
            n_chunks = -(-layout["rows"] // chunk)
            log.warning("resuming the half-built %s: %d of %d chunks already done", what, len(done), n_chunks)
            return {**layout, "done": done}
        except (OSError, ValueError, KeyError, TypeError):
            pass
    if partial.exists():
        log.warning("restarting the half-built %s from scratch (its progress record is missing or does not fit)", what)
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    for name, spec in layout["arrays"].items():
        np.lib.format.open_memmap(partial / f"{name}.npy", mode="w+", dtype=np.dtype(spec["dtype"]),
                                  shape=tuple(spec["shape"])).flush()
    progress = {**layout, "done": {}}
    atomic_write_text(partial / "progress.json", json.dumps(progress))
    return progress


def _build(partial: Path, progress: dict[str, Any], fill: Fill, workers: int, what: str) -> None:
    rows, chunk = progress["rows"], progress["chunk"]
    todo = [(k, k * chunk, min(rows, (k + 1) * chunk)) for k in range(-(-rows // chunk))
            if str(k) not in progress["done"]]
    names = list(progress["arrays"])
    done_rows = rows - sum(b - a for _, a, b in todo)
    started, last_save = time.perf_counter(), 0.0

    def record(result: tuple[int, dict[str, int], Any], bar) -> None:
        nonlocal last_save
        k, crc, notes = result
        progress["done"][str(k)] = {"crc": crc, "notes": notes}
        bar.update(min(rows, (k + 1) * chunk) - k * chunk)
        if time.perf_counter() - last_save > 0.5 or len(progress["done"]) * chunk >= rows:
            atomic_write_text(partial / "progress.json", json.dumps(progress))
            last_save = time.perf_counter()

    try:
        with Progress(rows, done_rows, what) as bar:
            if workers <= 1 or len(todo) < 2:
                maps = _worker_maps(partial, names)
                for k, a, b in todo:
                    record(_run_chunk(k, a, b, fill, maps), bar)
                del maps
            else:
                method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
                with ProcessPoolExecutor(min(workers, len(todo)), mp_context=multiprocessing.get_context(method),
                                         initializer=_worker_init, initargs=(fill, partial, names)) as pool:
                    pending = {pool.submit(_run_chunk, k, a, b) for k, a, b in todo[: 2 * workers]}
                    queue = iter(todo[2 * workers :])
                    try:
                        while pending:
                            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                            for fut in finished:
                                record(fut.result(), bar)
                                nxt = next(queue, None)
                                if nxt is not None:
                                    pending.add(pool.submit(_run_chunk, *nxt))
                    except BaseException:
                        pool.shutdown(wait=False, cancel_futures=True)
                        raise
    finally:  # what was done survives an exception or Ctrl-C (a SIGKILL loses at most the last half second)
        atomic_write_text(partial / "progress.json", json.dumps(progress))
    seconds = time.perf_counter() - started
    built = rows - done_rows
    log.info("built %s: %d rows in %.1f s (%.0f rows/s)", what, built, seconds, built / max(seconds, 1e-9))


def _reopen_as_partial(final: Path, partial: Path, store: Store, bad: list[tuple[str, int]], what: str) -> None:
    """Turn a complete store with corrupt chunks back into a partial one that lacks exactly those chunks."""
    chunk = int(store.meta["chunk"])
    for name, k in bad:
        log.warning("%s: chunk %d of '%s' (rows %d-%d) does not match its checksum; rebuilding it", what, k, name,
                    k * chunk, min(store.rows, (k + 1) * chunk) - 1)
    bad_chunks = {k for _, k in bad}
    done = {str(k): {"crc": {n: c[k] for n, c in store.meta["crc"].items()}, "notes": notes}
            for k, notes in enumerate(store.notes) if k not in bad_chunks}
    layout = {k: store.meta[k] for k in ("version", "rows", "chunk", "arrays")}
    if partial.exists():
        shutil.rmtree(partial)
    (final / "meta.json").unlink()
    os.rename(final, partial)
    atomic_write_text(partial / "progress.json", json.dumps({**layout, "done": done}))


def open_or_build(
    folder: str | Path | None,
    name: str,
    specs: Specs,
    rows: int,
    fill: Fill,
    *,
    chunk: int,
    workers: int = 0,
    what: str = "store",
    extras: dict[str, Any] | None = None,
) -> Store:
    """The complete store ``folder/name`` with arrays ``{array: (row shape, dtype)}`` of ``rows`` rows, built
    with ``fill`` (in ``workers`` processes when more than 1; ``fill`` must then pickle) where it is missing,
    half-built or corrupt. ``extras`` are recorded in ``meta.json``. ``folder=None``: a temporary store, removed
    when the returned object is garbage-collected."""
    keep = None
    if folder is None:
        keep = tempfile.TemporaryDirectory(prefix="fer-lightning-")
        folder = keep.name
    folder = Path(folder).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    final, partial = folder / name, folder / f"{name}.partial"
    layout = _layout(specs, rows, max(1, int(chunk)))
    label = f"{what} {final}"
    with file_lock(folder / f"{name}.lock", label):
        if final.is_dir():
            store = _open_complete(final, layout)
            if store is None:
                log.warning("ignoring %s: unreadable or written with other settings; building it again", final)
                shutil.rmtree(final)
            else:
                bad = store.bad_chunks()
                if not bad:
                    log.info("%s: using %s", what, final)
                    store._keep = keep
                    return store
                _reopen_as_partial(final, partial, store, bad, label)
                layout = {**layout, "chunk": int(store.meta["chunk"])}  # rebuild those chunks as they were cut
        progress = _start_partial(partial, layout, label)
        try:
            _build(partial, progress, fill, workers, label)
        except FERError:  # bad input: what was written can never complete; a crash or Ctrl-C leaves it to resume
            shutil.rmtree(partial, ignore_errors=True)
            raise
        chunk_ids = range(-(-rows // layout["chunk"]))
        meta = {**layout, "crc": {n: [progress["done"][str(k)]["crc"][n] for k in chunk_ids] for n in specs},
                "notes": [progress["done"][str(k)]["notes"] for k in chunk_ids], "extras": extras or {}}
        atomic_write_text(partial / "meta.json", json.dumps(meta))
        (partial / "progress.json").unlink()
        os.rename(partial, final)
    return Store(final, meta, keep)
