"""Decoding images to 8-bit grey arrays: files (palette, RGB, 16-bit and float images included) and pixel values
written as text in a CSV column (FER2013)."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from fer_lightning.errors import FERError

# the image files that data=folder, data=manifest and predict read
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".pgm", ".ppm", ".webp")


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


def pixels_from_text(text: str, where: str) -> np.ndarray:
    """Space-separated grey values 0..255 of a square image (FER2013's ``pixels``) -> ``(side, side)`` uint8."""
    try:
        values = np.array(text.split(), dtype=np.int64)
    except ValueError:
        bad = next(v for v in text.split() if not v.lstrip("-").isdigit())
        raise FERError(f"{where}: 'pixels' holds '{bad[:20]}', not a number; fix or remove this row") from None
    side = math.isqrt(len(values))
    if side == 0 or side * side != len(values):
        raise FERError(f"{where}: 'pixels' has {len(values)} values, not a square image (48x48 = 2304); "
                       "fix or remove this row")
    if values.min() < 0 or values.max() > 255:
        raise FERError(f"{where}: 'pixels' holds values outside 0..255; fix or remove this row")
    return values.astype(np.uint8).reshape(side, side)


def read_csv_pixels(path: str | Path, offset: int, column: int, where: str) -> np.ndarray:
    """The image whose pixels are column ``column`` of the CSV line starting at byte ``offset`` of ``path``."""
    with open(path, "rb") as f:
        f.seek(offset)
        line = f.readline().decode("utf-8", errors="replace")
    row = next(csv.reader(io.StringIO(line)), [])
    if len(row) <= column:
        raise FERError(f"{where}: the row has {len(row)} fields, no 'pixels' column; fix or remove this row")
    return pixels_from_text(row[column], where)
