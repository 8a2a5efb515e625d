"""Per-image outputs of every process of a DDP job, each dataset image counted once.

A ``DistributedSampler`` pads the last batches with repeated images so that every process gets as many; metrics
computed from :func:`gather_outputs` count every image of a split exactly once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist


# --------------------------------------------------------------------------------------- outputs counted once
def _gather_rows(x: torch.Tensor, strategy: Any) -> list[torch.Tensor]:
    """``x`` of every process (their lengths may differ), in rank order (on the strategy's device: NCCL
    gathers CUDA tensors only)."""
    device, world = strategy.root_device, strategy.world_size
    n = torch.tensor([len(x)], device=device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    longest = max(int(s) for s in sizes)
    padded = torch.zeros((longest, *x.shape[1:]), dtype=x.dtype, device=device)
    padded[: len(x)] = x.to(device)
    gathered = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded)
    return [g[: int(s)].cpu() for g, s in zip(gathered, sizes, strict=True)]


def unique_by_index(outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``outputs`` (aligned tensors with an ``index`` of dataset images) with each index once (its first row),
    ordered by index.

    Examples:
        >>> unique_by_index({"index": torch.tensor([4, 1, 4]), "probs": torch.tensor([0.1, 0.2, 0.3])})
        {'index': tensor([1, 4]), 'probs': tensor([0.2000, 0.1000])}
    """
    index = outputs["index"]
    sorted_index, order = torch.sort(index, stable=True)
    first = torch.ones_like(sorted_index, dtype=torch.bool)
    first[1:] = sorted_index[1:] != sorted_index[:-1]
    keep = order[first]
    return {k: v[keep] for k, v in outputs.items()}


def gather_outputs(batches: Sequence[dict[str, torch.Tensor]], strategy: Any = None) -> dict[str, torch.Tensor]:
    """Per-batch outputs of this process (dicts of aligned tensors with an ``index`` key) -> those of every
    process, each dataset index once, ordered by index, on the CPU. ``strategy``: a Lightning strategy (its
    ``world_size``, ``all_gather``); None or one process: this process's outputs alone."""
    local = {k: torch.cat([b[k].detach() for b in batches]).cpu() for k in batches[0]}
    if strategy is not None and strategy.world_size > 1:
        local = {k: torch.cat(_gather_rows(v, strategy)) for k, v in local.items()}
    return unique_by_index(local)
