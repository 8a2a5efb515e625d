"""Records -> the decoded images: ``(N, 1, S, S)`` uint8 in a chunked store on disk (:mod:`fer_lightning.io.chunked`),
memory-mapped, decoded once in parallel.

Every image is read as grey (:meth:`Record.read`), hashed (a content hash of its pixels, for duplicates), measured
(its original size, for ``data.min_side``), face-cropped and resized, by ``data.decode_workers`` processes writing
straight into the store (:mod:`fer_lightning.io.chunked`: per-chunk checksums, resumable, one builder at a time).
The store's key is the dataset fingerprint: the files (names, sizes, modification times, EXIF orientations),
labels, subjects, splits and every setting that changes the pixels (image size, crop), so editing, adding or
removing a file, or changing a setting, builds a new store, and a second run with the same files decodes nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fer_lightning.data.images import exif_orientation
from fer_lightning.data.preprocessing import Preprocessing
from fer_lightning.data.sources.base import Record
from fer_lightning.errors import FERError
from fer_lightning.io.chunked import Store, open_or_build
from fer_lightning.runtime.listing import shorten
from fer_lightning.runtime.registry import choose

log = logging.getLogger(__name__)
STORE_VERSION = 2
POOL_MIN_ROWS = 512  # smaller sets decode in the calling process (a pool would cost more than it saves)
DUPLICATE_MODES = ("warn", "error")


@dataclass
class DecodedSet:
    """A decoded dataset: ``images`` is ``(N, 1, S, S)`` uint8 (memory-mapped); the lists are aligned with it."""

    store: Store
    labels: list[str]
    subjects: list[str]  # "" where the dataset has no subject ids
    files: list[str]
    fingerprint: str

    @property
    def images(self) -> torch.Tensor:
        return self.store.tensor("images")

    @property
    def hashes(self) -> np.ndarray:
        """A 64-bit content hash of each image's original pixels."""
        return self.store.array("hashes")

    @property
    def sizes(self) -> np.ndarray:
        """``(N, 2)`` original height and width."""
        return self.store.array("sizes")


def fingerprint(records: Sequence[Record], settings: dict[str, Any]) -> str:
    """A stable hex digest of the files (name, size, mtime, EXIF orientation), the labels and the decoding settings.

    An image stored turned (an EXIF orientation other than 1) adds its orientation: such images are read upright
    (:func:`~fer_lightning.data.images.read_grey`), so a store that earlier versions decoded from their sideways
    pixels is never reused; the digest of every other
    image, and so its store and the runs made from it, stays what it was."""
    h = hashlib.sha256()
    h.update(json.dumps({"version": STORE_VERSION, "settings": settings}, sort_keys=True).encode())
    stats: dict[Path, tuple[os.stat_result, str]] = {}
    for r in records:
        if r.path not in stats:
            turned = exif_orientation(r.path) if r.pixels_at is None else 1
            stats[r.path] = (r.path.stat(), f"\0exif{turned}" if turned != 1 else "")
        st, turned = stats[r.path]
        h.update(f"{r.path.name}\0{st.st_size}\0{st.st_mtime_ns}\0{r.subject}\0{r.label}\0{r.split}\0"
                 f"{r.pixels_at}\0{r.soft}{turned}\n".encode(errors="surrogateescape"))
    return h.hexdigest()[:16]


