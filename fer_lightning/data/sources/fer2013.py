"""FER2013 (``fer2013.csv``: ``emotion,pixels,Usage``) and its FER+ relabelling (``fer2013new.csv`` vote counts).

FER2013 (Goodfellow et al., ICML 2013 challenge): 35,887 48x48 grey faces, ``pixels`` a space-separated string,
``emotion`` 0 anger, 1 disgust, 2 fear, 3 happiness, 4 sadness, 5 surprise, 6 neutral, ``Usage`` Training /
PublicTest / PrivateTest (= train / val / test). There are no subject ids. FER+ (Barsoum et al., 2016) gives,
for the same rows in the same order, ten annotators' votes over neutral, happiness, surprise, sadness, anger,
disgust, fear, contempt, unknown and NF (not a face).

Scanning reads only the labels and where each row starts; the pixels are parsed when the store is built.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

from fer_lightning.data.classes import ALL_CLASS_NAMES
from fer_lightning.data.sources.base import Record, Source
from fer_lightning.errors import FERError
from fer_lightning.runtime.registry import choose

log = logging.getLogger(__name__)
FER2013_CODES = ("anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral")
USAGE = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
FERPLUS_EMOTIONS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt")
FERPLUS_COLUMNS = ("Usage", "Image name", *FERPLUS_EMOTIONS, "unknown", "NF")
FERPLUS_MODES = ("majority", "soft")


def _fields(line: bytes, n: int) -> list[str]:
    parts = line.rstrip(b"\r\n").split(b",")
    if len(parts) != n or b'"' in line:
        parts = next(csv.reader([line.decode("utf-8", errors="replace").rstrip("\r\n")]), [])
        return [p.strip() for p in parts]
    return [p.decode("utf-8", errors="replace").strip() for p in parts]


def scan_fer2013(csv_path: Path) -> list[Record]:
    """One record per row: label, official split, and where its pixels are (parsed later)."""
    records: list[Record] = []
    with open(csv_path, "rb") as f:
        header = _fields(f.readline(), 3)
        missing = [c for c in ("emotion", "pixels", "Usage") if c not in header]
        if missing:
            raise FERError(f"{csv_path}: missing column(s) {', '.join(missing)} (header: {','.join(header)}); "
                           "give the original fer2013.csv with columns emotion,pixels,Usage")
        i_emotion, i_pixels, i_usage = (header.index(c) for c in ("emotion", "pixels", "Usage"))
        offset = f.tell()
        for row, line in enumerate(iter(f.readline, b"")):
            start, offset = offset, offset + len(line)
            if not line.strip():
                continue
            fields = _fields(line, len(header))
            name = f"{csv_path.name}#{row}"
            if len(fields) != len(header):
                raise FERError(f"{csv_path} row {row}: {len(fields)} fields, expected {len(header)} "
                               f"({','.join(header)}); fix or remove this row")
            usage = fields[i_usage]
            if usage not in USAGE:
                raise FERError(f"{csv_path} row {row}: unknown Usage '{usage}'; expected one of {', '.join(USAGE)}")
            code = fields[i_emotion]
            if not code.isdigit() or int(code) >= len(FER2013_CODES):
                raise FERError(f"{csv_path} row {row}: unknown emotion code '{code}'; expected 0-6 "
                               f"({', '.join(f'{i} {c}' for i, c in enumerate(FER2013_CODES))})")
            records.append(Record(path=csv_path, label=FER2013_CODES[int(code)], split=USAGE[usage], name=name,
                                  pixels_at=(start, i_pixels)))
    return records


def _ferplus_votes(path: Path, fer: list[Record]) -> list[list[int]]:
    """Vote rows of the FER+ file, checked against the FER2013 rows (same count, same Usage, in order)."""
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        missing = [c for c in FERPLUS_COLUMNS if c not in header]
        if missing:
            raise FERError(f"data.ferplus={path}: missing column(s) {', '.join(missing)}; give Microsoft's "
                           "fer2013new.csv (Usage,Image name,neutral,...,contempt,unknown,NF)")
        cols = [header.index(c) for c in (*FERPLUS_EMOTIONS, "unknown", "NF")]
        votes = []
        for row, fields in enumerate(reader):
            if row >= len(fer):
                raise FERError(f"data.ferplus={path} has more rows than {fer[0].path.name} ({len(fer)}); "
                               "the FER+ file must list the FER2013 rows in the same order")
            usage = fields[header.index("Usage")].strip() if len(fields) == len(header) else "?"
            if USAGE.get(usage) != fer[row].split:
                raise FERError(f"data.ferplus={path} row {row}: Usage '{usage}' but {fer[row].name} is "
                               f"'{fer[row].split}'; the FER+ file must list the FER2013 rows in the same order")
            try:
                votes.append([int(fields[c]) for c in cols])
            except ValueError:
                raise FERError(f"data.ferplus={path} row {row}: vote counts must be whole numbers") from None
    if len(votes) != len(fer):
        raise FERError(f"data.ferplus={path} has {len(votes)} rows but {fer[0].path.name} has {len(fer)}; "
                       "the FER+ file must list the FER2013 rows in the same order")
    return votes


def ferplus_records(fer: list[Record], votes: list[list[int]], mode: str) -> list[Record]:
    """``majority``: the most voted class, dropping rows won by unknown / not-a-face or tied; ``soft``: the
    normalised votes over the emotions (label = their argmax), dropping rows without an emotion vote."""
    n_emotions = len(FERPLUS_EMOTIONS)
    order = [FERPLUS_EMOTIONS.index(c) for c in ALL_CLASS_NAMES]  # FER+ columns in canonical class order
    out, no_face, ties = [], 0, 0
    for r, v in zip(fer, votes, strict=True):
        top = max(v)
        winners = [k for k, x in enumerate(v) if x == top]
        if mode == "majority":
            if len(winners) > 1:
                ties += 1
            elif winners[0] >= n_emotions or top == 0:
                no_face += 1
            else:
                out.append(Record(r.path, FERPLUS_EMOTIONS[winners[0]], None, r.split, r.name, r.pixels_at))
            continue
        emotion = [v[k] for k in order]
        total = sum(emotion)
        if total == 0:
            no_face += 1
            continue
        label = ALL_CLASS_NAMES[max(range(len(emotion)), key=emotion.__getitem__)]
        out.append(Record(r.path, label, None, r.split, r.name, r.pixels_at, tuple(x / total for x in emotion)))
    log.warning("FER+ %s labels: kept %d of %d images, dropped %d with no emotion majority (unknown / not a face)"
                "%s", mode, len(out), len(fer), no_face, f" and {ties} tied" if mode == "majority" else "")
    return out


class FER2013Source(Source):
    """``root``: ``fer2013.csv`` or the folder holding it; ``ferplus``: Microsoft's ``fer2013new.csv`` to relabel
    the rows with, ``ferplus_mode``: ``majority`` or ``soft``."""

    def __init__(self, root: str | Path | None = None, cache_dir: str | Path | None = None,
                 ferplus: str | None = None, ferplus_mode: str = "majority") -> None:
        if root is None:
            raise FERError("data=fer2013 needs data.root=/path/to/fer2013.csv (or the folder holding it)")
        super().__init__(root, cache_dir)
        choose(ferplus_mode, FERPLUS_MODES, "data.ferplus_mode")
        self.ferplus = None if ferplus is None else Path(ferplus).expanduser()
        self.ferplus_mode = ferplus_mode

    @property
    def name(self) -> str:
        return "fer2013" if self.ferplus is None else "ferplus"

    @property
    def csv_path(self) -> Path:
        path = self.root / "fer2013.csv" if self.root.is_dir() else self.root
        if not path.is_file():
            raise FERError(f"data.root={self.root}: no fer2013.csv there; point data.root at the FER2013 CSV file")
        return path

    def scan(self) -> list[Record]:
        records = scan_fer2013(self.csv_path)
        if self.ferplus is None:
            for c in FER2013_CODES:
                if not any(r.label == c for r in records):
                    raise FERError(f"{self.csv_path}: class '{c}' has no rows; give the complete fer2013.csv")
            return records
        if not self.ferplus.is_file():
            raise FERError(f"data.ferplus={self.ferplus}: no such file; give the path of fer2013new.csv")
        return ferplus_records(records, _ferplus_votes(self.ferplus, records), self.ferplus_mode)

    def classes(self) -> tuple[str, ...]:
        if self.ferplus is None or self.ferplus_mode == "majority":
            return super().classes()
        voted = [any(r.soft[k] > 0 for r in self.records) for k in range(len(ALL_CLASS_NAMES))]
        return tuple(c for c, v in zip(ALL_CLASS_NAMES, voted, strict=True) if v)
