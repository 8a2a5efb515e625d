"""Feature blocks of a whole dataset, computed once per (dataset, settings) and cached on disk."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from fer_lightning.features.extractor import HandcraftedFeatures
from fer_lightning.storage import atomic_torch_save

log = logging.getLogger(__name__)


def cache_key(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps({**spec, "version": 1}, sort_keys=True).encode()).hexdigest()[:16]


def cached_blocks(
    name: str,
    spec: dict[str, Any],
    dims: dict[str, int],
    n: int,
    cache_dir: str | Path | None,
    compute: Callable[[], dict[str, torch.Tensor]],
) -> dict[str, torch.Tensor]:
    """``{block: (n, dims[block])}`` from ``<cache_dir>/<name>-<key of spec>.pt``, or ``compute()`` and store it."""
    path = Path(cache_dir).expanduser() / f"{name}-{cache_key(spec)}.pt" if cache_dir is not None else None
    if path is not None and path.is_file():
        try:
            blocks = torch.load(path, map_location="cpu", weights_only=True)
            if {k: tuple(v.shape) for k, v in blocks.items()} == {k: (n, d) for k, d in dims.items()}:
                log.info("%s cache hit: %s", name, path)
                return blocks
            log.warning("ignoring %s: its blocks do not fit the current settings", path)
        except Exception as e:
            log.warning("ignoring unreadable cache file %s (%s); computing again", path, e)
    start = time.perf_counter()
    blocks = compute()
    seconds = time.perf_counter() - start
    log.info("computed %s of %d images in %.2f s (%.0f images/s)", name, n, seconds, n / max(seconds, 1e-9))
    if path is not None:
        atomic_torch_save(blocks, path)
    return blocks


def load_or_compute(
    extractor: HandcraftedFeatures,
    images: torch.Tensor,
    dataset_fingerprint: str,
    cache_dir: str | Path | None,
    device: torch.device,
) -> dict[str, torch.Tensor]:
    """Handcrafted ``{block: (N, D)}`` for ``images`` ``(N, 1, S, S)`` uint8, from the cache when it holds them."""
    spec = {"dataset": dataset_fingerprint, "image_size": int(images.shape[-1]), "features": extractor.config()}
    log.info("handcrafted blocks with %s on %s: %s", extractor.backend, device, extractor.describe())
    return cached_blocks(
        "features", spec, extractor.block_dims(), len(images), cache_dir,
        lambda: extractor.compute(images, device=device),
    )
