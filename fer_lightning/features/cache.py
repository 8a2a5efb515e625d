"""Handcrafted features of a whole dataset, computed once per (dataset, feature settings) and cached on disk."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import torch

from fer_lightning.data.cache import atomic_torch_save
from fer_lightning.features.extractor import HandcraftedFeatures

log = logging.getLogger(__name__)


def feature_key(extractor: HandcraftedFeatures, dataset_fingerprint: str, image_size: int) -> str:
    spec = {"dataset": dataset_fingerprint, "image_size": image_size, "features": extractor.config(), "version": 1}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def load_or_compute(
    extractor: HandcraftedFeatures,
    images: torch.Tensor,
    dataset_fingerprint: str,
    cache_dir: str | Path | None,
    device: torch.device,
) -> dict[str, torch.Tensor]:
    """``{block: (N, D)}`` for ``images`` ``(N, 1, S, S)`` uint8, from the cache when it holds them."""
    key = feature_key(extractor, dataset_fingerprint, int(images.shape[-1]))
    path = Path(cache_dir).expanduser() / f"features-{key}.pt" if cache_dir is not None else None
    dims = extractor.block_dims()
    if path is not None and path.is_file():
        try:
            blocks = torch.load(path, map_location="cpu", weights_only=True)
            if {k: tuple(v.shape) for k, v in blocks.items()} == {k: (len(images), d) for k, d in dims.items()}:
                log.info("handcrafted-feature cache hit: %s", path)
                return blocks
            log.warning("ignoring %s: its blocks do not fit the current settings", path)
        except Exception as e:
            log.warning("ignoring unreadable feature cache %s (%s); computing again", path, e)
    start = time.perf_counter()
    blocks = extractor.compute(images, device=device)
    seconds = time.perf_counter() - start
    log.info(
        "computed handcrafted features of %d images with %s on %s in %.2f s (%.0f images/s): %s",
        len(images), extractor.backend, device, seconds, len(images) / max(seconds, 1e-9), extractor.describe(),
    )
    if path is not None:
        atomic_torch_save(blocks, path)
    return blocks
