"""The JAFFE file grammar: ``KA.AN1.39.tiff`` = subject ``KA``, expression ``AN`` (anger) #1, image id 39."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from fer_lightning.data.classes import JAFFE_CODES
from fer_lightning.errors import FERError

IMAGE_SUFFIXES = (".tiff", ".tif")
_NAME = re.compile(r"^(?P<subject>[A-Za-z0-9]+)\.(?P<code>[A-Za-z]+)(?P<index>\d*)\.(?P<id>\d+)\.tiff?$", re.I)


@dataclass(frozen=True)
class FaceRecord:
    """One labelled image file."""

    path: Path
    subject: str
    label: str  # a class name from CLASS_NAMES


def parse_jaffe_name(path: Path) -> FaceRecord:
    """Subject and expression of a JAFFE file name; FERError naming the file if it does not fit the grammar."""
    m = _NAME.match(path.name)
    if m is None:
        raise FERError(
            f"{path}: not a JAFFE file name; expected SUBJECT.CODEn.ID.tiff such as KA.AN1.39.tiff "
            "(remove the file from data.root or rename it)"
        )
    code = m["code"].upper()
    if code not in JAFFE_CODES:
        accepted = ", ".join(f"{c} ({n})" for c, n in JAFFE_CODES.items())
        raise FERError(f"{path}: unknown expression code '{m['code']}'; accepted codes: {accepted}")
    return FaceRecord(path=path, subject=m["subject"].upper(), label=JAFFE_CODES[code])


def scan_jaffe(root: str | Path) -> list[FaceRecord]:
    """All JAFFE images (``.tiff``/``.tif``, any case) directly in ``root``, sorted by file name."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FERError(f"data.root={root} is not a folder: point data.root at the folder holding the JAFFE .tiff files")
    try:
        files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    except OSError as e:
        raise FERError(f"data.root={root} cannot be read ({e.strerror or e}); check the folder's permissions") from e
    if not files:
        raise FERError(
            f"data.root={root} holds no .tiff/.tif images: point it at the JAFFE folder (files like KA.AN1.39.tiff)"
        )
    return [parse_jaffe_name(p) for p in files]
