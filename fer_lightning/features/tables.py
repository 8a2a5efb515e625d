"""Feature tables: the blocks of every image of a dataset (handcrafted HOG/LBP, the hybrid's GAP features), one row
per image, computed once per (dataset, settings) in batches, with a progress bar, and kept on disk in a chunked store
(:mod:`fer_lightning.io.chunked`: memory-mapped, checksummed per chunk, resumable, built by one process while the
others wait)."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fer_lightning.features.extractor import HandcraftedFeatures
from fer_lightning.io.chunked import Store, open_or_build
from fer_lightning.runtime.registry import choose

log = logging.getLogger(__name__)
STORE_DTYPES = ("float32", "float16")


def cache_key(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps({**spec, "version": 2}, sort_keys=True).encode()).hexdigest()[:16]


def block_store(
    name: str,
    spec: dict[str, Any],
    dims: dict[str, int],
    n: int,
    cache_dir: str | Path | None,
    compute: Callable[[int, int], dict[str, torch.Tensor]],
    dtype: str = "float32",
    batch_size: int = 256,
) -> Store:
    """The store ``<cache_dir>/<name>-<key of spec>`` of blocks ``{block: (n, dims[block])}``, built with
    ``compute(start, stop)`` -> the blocks of rows ``[start, stop)`` where it is missing or corrupt."""
    choose(dtype, STORE_DTYPES, "features.store_dtype")

    def fill(start: int, stop: int, arrays: dict[str, np.ndarray]) -> None:
        with torch.no_grad():
            blocks = compute(start, stop)
        for block, values in blocks.items():
            arrays[block][start:stop] = values.detach().cpu().numpy()

    specs = {block: ((d,), dtype) for block, d in dims.items()}
    key = f"{name}-{cache_key({**spec, 'dtype': dtype})}"
    if cache_dir is None or not (Path(cache_dir).expanduser() / key).is_dir():
        log.info("%s", store_cost(dims, n, dtype, cache_dir))
    return open_or_build(cache_dir, key, specs, n, fill, chunk=batch_size, what=name)


def store_cost(dims: dict[str, int], n: int, dtype: str, cache_dir: str | Path | None) -> str:
    """What a block store will take on disk, said before it is computed.

    Examples:
        >>> store_cost({"hog@224": 26244, "lbp@224": 490}, 35887, "float32", "/cache")
        'HOG+LBP: 26,734 values per image x 35,887 images x 4 bytes (float32) = 3.8 GB in /cache'
    """
    values = sum(dims.values())
    kinds = "+".join(dict.fromkeys(block.split("@")[0].upper() for block in dims))
    itemsize = np.dtype(dtype).itemsize
    where = cache_dir if cache_dir is not None else "a temporary folder"
    nbytes = values * n * itemsize
    size = f"{nbytes / 1e9:.1f} GB" if nbytes >= 1e9 else f"{nbytes / 1e6:.1f} MB"
    return f"{kinds}: {values:,} values per image x {n:,} images x {itemsize} bytes ({dtype}) = {size} in {where}"


def blocks_of(store: Store) -> dict[str, torch.Tensor]:
    """``{block: (n, d)}`` tensors over the store's mapping (no copy)."""
    return {block: store.tensor(block) for block in store.meta["arrays"]}


def feature_store(
    extractor: HandcraftedFeatures,
    images: torch.Tensor,
    dataset_fingerprint: str,
    cache_dir: str | Path | None,
    device: torch.device,
    dtype: str = "float32",
) -> Store:
    """Handcrafted blocks of ``images`` ``(N, 1, S, S)`` uint8, computed ``extractor.batch_size`` images at a time
    on ``device`` (or read from the store that holds them)."""
    spec = {"dataset": dataset_fingerprint, "image_size": int(images.shape[-1]), "features": extractor.config()}
    log.info("handcrafted blocks with %s on %s: %s", extractor.backend, device, extractor.describe())
    return block_store(
        "features", spec, extractor.block_dims(), len(images), cache_dir,
        lambda a, b: extractor(images[a:b].to(device)), dtype=dtype, batch_size=extractor.batch_size,
    )
