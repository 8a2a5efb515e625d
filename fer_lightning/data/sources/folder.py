"""Any labelled folder of faces: ``root/<class>/<image>`` or, with the dataset's own split, split folders
``root/{train,val,test}/<class>/<image>``; class names (or codes in ``data.label_map``) mapped to the expressions."""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fer_lightning.data.classes import CLASS_ALIASES
from fer_lightning.data.images import IMAGE_SUFFIXES
from fer_lightning.data.sources.base import SPLIT_ALIASES, Record, Source, label_map_of
from fer_lightning.errors import FERError

log = logging.getLogger(__name__)


def subject_of(path: Path, pattern: re.Pattern[str] | None) -> str:
    """The subject id of a file: the regex's ``subject`` group (or its first group, or whole match) searched in
    the file name, or the file stem when there is no regex."""
    if pattern is None:
        return path.stem
    m = pattern.search(path.name)
    if m is None:
        raise FERError(f"{path}: data.subject_regex={pattern.pattern!r} does not match this file name")
    if "subject" in pattern.groupindex:
        return m["subject"]
    return m[1] if pattern.groups else m[0]


def _unreadable(folder: Path | str, e: OSError) -> FERError:
    return FERError(f"{e.filename or folder} cannot be read ({e.strerror or e}); check the folder's permissions")


def _listing(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except OSError as e:
        raise _unreadable(folder, e) from e


def files_below(folder: Path) -> list[Path]:
    """Every file below ``folder``; an unreadable sub-folder is an error, never silently skipped."""

    def refuse(e: OSError) -> None:
        raise _unreadable(folder, e) from e

    return [Path(d, name) for d, _, names in os.walk(folder, onerror=refuse) for name in names
            if Path(d, name).is_file()]


def _class_label(folder: Path, label_map: dict[str, str | None] | None) -> str | None:
    """The class of a class folder: its name mapped by ``data.label_map`` (None: dropped), or a class name/alias."""
    name = folder.name
    if label_map is not None and name in label_map:
        return label_map[name]
    label = CLASS_ALIASES.get(name.lower())
    if label is not None:
        return label
    if label_map is not None:
        raise FERError(f"{folder}: class folder '{name}' is neither a class name nor a code of data.label_map "
                       f"(codes: {', '.join(label_map)}); add it to data.label_map or remove the folder")
    if name.isdigit():
        raise FERError(f"{folder}: class folder '{name}' is a numeric code; say which class each code is with "
                       "data.label_map (RAF-DB's copy: data=rafdb_folders, AffectNet's: data=affectnet_folders)")
    raise FERError(f"{folder}: unknown class folder '{name}'; accepted names: {', '.join(sorted(CLASS_ALIASES))}")


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in _listing(folder) if p.is_dir() and not p.name.startswith("."))


def split_folders(root: Path) -> dict[str, Path]:
    """``{train|val|test: folder}`` when ``root``'s sub-folders are split folders (``train``, ``val`` / ``valid`` /
    ``validation``, ``test``, any case), else ``{}`` (class folders); split folders beside other folders, or two
    folders for one split, are refused. A ``train`` + ``val`` pair without ``test`` (AffectNet's copies) is
    read as train + test: the published validation set is the test set, validation is drawn from train."""
    folders = _subfolders(root)
    found = {f: SPLIT_ALIASES.get(f.name.lower()) for f in folders}
    named = {f: s for f, s in found.items() if s is not None}
    if not named:
        return {}
    others = [f.name for f, s in found.items() if s is None]
    if others:
        raise FERError(f"data.root={root} mixes split folders ({', '.join(f.name for f in named)}) with other "
                       f"folders ({', '.join(others)}); keep either root/<split>/<class>/ or root/<class>/")
    parts: dict[str, Path] = {}
    for folder, part in named.items():
        if part in parts:
            raise FERError(f"data.root={root}: '{parts[part].name}' and '{folder.name}' are both the {part} split; "
                           "keep one of them")
        parts[part] = folder
    if "train" not in parts:
        raise FERError(f"data.root={root} has split folders ({', '.join(f.name for f in named)}) but no train "
                       "folder; add root/train/<class>/ (or point data.root at a folder of class folders)")
    if "test" not in parts:
        if "val" not in parts:
            raise FERError(f"data.root={root} has only the split folder '{parts['train'].name}'; add "
                           f"root/test/<class>/, or point data.root at {parts['train']} (its class folders)")
        log.info("%s: no test folder, so '%s' is the test set (validation drawn from train)", root,
                 parts["val"].name)
        parts["test"] = parts.pop("val")
    return parts


