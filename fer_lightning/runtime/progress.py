"""How progress is shown: bars in a terminal, plain lines in a file.

A log that goes to a file (``nohup``, SLURM, CI, ``> log.txt``) cannot hold a ``\\r`` progress bar: it becomes one
line of thousands of characters that says nothing until the work ends. With ``progress.mode=auto`` (the default),
stdout decides: a terminal gets today's bars, anything else one log line every ``progress.every_s`` seconds (and
the training one line per epoch, :mod:`fer_lightning.engine.progress`). ``bars`` and ``lines`` force either.

Commands call :func:`configure` once when they start (:func:`fer_lightning.engine.startup.start_command`).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from fer_lightning.runtime.registry import choose

log = logging.getLogger("fer_lightning.progress")

MODES = ("auto", "bars", "lines")
_SETTINGS: dict[str, Any] = {"mode": "auto", "every_s": 30.0}


def configure(mode: str = "auto", every_s: float = 30.0) -> None:
    """Set how progress is shown for this process (``mode``: auto | bars | lines; ``every_s``: seconds between
    two progress lines)."""
    _SETTINGS["mode"] = choose(mode, MODES, "progress.mode")
    _SETTINGS["every_s"] = max(float(every_s), 0.0)


def as_lines() -> bool:
    """Whether progress is written as lines (``lines``, or ``auto`` with stdout not a terminal).

    Examples:
        >>> configure("lines"); as_lines()
        True
        >>> configure("bars"); as_lines()
        False
        >>> configure()
    """
    mode = _SETTINGS["mode"]
    if mode == "auto":
        return not (hasattr(sys.stdout, "isatty") and sys.stdout.isatty())
    return mode == "lines"


def every_s() -> float:
    """Seconds between two progress lines."""
    return float(_SETTINGS["every_s"])


def duration(seconds: float) -> str:
    """``seconds`` as ``1h02m``, ``4m10s`` or ``12s``.

    Examples:
        >>> duration(12.4), duration(250), duration(3720)
        ('12s', '4m10s', '1h02m')
    """
    s = int(round(max(seconds, 0.0)))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


class Progress:
    """Progress of ``total`` units of work (a store's rows): a tqdm bar, or a log line every :func:`every_s`
    seconds (count, percent, rate, ETA) when progress is shown as lines. A context manager; :meth:`update` adds
    done units. Work of fewer than ``min_total`` units shows nothing.

    Examples:
        >>> configure("lines", every_s=0)
        >>> with Progress(100, 0, "decoded images") as p:
        ...     p.update(50)
        >>> p.lines[-1].startswith("decoded images: 50/100 rows (50%)")
        True
        >>> configure()
    """

    def __init__(self, total: int, initial: int, what: str, unit: str = "row", min_total: int = 2048) -> None:
        self.total, self.done, self.what, self.unit = int(total), int(initial), what, unit
        self.start_done = self.done
        self.quiet = self.total - self.done < min_total and not (as_lines() and every_s() == 0)
        self.lines: list[str] = []
        self._bar: Any = None
        self._started = self._last = time.perf_counter()

    def __enter__(self) -> Progress:
        if not self.quiet and not as_lines():
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, initial=self.done, desc=self.what, unit=self.unit,
                             dynamic_ncols=True, mininterval=1.0)
        return self

    def update(self, n: int) -> None:
        self.done += int(n)
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.perf_counter()
        if self.quiet or not as_lines() or now - self._last < every_s():
            return
        self._last = now
        rate = (self.done - self.start_done) / max(now - self._started, 1e-9)
        eta = duration((self.total - self.done) / rate) if rate > 0 else "?"
        line = (f"{self.what}: {self.done}/{self.total} {self.unit}s ({100 * self.done / max(self.total, 1):.0f}%), "
                f"{rate:.0f} {self.unit}s/s, ETA {eta}")
        self.lines.append(line)
        log.info("%s", line)

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.close()
