"""Any dataset described by a list file: ``path,label[,subject][,split]`` (CSV, TSV or whitespace-separated).

Paths are relative to ``data.root`` (a path that leaves it is refused); a label is a class name or alias, or a
code mapped by ``label_map`` (a code mapped to null is dropped and counted); ``split`` values are train / val /
test. The options describe other published layouts too (RAF-DB and AffectNet are configs of this source):

* ``manifest``: the list file (relative to ``root`` or absolute), or ``{split: file}`` when each split has its own
  file (AffectNet's training.csv and validation.csv);
* ``header``: whether the first line names the columns; ``columns``: ``{path, label, subject, split}`` -> a column
  name (with a header) or a 0-based column index (without one); ``delimiter``: ``,`` / ``\\t`` / `` `` (any
  whitespace), default from the suffix (.csv, .tsv, other);
* ``path_format``: how a listed name becomes a path under ``root``, with ``{path}``, ``{stem}``, ``{suffix}``
  (RAF-DB: ``Image/aligned/{stem}_aligned{suffix}``); ``split_pattern``: a regex whose ``split`` group takes the
  split from the listed name (RAF-DB: ``^(?P<split>train|test)_``).
"""

from __future__ import annotations

import csv
import logging
import re
from collections import Counter
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from fer_lightning.data.classes import CLASS_ALIASES
from fer_lightning.data.sources.base import SPLIT_ALIASES, SPLIT_NAMES, Record, Source, label_map_of, under_root
from fer_lightning.errors import FERError

log = logging.getLogger(__name__)
DEFAULT_COLUMNS = {"path": "path", "label": "label", "subject": "subject", "split": "split"}


class ManifestSource(Source):
    """A list file of labelled images under ``root``; see the module docstring for the options."""

    own_split = "manifest"

    def __init__(
        self,
        root: str | Path | None = None,
        cache_dir: str | Path | None = None,
        manifest: str | Mapping[str, str] | None = None,
        name: str | None = None,
        header: bool = True,
        columns: Mapping[str, str | int] | None = None,
        delimiter: str | None = None,
        path_format: str = "{path}",
        split_pattern: str | None = None,
        label_map: Mapping[Any, str | None] | None = None,
    ) -> None:
        if root is None or manifest is None:
            raise FERError("data=manifest needs data.root=/path/to/images and data.manifest=/path/to/list.csv "
                           "(columns path,label[,subject][,split])")
        super().__init__(root, cache_dir)
        if not self.root.is_dir():
            raise FERError(f"data.root={self.root} is not a folder: point it at the folder the listed paths start from")
        files = dict(manifest) if isinstance(manifest, Mapping) else {None: manifest}
        for split in files:
            if split is not None and split not in SPLIT_NAMES:
                raise FERError(f"data.manifest: '{split}' is not a split; use train, val or test as keys")
        self.files = {s: self._resolve(f) for s, f in files.items()}
        self._name = name
        self.header = bool(header)
        self.columns = {**(DEFAULT_COLUMNS if header else {}), **dict(columns or {})}
        for need in ("path", "label"):
            if need not in self.columns:
                raise FERError(f"data.columns needs a '{need}' entry (the column of the {need}s)")
        self.delimiter, self.path_format = delimiter, path_format
        try:
            self.split_pattern = re.compile(split_pattern) if split_pattern else None
        except re.error as e:
            raise FERError(f"data.split_pattern={split_pattern!r} is not a valid regular expression ({e})") from e
        self.label_map = label_map_of(label_map)

    def _resolve(self, file: str) -> Path:
        path = Path(file).expanduser()
        path = path if path.is_absolute() else self.root / path
        if not path.is_file():
            raise FERError(f"data.manifest={file}: no such file (looked for {path})")
        return path

    @property
    def name(self) -> str:
        return self._name or next(iter(self.files.values())).stem

    def _rows(self, path: Path):
        delimiter = self.delimiter or {".csv": ",", ".tsv": "\t"}.get(path.suffix.lower(), " ")
        with open(path, newline="", encoding="utf-8-sig") as f:
            if delimiter.strip() == "":
                rows = ([p for p in line.split()] for line in f)
            else:
                rows = csv.reader(f, delimiter=delimiter)
            header = next(rows, []) if self.header else None
            index = {}
            for field, col in self.columns.items():
                if header is not None:
                    if col in header:
                        index[field] = header.index(col)
                    elif field in ("path", "label") or col != DEFAULT_COLUMNS.get(field):
                        raise FERError(f"{path}: missing column '{col}' (for the {field}); the header has: "
                                       f"{', '.join(header)}")
                else:
                    index[field] = int(col)
            for line, fields in enumerate(rows, start=2 if self.header else 1):
                if not fields or not "".join(fields).strip():
                    continue
                if max(index.values()) >= len(fields):
                    raise FERError(f"{path} line {line}: {len(fields)} fields, too few for the columns "
                                   f"{self.columns}; fix or remove this line")
                yield line, {field: fields[i].strip() for field, i in index.items()}

    def _label(self, value: str, where: str) -> str | None:
        if self.label_map is not None:
            if value not in self.label_map:
                raise FERError(f"{where}: unknown label code '{value}'; data.label_map knows "
                               f"{', '.join(self.label_map)}")
            return self.label_map[value]
        label = CLASS_ALIASES.get(value.lower())
        if label is None:
            raise FERError(f"{where}: unknown label '{value}'; give a class name ({', '.join(sorted(CLASS_ALIASES))}) "
                           "or map codes with data.label_map")
        return label

    def _split(self, row: dict[str, str], file_split: str | None, listed: str, where: str) -> str | None:
        if file_split is not None:
            return file_split
        if self.split_pattern is not None:
            m = self.split_pattern.search(listed)
            value = m["split"] if m is not None and "split" in self.split_pattern.groupindex else None
            if value is None:
                raise FERError(f"{where}: data.split_pattern={self.split_pattern.pattern!r} finds no split in "
                               f"'{listed}'")
        else:
            value = row.get("split")
            if value is None or value == "":
                return None
        split = SPLIT_ALIASES.get(value.lower())
        if split is None:
            raise FERError(f"{where}: unknown split '{value}'; use train, val or test")
        return split

    def scan(self) -> list[Record]:
        records, dropped = [], Counter()
        for file_split, path in self.files.items():
            for line, row in self._rows(path):
                where = f"{path} line {line}"
                label = self._label(row["label"], where)
                if label is None:
                    dropped[row["label"]] += 1
                    continue
                listed = PurePosixPath(row["path"].replace("\\", "/"))
                relative = self.path_format.format(path=listed.as_posix(), stem=listed.stem, suffix=listed.suffix)
                file = under_root(self.root, relative, where)
                subject = row.get("subject") or None
                records.append(Record(path=file, label=label, subject=subject, name=relative,
                                      split=self._split(row, file_split, listed.name, where)))
        if dropped:
            log.warning("%s: dropped %d images whose label code is mapped to null (%s)", self.name,
                        sum(dropped.values()), ", ".join(f"{k}: {v}" for k, v in sorted(dropped.items())))
        if not records:
            raise FERError(f"{', '.join(map(str, self.files.values()))}: no labelled images listed")
        return records
