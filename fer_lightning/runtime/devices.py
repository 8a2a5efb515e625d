"""The device a computation runs on when the user says ``auto``."""

from __future__ import annotations

import torch


def resolve_device(device: str | None) -> torch.device:
    """``auto`` -> CUDA when available, else CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