class Decoder:
    """Fills rows of the store: reads, hashes, measures and prepares (crops and resizes) each record (picklable)."""

    def __init__(self, records: Sequence[Record], preprocessing: Preprocessing) -> None:
        self.records, self.record = records, preprocessing.record()

    def __call__(self, start: int, stop: int, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
        prep = Preprocessing.from_record({"preprocessing": self.record})  # a cropper of this chunk's own
        crop = prep.cropper
        missed = []
        for i in range(start, stop):
            r = self.records[i]
            img = r.read()
            arrays["hashes"][i] = int.from_bytes(
                hashlib.blake2b(img.tobytes() + bytes(str(img.shape), "ascii"), digest_size=8).digest(), "little")
            arrays["sizes"][i] = img.shape
            n_missed = len(crop.missed)
            arrays["images"][i, 0] = prep(img, r.name or r.path)
            if len(crop.missed) > n_missed:
                missed.append(i)
        return {"missed": missed}


def decode_workers(workers: int | None) -> int:
    """``data.decode_workers``: None -> the CPUs this process may use."""
    if workers is None:
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if int(workers) < 0:
        raise FERError(f"data.decode_workers={workers}: give a number of processes (0 or 1: decode in this process)")
    return int(workers)


def decode_store(
    records: Sequence[Record],
    preprocessing: Preprocessing,
    cache_dir: str | Path | None,
    name: str = "faces",
    workers: int | None = None,
) -> DecodedSet:
    """Decode ``records`` (read grey, then ``preprocessing``: crop the face, resize) into ``(N, 1, S, S)`` uint8, or
    open the store that already holds them. ``cache_dir=None``: a temporary store."""
    image_size = preprocessing.image_size
    fp = fingerprint(records, {"image_size": image_size, "crop": preprocessing.face_crop})
    n, row_bytes = len(records), image_size * image_size
    workers = decode_workers(workers) if n >= POOL_MIN_ROWS else 0
    # about 64 chunks (at most 16 MB each), whatever the number of workers: a store built by one machine or
    # process count is resumed and reused by any other
    chunk = int(np.clip(-(-n // 64), 16, max(16, (16 << 20) // row_bytes)))
    specs = {"images": ((1, image_size, image_size), "uint8"), "hashes": ((), "uint64"), "sizes": ((2,), "uint32")}
    store = open_or_build(cache_dir, f"{name}-{image_size}px-{fp}", specs, n,
                          Decoder(records, preprocessing), chunk=chunk, workers=workers,
                          what=f"decoded {name} images")
    missed = [i for notes in store.notes for i in notes.get("missed", [])]
    if missed:
        log.warning("no face found in %d of %d images (centre crops used)", len(missed), n)
    return DecodedSet(
        store=store,
        labels=[r.label for r in records],
        subjects=[r.subject or "" for r in records],
        files=[str(r.path) if r.pixels_at is None else f"{r.path}#{r.name.rsplit('#', 1)[-1]}" for r in records],
        fingerprint=fp,
    )


def warn_small(decoded: DecodedSet, names: Sequence[str], min_side: int | None, image_size: int) -> list[int]:
    """Images whose shorter side is below ``min_side`` pixels (they are upscaled): one warning naming them."""
    if not min_side:
        return []
    small = np.flatnonzero(decoded.sizes.min(axis=1) < int(min_side))
    if len(small):
        shown = shorten([f"{names[i]} ({decoded.sizes[i][0]}x{decoded.sizes[i][1]})" for i in small],
                        f"images smaller than data.min_side={min_side} px")
        log.warning("%d image(s) are smaller than data.min_side=%d px and are upscaled to %d px: %s", len(small),
                    int(min_side), image_size, shown)
    return small.tolist()


def note_upscaling(sizes: np.ndarray, image_size: int) -> float:
    """How much the typical image is upscaled to ``data.image_size`` (its median shorter side; 1.0 or less: not
    upscaled), said in one log line when it is (a warning from 1.5x) with the size that keeps the source pixels.

    Args:
        sizes: ``(N, 2)`` original heights and widths (:attr:`DecodedSet.sizes`).
        image_size: ``data.image_size``.

    Examples:
        >>> note_upscaling(np.array([[48, 48]] * 3 + [[64, 60]]), 224)
        4.666666666666667
        >>> note_upscaling(np.array([[256, 256]]), 224)
        0.875
    """
    sizes = np.asarray(sizes).reshape(-1, 2)
    if not len(sizes):
        return 1.0
    factor = int(image_size) / float(np.median(sizes.min(axis=1)))
    if factor > 1.0:
        shapes, counts = np.unique(sizes, axis=0, return_counts=True)
        h, w = shapes[counts.argmax()]
        source = max(32, int(round(image_size / factor)))  # MobileNetV2 needs 32 px
        log.log(logging.WARNING if factor >= 1.5 else logging.INFO,
                "images are upscaled %.1fx: most common source size %dx%d px (median shorter side %d px) vs "
                "data.image_size=%d; set data.image_size=%d to train at the source size", factor, w, h,
                round(image_size / factor), image_size, source)
    return factor


def duplicate_groups(
    decoded: DecodedSet, names: Sequence[str], labels: Sequence[str], mode: str = "warn"
) -> np.ndarray:
    """For each image, the index of the first image with the same pixels (itself when it is unique). Duplicates
    are named in one warning (``mode='warn'``) or refused (``'error'``)."""
    choose(mode, DUPLICATE_MODES, "data.duplicates")
    hashes = np.asarray(decoded.hashes)
    _, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
    group = first[inverse.reshape(-1)]
    copies = np.flatnonzero(group != np.arange(len(group)))
    if len(copies) == 0:
        return group
    pairs = [f"{names[group[i]]} = {names[i]}" + (f" ({labels[group[i]]} / {labels[i]})"
                                                   if labels[group[i]] != labels[i] else "") for i in copies]
    conflicting = sum(labels[group[i]] != labels[i] for i in copies)
    shown = f"{'; '.join(pairs[:10])}{' ...' if len(pairs) > 10 else ''}" if mode == "error" else shorten(
        pairs, "duplicate images (first = copy)", first=2)
    message = f"{len(copies)} image(s) duplicate another image's pixels ({conflicting} with another label): {shown}"
    if mode == "error":
        raise FERError(f"{message}; remove the copies, or set data.duplicates=warn to keep each group in one split")
    log.warning("%s; each group is kept in one split", message)
    return group
