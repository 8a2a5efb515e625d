"""Decoding images to 8-bit grey arrays: files (palette, RGB, 16-bit and float images included, turned upright by
their EXIF orientation) and pixel values written as text in a CSV column (FER2013)."""

from __future__ import annotations

import csv
import io
import math
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from fer_lightning.errors import FERError

# the image files that data=folder, data=manifest and predict read
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".pgm", ".ppm", ".webp")
# EXIF orientation (tag 0x0112) -> the transpose that makes the stored pixels upright (as PIL's ImageOps.exif_transpose)
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


class ImageTooLarge(FERError):
    """An image with more pixels than allowed (:func:`decode_grey`'s ``max_pixels``), refused before decoding."""


_UNREADABLE = (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError)


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation of an opened, not yet decoded image (1 when it has none or an invalid one), from its
    header: a PNG's eXIf chunk only when it comes before the pixels (one after them would need the whole file
    decoded, and the store's fingerprint reads every file's orientation)."""
    if img.format == "PNG" and "exif" not in img.info:
        return 1
    try:
        with warnings.catch_warnings():  # a damaged header: decoding the file says so, naming it
            warnings.simplefilter("ignore")
            value = img.getexif().get(0x0112, 1)
    except _UNREADABLE:
        return 1
    return value if value in _UPRIGHT else 1


def exif_orientation(path: str | Path) -> int:
    """The EXIF orientation tag of an image file (2..8 when its pixels are stored turned or mirrored, else 1), read
    from the header without decoding the pixels; 1 for a file that cannot be read (decoding it names it).

    Examples:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "turned.jpg"
        >>> exif = Image.Exif()
        >>> exif[0x0112] = 6
        >>> Image.new("L", (4, 2)).save(path, exif=exif)
        >>> exif_orientation(path), read_grey(path).shape  # stored 4 wide, 2 high; upright: 2 wide, 4 high
        (6, (4, 2))
    """
    try:
        with Image.open(path) as img:
            return _orientation(img)
    except _UNREADABLE:
        return 1


def read_grey(path: str | Path) -> np.ndarray:
    """Read an image file as a ``(H, W)`` uint8 array.

    Images are turned upright by their EXIF orientation (:func:`exif_orientation`; a phone photo stored sideways
    is read as it is shown), palette ('P') images expanded through their palette, colour images converted with the
    ITU-R 601 luma weights (PIL's ``convert('L')``), 16-bit and float images rescaled to 0..255.
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            return _grey(img)
    except _UNREADABLE as e:
        raise FERError(
            f"{path}: cannot read this image ({e.__class__.__name__}: {e}); replace or remove the file"
        ) from e


def decode_grey(data: bytes, where: str = "the image", max_pixels: int | None = None,
                formats: tuple[str, ...] | None = None) -> np.ndarray:
    """An encoded image held in memory (an upload) as :func:`read_grey` reads a file: the same ``(H, W)`` uint8.
    ``max_pixels``: refuse a larger image from its header, before any pixel is decoded (a decompression bomb);
    ``formats``: the PIL formats accepted (e.g. ``("JPEG", "PNG")``; None: every format PIL reads).

    Examples:
        >>> buf = io.BytesIO()
        >>> Image.new("RGB", (5, 3), (255, 0, 0)).save(buf, "PNG")
        >>> decode_grey(buf.getvalue()).tolist()[0]  # ITU-R 601 luma of pure red
        [76, 76, 76, 76, 76]
        >>> decode_grey(b"not an image", "upload")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        fer_lightning.errors.FERError: upload: cannot read this image (UnidentifiedImageError: ...)
    """
    try:
        with Image.open(io.BytesIO(data), formats=formats) as img:
            if max_pixels is not None and img.width * img.height > max_pixels:
                raise ImageTooLarge(f"{where}: {img.width}x{img.height} pixels is more than the {max_pixels} allowed")
            return _grey(img)
    except _UNREADABLE as e:
        raise FERError(f"{where}: cannot read this image ({e.__class__.__name__}: {e})") from e


def _grey(img: Image.Image) -> np.ndarray:
    orientation = _orientation(img)
    img.load()
    if orientation != 1:
        img = img.transpose(_UPRIGHT[orientation])
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