def _class_records(root: Path, parent: Path, pattern: re.Pattern[str] | None,
                   label_map: dict[str, str | None] | None, split: str | None, dropped: Counter) -> list[Record]:
    """Images under ``parent/<class>/`` (any depth below the class folder), sorted; named relative to ``root``."""
    real_root = root.resolve()
    records: list[Record] = []
    for folder in _subfolders(parent):
        label = _class_label(folder, label_map)
        if real_root.is_relative_to(folder.resolve()):
            raise FERError(f"{folder}: this class folder is a link to {folder.resolve()}, which holds data.root "
                           "itself (every image would be read again under this label); remove the link")
        files = sorted(p for p in files_below(folder) if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise FERError(f"{folder}: class folder '{folder.name}' holds no images; add images or remove the folder")
        if label is None:
            dropped[folder.name] += len(files)
            continue
        records += [Record(path=p, subject=subject_of(p, pattern), label=label, split=split,
                           name=p.relative_to(root).as_posix()) for p in files]
    return records


def scan_folder(root: str | Path, subject_regex: str | None = None,
                label_map: Mapping[Any, str | None] | None = None) -> list[Record]:
    """Images under ``root/<class>/``, or under ``root/<split>/<class>/`` (then each record's ``split`` is set), any
    depth below the class folder, sorted; labels from the class folder names (or codes in ``label_map``)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FERError(f"data.root={root} is not a folder: point it at a folder of class folders (root/happy/...)")
    try:
        pattern = re.compile(subject_regex) if subject_regex else None
    except re.error as e:
        raise FERError(f"data.subject_regex={subject_regex!r} is not a valid regular expression ({e})") from e
    codes = label_map_of(label_map)
    dropped: Counter = Counter()
    parts = split_folders(root)
    records = [r for part, folder in parts.items() for r in _class_records(root, folder, pattern, codes, part,
                                                                          dropped)]
    if not parts:
        records = _class_records(root, root, pattern, codes, None, dropped)
    if dropped:
        log.warning("%s: dropped %d images of folders mapped to null by data.label_map (%s)", root,
                    sum(dropped.values()), ", ".join(f"{k}: {v}" for k, v in sorted(dropped.items())))
    if not records:
        raise FERError(f"data.root={root} holds no images in class folders (root/<class>/<image>, classes: "
                       f"{', '.join(sorted(CLASS_ALIASES))})")
    return records


class FolderSource(Source):
    """``root/<class>/<image>`` or ``root/<split>/<class>/<image>`` (split folders: ``train``, ``val`` / ``valid`` /
    ``validation``, ``test``); the subject of an image from ``subject_regex`` on its file name (default: stem);
    class folders named by codes with ``label_map`` (``{1: surprise, ...}``); ``name``: the dataset's name in
    results (default: the folder's name).

    Examples:
        >>> import tempfile
        >>> from PIL import Image
        >>> root = Path(tempfile.mkdtemp())
        >>> for part, code in [("train", 4), ("train", 7), ("test", 4), ("test", 7)]:
        ...     (root / part / str(code)).mkdir(parents=True)
        ...     Image.new("L", (48, 48)).save(root / part / str(code) / "a.jpg")
        >>> source = FolderSource(root, label_map={4: "happiness", 7: "neutral"})
        >>> [(r.name, r.label, r.split) for r in source.records][:2]
        [('test/4/a.jpg', 'happiness', 'test'), ('test/7/a.jpg', 'neutral', 'test')]
    """

    default_split, own_split = "subject_kfold", "folders"

    def __init__(self, root: str | Path | None = None, cache_dir: str | Path | None = None,
                 subject_regex: str | None = None, label_map: Mapping[Any, str | None] | None = None,
                 name: str | None = None) -> None:
        if root is None:
            raise FERError("data=folder needs data.root=/path/to/faces (a folder of class folders)")
        super().__init__(root, cache_dir)
        self.subject_regex = subject_regex
        self.label_map = label_map_of(label_map)
        self._name = name

    @property
    def name(self) -> str:
        return self._name or self.root.resolve().name

    def scan(self) -> list[Record]:
        records = scan_folder(self.root, self.subject_regex, self.label_map)
        parts = Counter(r.split for r in records if r.split)
        layout = f" in split folders ({', '.join(f'{k} {v}' for k, v in parts.items())})" if parts else ""
        log.info("%s: %d images of %d subjects%s", self.root, len(records), len({r.subject for r in records}), layout)
        return records
