"""Long lists in log lines: a count and the first few names on the line, every name in a file of the run folder.

A warning that names 200 duplicate images is one line of thousands of characters that nobody reads. Code that
names many things in a log line calls :func:`shorten`; a command that has a run folder calls :func:`list_into` with
the file the full lists go to (the run folder's ``warnings.txt``, named by
:class:`~fer_lightning.runs.folder.RunFolder`). :func:`cut_long_lines` is the net under it: no log line of the
process is longer than :data:`MAX_LINE` characters.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

MAX_LINE = 300
_SINK: dict[str, Path | None] = {"path": None}


def list_into(path: str | Path | None) -> None:
    """Write the full lists that :func:`shorten` cuts into ``path`` (appended; None: nowhere)."""
    _SINK["path"] = None if path is None else Path(path)


def _short(name: str, width: int = 60) -> str:
    return name if len(name) <= width else "..." + name[-(width - 3):]


def shorten(items: Sequence[str], what: str, first: int = 3) -> str:
    """``items`` for a log line: all of them when there are at most ``first``, else the first ``first`` (each cut
    to 60 characters) and how many more, with the full list written under the heading ``what`` to the file of
    :func:`list_into` (named on the line).

    Examples:
        >>> list_into(None)  # no run folder: the line alone
        >>> shorten(["a.png", "b.png"], "duplicates")
        'a.png, b.png'
        >>> shorten([f"{i}.png" for i in range(12)], "duplicates")
        '0.png, 1.png, 2.png and 9 more'
    """
    items = [str(i) for i in items]
    if len(items) <= first:
        return ", ".join(_short(i) for i in items)
    text = f"{', '.join(_short(i) for i in items[:first])} and {len(items) - first} more"
    path = _SINK["path"]
    if path is None:
        return text
    try:
        with open(path, "a", encoding="utf-8", errors="backslashreplace") as f:
            f.write(f"# {what} ({len(items)})\n" + "".join(f"{i}\n" for i in items) + "\n")
    except OSError:
        return text
    return f"{text} (all in {path.name})"


def _middle_cut(line: str, limit: int) -> str:
    """``line`` in at most ``limit`` characters: its beginning (what happened, to which file) and its end (what to
    do) kept, the middle replaced by how many characters it had.

    Examples:
        >>> _middle_cut("error: " + "x" * 500 + " is not there; give another folder", 80)
        'error: xxxxxxxxxxxxxxxxxxxx [... 541 characters ...]  there; give another folder'
    """
    marker = f" [... {len(line)} characters ...] "
    keep = max(limit - len(marker), 0)
    head = keep - keep // 2
    return line[:head] + marker + line[len(line) - keep // 2:] if keep else line[:limit]


class _CutLong(logging.Filter):
    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        lines = message.split("\n")
        if any(len(line) > self.limit for line in lines):
            record.msg = "\n".join(line if len(line) <= self.limit else _middle_cut(line, self.limit)
                                   for line in lines)
            record.args = ()
        return True


def cut_long_lines(limit: int = MAX_LINE - 80) -> None:
    """Cut every log message line longer than ``limit`` characters (the handlers' prefix of time, logger and
    level takes the rest of :data:`MAX_LINE`), at every handler of the root logger."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _CutLong) for f in handler.filters):
            handler.addFilter(_CutLong(limit))


def stop_cutting_lines() -> None:
    """Undo :func:`cut_long_lines` (a command ends: the handlers of the process are left as they were)."""
    for handler in logging.getLogger().handlers:
        handler.filters = [f for f in handler.filters if not isinstance(f, _CutLong)]
