"""On-disk dataset formats, one module each; every source turns files into :class:`Record` s and nothing more.

``data.source`` names one of :data:`SOURCES`; RAF-DB and AffectNet are configs of the ``manifest`` source,
CK+ one of the ``folder`` source.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from fer_lightning.data.sources.base import Record, Source
from fer_lightning.data.sources.fer2013 import FER2013Source
from fer_lightning.data.sources.folder import FolderSource
from fer_lightning.data.sources.jaffe import JAFFESource
from fer_lightning.data.sources.kdef import KDEFSource
from fer_lightning.data.sources.manifest import ManifestSource
from fer_lightning.errors import FERError
from fer_lightning.runtime.registry import Registry

SOURCES: Registry[type[Source]] = Registry("data.source", {
    "jaffe": JAFFESource,
    "folder": FolderSource,
    "fer2013": FER2013Source,
    "manifest": ManifestSource,
    "kdef": KDEFSource,
})


def make_source(kind: str, root: str | Path | None, cache_dir: str | Path | None, **options: Any) -> Source:
    """The source ``kind`` with its own options; one line naming the option when one is not its own."""
    cls = SOURCES.get(kind)
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "root", "cache_dir")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise FERError(f"data.{unknown[0]} is not an option of data.source={kind}; its own options are: "
                       f"{', '.join(accepted) or 'none'}")
    return cls(root=root, cache_dir=cache_dir, **options)


__all__ = ["SOURCES", "FER2013Source", "FolderSource", "JAFFESource", "KDEFSource", "ManifestSource", "Record",
           "Source", "make_source"]
