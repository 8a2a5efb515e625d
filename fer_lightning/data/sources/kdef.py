"""KDEF (Lundqvist, Flykt & Öhman, 1998): ``KDEF/AF01/AF01ANS.JPG``, everything in the file name.

Letter 1 the session (``A``/``B``), 2 the sex (``F``/``M``), 3-4 the person's number, 5-6 the expression (``AF``
afraid, ``AN`` angry, ``DI`` disgusted, ``HA`` happy, ``NE`` neutral, ``SA`` sad, ``SU`` surprised), then the view
(``FL`` full left, ``HL`` half left, ``S`` straight, ``HR`` half right, ``FR`` full right). The subject is sex +
number (``F01``): both sessions of a person stay on one side of every split.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

from fer_lightning.data.images import IMAGE_SUFFIXES
from fer_lightning.data.sources.base import Record, Source
from fer_lightning.data.sources.folder import files_below
from fer_lightning.errors import FERError
from fer_lightning.runtime.registry import choose

log = logging.getLogger(__name__)
KDEF_EXPRESSIONS = {"AF": "fear", "AN": "anger", "DI": "disgust", "HA": "happiness", "NE": "neutral",
                    "SA": "sadness", "SU": "surprise"}
KDEF_VIEWS = ("FL", "HL", "S", "HR", "FR")
_NAME = re.compile(r"(?P<session>[AB])(?P<subject>[FM]\d\d)(?P<code>[A-Z]{2})(?P<view>FL|HL|S|HR|FR)", re.I)


def parse_kdef_name(path: Path, root: Path) -> tuple[Record, str] | None:
    """The record of a KDEF file name and its view, or None when the name does not follow the grammar.

    Examples:
        >>> record, view = parse_kdef_name(Path("/d/KDEF/AM12/AM12HAHL.JPG"), Path("/d/KDEF"))
        >>> record.subject, record.label, record.name, view
        ('M12', 'happiness', 'AM12/AM12HAHL.JPG', 'HL')
        >>> parse_kdef_name(Path("/d/KDEF/readme.jpg"), Path("/d/KDEF")) is None
        True
    """
    m = _NAME.fullmatch(path.stem)
    if m is None:
        return None
    code = m["code"].upper()
    if code not in KDEF_EXPRESSIONS:
        raise FERError(f"{path}: unknown KDEF expression code '{code}'; accepted codes: "
                       f"{', '.join(f'{c} ({n})' for c, n in KDEF_EXPRESSIONS.items())}")
    record = Record(path=path, label=KDEF_EXPRESSIONS[code], subject=m["subject"].upper(),
                    name=path.relative_to(root).as_posix())
    return record, m["view"].upper()


class KDEFSource(Source):
    """KDEF images anywhere below ``root`` (``root/AF01/AF01ANS.JPG``); labels and subjects from the file names.

    Args:
        root: the ``KDEF`` folder (the one holding ``AF01/``, ``AF02/``, ...).
        cache_dir: unused (the images are read in place).
        views: the views kept (``data.views``), any of ``FL HL S HR FR``; default ``[S]`` (straight).

    Examples:
        >>> KDEFSource("/data/KDEF", views=["S", "hl"]).views
        ('HL', 'S')
        >>> KDEFSource("/data/KDEF", views=["top"])
        Traceback (most recent call last):
        ...
        fer_lightning.errors.FERError: data.views=TOP is unknown; choose one of: FL, HL, S, HR, FR
    """

    name = "kdef"

    def __init__(self, root: str | Path | None = None, cache_dir: str | Path | None = None,
                 views: Sequence[str] | str | None = ("S",)) -> None:
        if root is None:
            raise FERError("data=kdef needs data.root=/path/to/KDEF (the folder holding AF01/, AF02/, ...)")
        super().__init__(root, cache_dir)
        views = [views] if isinstance(views, str) else list(views or [])
        if not views:
            raise FERError(f"data.views is empty; give one or more of: {', '.join(KDEF_VIEWS)} (e.g. data.views=[S])")
        self.views = tuple(sorted({choose(str(v).upper(), KDEF_VIEWS, "data.views") for v in views},
                                  key=KDEF_VIEWS.index))

    def scan(self) -> list[Record]:
        if not self.root.is_dir():
            raise FERError(f"data.root={self.root} is not a folder: point it at the KDEF folder "
                           "(KDEF/AF01/AF01ANS.JPG)")
        records, other, by_view = [], [], dict.fromkeys(KDEF_VIEWS, 0)
        for path in sorted(p for p in files_below(self.root) if p.suffix.lower() in IMAGE_SUFFIXES):
            parsed = parse_kdef_name(path, self.root)
            if parsed is None:
                other.append(path.relative_to(self.root).as_posix())
                continue
            record, view = parsed
            by_view[view] += 1
            if view in self.views:
                records.append(record)
        if other:
            log.warning("%d image(s) under %s are not named like KDEF (AF01ANS.JPG) and are skipped: %s%s",
                        len(other), self.root, ", ".join(other[:5]), " ..." if len(other) > 5 else "")
        if not records:
            found = ", ".join(f"{v} {n}" for v, n in by_view.items() if n) or "none"
            raise FERError(f"data.root={self.root} holds no KDEF images of data.views={list(self.views)} "
                           f"(images per view: {found}); check data.root and data.views")
        log.info("%s: %d images of %d subjects (views %s; %d images of other views left out)", self.root,
                 len(records), len({r.subject for r in records}), "+".join(self.views),
                 sum(by_view.values()) - len(records))
        return records
