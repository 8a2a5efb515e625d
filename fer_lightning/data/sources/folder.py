"""Any labelled folder of faces: ``root/<class>/<image>``, class names mapped to the expressions."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from fer_lightning.data.classes import CLASS_ALIASES
from fer_lightning.data.images import IMAGE_SUFFIXES
from fer_lightning.data.sources.base import Record, Source
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


def _files_below(folder: Path) -> list[Path]:
    """Every file below ``folder``; an unreadable sub-folder is an error, never silently skipped."""

    def refuse(e: OSError) -> None:
        raise _unreadable(folder, e) from e

    return [Path(d, name) for d, _, names in os.walk(folder, onerror=refuse) for name in names
            if Path(d, name).is_file()]


def scan_folder(root: str | Path, subject_regex: str | None = None) -> list[Record]:
    """Images under ``root/<class>/`` (any depth below the class folder), sorted; labels from the folder names."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FERError(f"data.root={root} is not a folder: point it at a folder of class folders (root/happy/...)")
    try:
        pattern = re.compile(subject_regex) if subject_regex else None
    except re.error as e:
        raise FERError(f"data.subject_regex={subject_regex!r} is not a valid regular expression ({e})") from e
    accepted = ", ".join(sorted(CLASS_ALIASES))
    real_root = root.resolve()
    records: list[Record] = []
    for folder in sorted(p for p in _listing(root) if p.is_dir() and not p.name.startswith(".")):
        label = CLASS_ALIASES.get(folder.name.lower())
        if label is None:
            raise FERError(f"{folder}: unknown class folder '{folder.name}'; accepted names: {accepted}")
        if real_root.is_relative_to(folder.resolve()):
            raise FERError(f"{folder}: this class folder is a link to {folder.resolve()}, which holds data.root "
                           "itself (every image would be read again under this label); remove the link")
        files = sorted(p for p in _files_below(folder) if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise FERError(f"{folder}: class folder '{folder.name}' holds no images; add images or remove the folder")
        records += [Record(path=p, subject=subject_of(p, pattern), label=label,
                           name=p.relative_to(root).as_posix()) for p in files]
    if not records:
        raise FERError(f"data.root={root} holds no images in class folders (root/<class>/<image>, classes: {accepted})")
    return records


class FolderSource(Source):
    """``root/<class>/<image>``; the subject of an image from ``subject_regex`` on its file name (default: stem)."""

    def __init__(self, root: str | Path | None = None, cache_dir: str | Path | None = None,
                 subject_regex: str | None = None) -> None:
        if root is None:
            raise FERError("data=folder needs data.root=/path/to/faces (a folder of class folders)")
        super().__init__(root, cache_dir)
        self.subject_regex = subject_regex

    @property
    def name(self) -> str:
        return self.root.resolve().name

    def scan(self) -> list[Record]:
        records = scan_folder(self.root, self.subject_regex)
        log.info("%s: %d images of %d subjects", self.root, len(records), len({r.subject for r in records}))
        return records
