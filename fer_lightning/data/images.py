"""Decoding image files to 8-bit grey arrays (palette, RGB, 16-bit and float images included)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from fer_lightning.errors import FERError


def read_grey(path: str | Path) -> np.ndarray:
    """Read an image file as a ``(H, W)`` uint8 array.

    Palette ('P') images are expanded through their palette, colour images converted with the ITU-R 601 luma
    weights (PIL's ``convert('L')``), 16-bit and float images rescaled to 0..255.
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
                arr = np.asarray(img, dtype=np.float64)
                top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
                if img.mode == "F" and arr.max() <= 1.0:
                    top = 1.0
                return np.clip(np.rint(arr / top * 255.0), 0, 255).astype(np.uint8)
            if img.mode in ("P", "PA", "LA", "RGBA", "CMYK"):
                img = img.convert("RGB")  # through the palette / without alpha
            if img.mode != "L":
                img = img.convert("L")
            return np.asarray(img, dtype=np.uint8).copy()
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as e:
        raise FERError(
            f"{path}: cannot read this image ({e.__class__.__name__}: {e}); replace or remove the file"
        ) from e


def resize_grey(arr: np.ndarray, size: int) -> np.ndarray:
    """Resize a ``(H, W)`` uint8 image to ``(size, size)`` with antialiased bilinear filtering."""
    if arr.shape == (size, size):
        return arr
    return np.asarray(Image.fromarray(arr).resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)
