"""Figures drawn on a background thread while training goes on (:class:`Drawing`), for the callbacks that log
TensorBoard pictures and confusion figures, and logged as images (:func:`log_figure`)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


class Drawing:
    """Figures drawn and logged on a background thread, in the order they were asked for, while training goes on
    (matplotlib and PNG encoding cost more than many epochs of a head on fixed features); :meth:`wait` before the
    run's results are final: it also ends the thread. One figure is drawn at a time in the process.

    Examples:
        >>> drawing, done = Drawing(), []
        >>> drawing.submit(done.append, "figure 1"); drawing.submit(done.append, "figure 2")
        >>> drawing.wait(); done
        ['figure 1', 'figure 2']
    """

    _one_at_a_time = threading.Lock()  # matplotlib is not thread-safe: one figure at a time in the process

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[Future] = []

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fer-figures")
        self._pending.append(self._pool.submit(self._locked, fn, *args))

    @classmethod
    def _locked(cls, fn: Callable[..., Any], *args: Any) -> None:
        with cls._one_at_a_time:
            fn(*args)

    def wait(self, raise_errors: bool = True) -> None:
        """Until every figure asked for is logged, then the thread ends; a figure that failed raises here (or is
        logged as a warning)."""
        pending, self._pending = self._pending, []
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        for future in pending:
            try:
                future.result()
            except Exception as err:
                if raise_errors:
                    raise
                log.warning("a TensorBoard figure was not drawn: %s", err)


def log_figure(writers: list[Any], tag: str, fig: Any, step: int) -> None:
    """Log a matplotlib figure to every TensorBoard writer (``SummaryWriter.add_image``): rendered once, with Agg
    and without pyplot (``add_figure`` renders it once per writer and goes through pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgb = np.asarray(canvas.buffer_rgba())[..., :3]
    for w in writers:
        w.add_image(tag, rgb, global_step=step, dataformats="HWC")
