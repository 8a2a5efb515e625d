"""JAFFE: ``KA.AN1.39.tiff`` = subject ``KA``, expression ``AN`` (anger) #1, image id 39, all in one folder.

With no root, the project's synthetic JAFFE-format set is generated (once) into the cache folder and used.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from fer_lightning.data.classes import CLASS_NAMES, JAFFE_CODES, JAFFE_N_IMAGES, JAFFE_SUBJECTS
from fer_lightning.data.sources.base import Record, Source
from fer_lightning.data.synthetic import ensure_synthetic
from fer_lightning.errors import FERError

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".tiff", ".tif")
_NAME = re.compile(r"^(?P<subject>[A-Za-z0-9]+)\.(?P<code>[A-Za-z]+)(?P<index>\d*)\.(?P<id>\d+)\.tiff?$", re.I)


def parse_jaffe_name(path: Path) -> Record:
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
    return Record(path=path, subject=m["subject"].upper(), label=JAFFE_CODES[code], name=path.name)


def scan_jaffe(root: str | Path) -> list[Record]:
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


class JAFFESource(Source):
    """JAFFE, or the synthetic JAFFE-format set when ``root`` is None (``synthetic``: its generator settings)."""

    def __init__(self, root: str | Path | None = None, cache_dir: str | Path | None = None,
                 synthetic: dict[str, Any] | None = None) -> None:
        super().__init__(root, cache_dir)
        self.synthetic_cfg = dict(synthetic or {})

    @property
    def name(self) -> str:
        return "synthetic" if self.root is None else "jaffe"

    def scan(self) -> list[Record]:
        if self.root is None:
            if self.cache_dir is None:
                raise FERError("data.cache_dir is not set: the synthetic set needs a folder to be generated into")
            folder = ensure_synthetic(self.cache_dir, **self.synthetic_cfg)
        else:
            folder = self.root
        records = scan_jaffe(folder)
        present = {r.label for r in records}
        for name in CLASS_NAMES:
            if name not in present:
                raise FERError(f"class '{name}' has no images in {folder}; every expression is needed")
        if self.root is None:
            log.warning(
                "*** SYNTHETIC DATA *** no data.root given: using the generated synthetic JAFFE-format set "
                "(%d images). Results say nothing about real faces; set data.root=/path/to/jaffe.", len(records)
            )
        else:
            n_subjects = len({r.subject for r in records})
            if len(records) != JAFFE_N_IMAGES or n_subjects != len(JAFFE_SUBJECTS):
                log.warning(
                    "%s: %d images of %d subjects, unlike the official JAFFE (%d images of %d subjects)",
                    self.root, len(records), n_subjects, JAFFE_N_IMAGES, len(JAFFE_SUBJECTS),
                )
        return records
