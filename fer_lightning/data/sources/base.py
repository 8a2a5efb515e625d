"""What a source gives the data module: one :class:`Record` per labelled image, and the dataset's classes.

A source only reads the dataset's index (file names, label files, CSV columns); decoding pixels is the store's
job (:mod:`fer_lightning.data.decoded`), done once and in parallel, through :meth:`Record.read`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from fer_lightning.data.classes import ALL_CLASS_NAMES, CLASS_ALIASES
from fer_lightning.data.images import read_csv_pixels, read_grey
from fer_lightning.errors import FERError

SPLIT_NAMES = ("train", "val", "test")
# Names of the parts of a published split, in a manifest's split column or as split folders (case-insensitive).
SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                 "test": "test", "testing": "test"}


@dataclass(frozen=True)
class Record:
    """One labelled image.

    ``path``: the image file, or the text file holding its pixels (then ``pixels_at`` = (byte offset of its
    line, column index)); ``name``: how results name it (the path relative to the dataset root, or
    ``fer2013.csv#17`` for row 17); ``subject``: the person, or None where the dataset has no subject ids;
    ``split``: ``train``/``val``/``test`` where the dataset has a published split; ``soft``: a label
    distribution over the source's classes (FER+ votes), else None.
    """

    path: Path
    label: str
    subject: str | None = None
    split: str | None = None
    name: str = ""
    pixels_at: tuple[int, int] | None = None
    soft: tuple[float, ...] | None = None

    def read(self) -> np.ndarray:
        """The image as ``(H, W)`` uint8 grey."""
        if self.pixels_at is None:
            return read_grey(self.path)
        return read_csv_pixels(self.path, *self.pixels_at, where=self.name)


class Source(ABC):
    """Base of the on-disk formats. Subclasses implement :meth:`scan`; ``name`` is the dataset's name in results."""

    name = "dataset"
    # the split data.split=auto means when the dataset has no split of its own
    default_split = "paper"
    # what data.split=auto calls the dataset's own split, when every image has a part of it
    own_split = "official"

    def __init__(self, root: str | Path | None, cache_dir: str | Path | None = None) -> None:
        self.root = None if root is None else Path(root).expanduser()
        self.cache_dir = cache_dir

    @abstractmethod
    def scan(self) -> list[Record]:
        """Every labelled image of the dataset, in a fixed order."""

    @cached_property
    def records(self) -> list[Record]:
        records = self.scan()
        if not records:
            raise FERError(f"data.root={self.root}: no labelled images found")
        return records

    def classes(self) -> tuple[str, ...]:
        """The classes present, in canonical order (models' outputs follow them); at least two. The data module
        asks once and keeps the answer."""
        present = {r.label for r in self.records}
        classes = tuple(c for c in ALL_CLASS_NAMES if c in present)
        if len(classes) < 2:
            raise FERError(f"data.root={self.root} holds only the class {classes}; at least two are needed")
        return classes

    @property
    def has_subjects(self) -> bool:
        return all(r.subject is not None for r in self.records)

    @property
    def has_split(self) -> bool:
        return all(r.split is not None for r in self.records)


def under_root(root: Path, relative: str, where: str) -> Path:
    """``root / relative``, refusing a path that leaves ``root`` (absolute, ``..``, or a link pointing out)."""
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()):
        raise FERError(f"{where}: path '{relative}' is outside data.root={root}; give paths relative to data.root")
    if not path.is_file():
        raise FERError(f"{where}: image '{relative}' does not exist under data.root={root}; fix the path or the root")
    return path


def label_map_of(label_map: Mapping[Any, str | None] | None) -> dict[str, str | None] | None:
    """``data.label_map`` checked: codes as strings, each mapped to a canonical class, or None (drop its images).

    Examples:
        >>> label_map_of({1: "Surprised", 2: None})
        {'1': 'surprise', '2': None}
        >>> label_map_of({1: "bored"})
        Traceback (most recent call last):
        ...
        fer_lightning.errors.FERError: data.label_map: code 1 maps to 'bored', not a class; use one of anger, \
contempt, disgust, fear, happiness, neutral, sadness, surprise or null (drop)
    """
    if label_map is None:
        return None
    checked: dict[str, str | None] = {}
    for code, cls in dict(label_map).items():
        if cls is not None and str(cls).lower() not in CLASS_ALIASES:
            raise FERError(f"data.label_map: code {code} maps to '{cls}', not a class; use one of "
                           f"{', '.join(sorted(set(CLASS_ALIASES.values())))} or null (drop)")
        checked[str(code)] = None if cls is None else CLASS_ALIASES[str(cls).lower()]
    return checked
