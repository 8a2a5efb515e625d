"""The confusion-matrix figures: every n epochs and at the end of training, each test, and every validation run
outside training; drawn with the epoch they belong to."""

from __future__ import annotations

from types import SimpleNamespace
from unittest import mock

import pytest
import torch
from pytorch_lightning.loggers import TensorBoardLogger

from fer_lightning.engine.callbacks import ConfusionFigures
from fer_lightning.errors import FERError


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int, str]] = []

    def log_figure(self, writers, tag, fig, step):
        self.calls.append((tag, step, fig.axes[0].get_title()))


def run(cb: ConfusionFigures, fn: str, epochs: int, tmp_path, clock: list[float] | None = None
        ) -> list[tuple[str, int, str]]:
    rec = Recorder()
    module = SimpleNamespace(confusion={"val": torch.eye(2, dtype=torch.long), "test": torch.eye(2, dtype=torch.long)},
                             class_names=["a", "b"])
    with mock.patch.object(TensorBoardLogger, "experiment", new=property(lambda self: rec)), \
            mock.patch("fer_lightning.engine.callbacks.log_figure", rec.log_figure), \
            mock.patch("fer_lightning.engine.callbacks.time.monotonic", lambda: clock[-1] if clock else 1e9):
        trainer = SimpleNamespace(loggers=[TensorBoardLogger(str(tmp_path))], sanity_checking=False,
                                  state=SimpleNamespace(fn=fn), current_epoch=0, global_step=0)
        if fn == "fit":
            cb.on_train_start(trainer, module)
        for epoch in range(epochs):
            if clock is not None:
                clock.append(clock[-1] + 4.0)  # every validation 4 s after the one before
            trainer.current_epoch, trainer.global_step = epoch, 10 * (epoch + 1)
            cb.on_validation_end(trainer, module)
        if fn == "fit":
            cb.on_train_end(trainer, module)
        cb.on_test_end(trainer, module)
    return rec.calls


def test_every_n_epochs_and_the_last_validation_at_the_end(tmp_path):
    calls = run(ConfusionFigures(every_n_epochs=10, every_s=0), "fit", 23, tmp_path)
    val = [(step, title) for tag, step, title in calls if tag == "val/confusion_matrix"]
    assert val == [(100, "val confusion matrix (epoch 9)"), (200, "val confusion matrix (epoch 19)"),
                   (230, "val confusion matrix (epoch 22)")]
    assert [tag for tag, _, _ in calls].count("test/confusion_matrix") == 1


def test_the_last_epoch_is_not_drawn_twice_and_one_draws_every_epoch(tmp_path):
    calls = run(ConfusionFigures(every_n_epochs=10, every_s=0), "fit", 20, tmp_path)
    assert [s for tag, s, _ in calls if tag == "val/confusion_matrix"] == [100, 200]
    calls = run(ConfusionFigures(every_n_epochs=1, every_s=0), "fit", 3, tmp_path)
    assert [s for tag, s, _ in calls if tag == "val/confusion_matrix"] == [10, 20, 30]


def test_at_most_one_figure_in_every_s_seconds_and_the_last_at_the_end(tmp_path):
    """Validations 4 s apart, every_s=10: a figure once 10 s have passed since training started or the last
    figure (epochs 2, 5, 8), and the last validation (epoch 9) at the end; every_n_epochs still applies."""
    calls = run(ConfusionFigures(every_n_epochs=1, every_s=10), "fit", 10, tmp_path, clock=[0.0])
    assert [title for tag, _, title in calls if tag == "val/confusion_matrix"] == [
        f"val confusion matrix (epoch {e})" for e in (2, 5, 8, 9)]
    calls = run(ConfusionFigures(every_n_epochs=2, every_s=10), "fit", 10, tmp_path, clock=[0.0])
    assert [s // 10 - 1 for tag, s, _ in calls if tag == "val/confusion_matrix"] == [3, 7, 9]  # odd epochs only
    calls = run(ConfusionFigures(), "fit", 30, tmp_path, clock=[0.0])  # the defaults: 10 epochs, 30 s
    assert [s // 10 - 1 for tag, s, _ in calls if tag == "val/confusion_matrix"] == [9, 19, 29]
    with pytest.raises(FERError, match="every_s=-1"):
        ConfusionFigures(every_s=-1)


def test_validation_outside_training_is_always_drawn(tmp_path):
    calls = run(ConfusionFigures(every_n_epochs=10), "validate", 1, tmp_path)
    assert [tag for tag, _, _ in calls] == ["val/confusion_matrix", "test/confusion_matrix"]


def test_a_bad_interval_is_one_line():
    with pytest.raises(FERError, match="every_n_epochs=0"):
        ConfusionFigures(every_n_epochs=0)


def test_a_redrawn_figure_is_the_picture_of_a_new_one():
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from fer_lightning.reporting.figures import confusion_matrix_figure, redraw_confusion_matrix_figure

    def pixels(fig):
        canvas = FigureCanvasAgg(fig)
        canvas.draw()
        return np.asarray(canvas.buffer_rgba()).copy()

    names = ["anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise"]
    rng = np.random.default_rng(0)
    first, later = rng.integers(0, 12, (7, 7)), rng.integers(0, 120, (7, 7))
    later[3] = 0  # a class with no image
    fig = confusion_matrix_figure(first, names, "val confusion matrix (epoch 9)")
    before = pixels(fig)
    redraw_confusion_matrix_figure(fig, later, "val confusion matrix (epoch 19)")
    after, new = pixels(fig), pixels(confusion_matrix_figure(later, names, "val confusion matrix (epoch 19)"))
    assert np.array_equal(after, new) and not np.array_equal(before, after)


def test_figures_are_drawn_off_the_training_thread_in_order_and_waited_for(caplog):
    import threading

    from fer_lightning.engine.drawing import Drawing

    drawing, release, done = Drawing(), threading.Event(), []

    def slow_figure(name):
        assert release.wait(10)  # the training thread goes on meanwhile
        done.append((name, threading.current_thread().name.startswith("fer-figures")))

    drawing.submit(slow_figure, "a")
    drawing.submit(done.append, ("b", True))
    assert done == []  # submit did not wait for the drawing
    release.set()
    drawing.wait()
    assert done == [("a", True), ("b", True)]
    assert not [t for t in threading.enumerate() if t.name.startswith("fer-figures")]  # the thread ended

    def broken():
        raise ValueError("no such colormap")

    drawing.submit(broken)
    with pytest.raises(ValueError, match="no such colormap"):
        drawing.wait()
    drawing.submit(broken)
    drawing.wait(raise_errors=False)  # after another exception: a warning, not a second exception
    assert "a TensorBoard figure was not drawn: no such colormap" in caplog.text
