"""Decoded-image cache: files -> one ``uint8`` tensor on disk, keyed by a fingerprint of the files.

The fingerprint covers file names, sizes and modification times plus every setting that changes the decoded
pixels (image size, crop, ...), so editing, adding or removing a file, or changing a setting, builds a new
entry, and a second run with the same files does not decode anything.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fer_lightning.data.crop import FaceCropper
from fer_lightning.data.images import read_grey, resize_grey
from fer_lightning.data.jaffe import FaceRecord
from fer_lightning.storage import atomic_torch_save

log = logging.getLogger(__name__)
CACHE_VERSION = 1


@dataclass
class DecodedSet:
    """A decoded dataset: ``images`` is ``(N, 1, S, S)`` uint8; the lists are aligned with it."""

    images: torch.Tensor
    labels: list[str]
    subjects: list[str]
    files: list[str]
    fingerprint: str


def fingerprint(records: Sequence[FaceRecord], settings: dict[str, Any]) -> str:
    """A stable hex digest of the files (name, size, mtime) and the decoding settings."""
    h = hashlib.sha256()
    h.update(json.dumps({"version": CACHE_VERSION, "settings": settings}, sort_keys=True).encode())
    for r in records:
        st = r.path.stat()
        h.update(f"{r.path.name}\0{st.st_size}\0{st.st_mtime_ns}\0{r.subject}\0{r.label}\n".encode(errors="surrogateescape"))
    return h.hexdigest()[:16]


def load_or_decode(
    records: Sequence[FaceRecord],
    image_size: int,
    cache_dir: str | Path | None,
    name: str = "faces",
    crop: FaceCropper | None = None,
) -> DecodedSet:
    """Decode ``records`` (read grey, crop the face, resize) to ``(N, 1, image_size, image_size)`` uint8, reusing
    the cache entry if there is one. The crop settings are part of the cache key."""
    crop = crop or FaceCropper("none")
    fp = fingerprint(records, {"image_size": image_size, "crop": crop.settings()})
    path = Path(cache_dir).expanduser() / f"{name}-{image_size}px-{fp}.pt" if cache_dir is not None else None
    images = None
    if path is not None and path.is_file():
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            if blob["images"].shape != (len(records), 1, image_size, image_size):
                raise ValueError(f"shape {tuple(blob['images'].shape)}")
            images = blob["images"]
            log.info("decoded-image cache hit: %s", path)
        except Exception as e:  # a truncated or foreign file is rebuilt, never trusted
            log.warning("ignoring unreadable cache file %s (%s); decoding again", path, e)
    if images is None:
        log.info("decoding %d images at %dpx", len(records), image_size)
        arrays = [resize_grey(crop(read_grey(r.path), r.path), image_size) for r in records]
        if crop.missed:
            log.warning("no face found in %d of %d images (centre crops used)", len(crop.missed), len(records))
        images = torch.from_numpy(np.stack(arrays)).unsqueeze(1).contiguous()
        if path is not None:
            atomic_torch_save({"images": images, "fingerprint": fp}, path)
            log.info("cached decoded images in %s", path)
    return DecodedSet(
        images=images,
        labels=[r.label for r in records],
        subjects=[r.subject for r in records],
        files=[str(r.path) for r in records],
        fingerprint=fp,
    )
