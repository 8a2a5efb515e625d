"""What a training run says while it runs, for a terminal and for a log file.

* :class:`EpochLines`: one log line per epoch (epoch/max, train loss, val loss and accuracy, seconds, ETA) in place
  of Lightning's progress bar when progress is shown as lines (stdout not a terminal, or ``progress.mode=lines``:
  :mod:`fer_lightning.runtime.progress`).
* :class:`StopRecord`: why training stopped (early stopping at epoch k, ``max_epochs``, ``max_time``,
  ``max_steps``, interrupted), the ``limit_train_batches`` fraction, and how many training images were seen; the
  run writes it into ``metrics.json`` and the log.
* :class:`ModelTable`: Lightning's model summary without the FLOPs column and ``Total FLOPs: 0`` line when FLOPs
  were not measured (they never are here: models declare no ``example_input_array``).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback, EarlyStopping, ModelSummary, Timer
from pytorch_lightning.callbacks.progress import ProgressBar
from pytorch_lightning.utilities.model_summary.model_summary import _format_summary_table

from fer_lightning.runtime.progress import duration

log = logging.getLogger("fer_lightning.progress")


def _value(metrics: dict[str, Any], key: str) -> float | None:
    v = metrics.get(key)
    try:
        return float(v) if v is not None else None
    except (TypeError, ValueError):
        return None


def epoch_line(epoch: int, max_epochs: int, metrics: dict[str, Any], seconds: float, eta: float | None) -> str:
    """The log line of a finished epoch (``epoch`` counted from 1; ``eta`` in seconds, or None).

    Examples:
        >>> epoch_line(3, 50, {"train/loss": 1.25, "val/loss": 1.5, "val/acc": 0.5}, 12.34, 600)
        'epoch 3/50: train/loss 1.2500, val/loss 1.5000, val/acc 0.5000; 12.3 s, ETA at most 10m00s'
    """
    parts = [f"{k} {v:.4f}" for k in ("train/loss", "val/loss", "val/acc")
             if (v := _value(metrics, k)) is not None]
    of = f"/{max_epochs}" if max_epochs and max_epochs > 0 else ""
    tail = f"; {seconds:.1f} s" + (f", ETA at most {duration(eta)}" if eta is not None else "")
    return f"epoch {epoch}{of}: " + ", ".join(parts) + tail


class EpochLines(ProgressBar):
    """Lightning's progress bar replaced by one ``fer_lightning.progress`` log line per training epoch (what a
    file can hold). The ETA is the remaining epochs at the mean epoch time so far, or the time left of
    ``trainer.max_time`` when that comes first ("at most": early stopping may end the run sooner)."""

    def __init__(self) -> None:
        super().__init__()
        self._enabled = True
        self._fit_start = self._epoch_start = 0.0
        self._epochs_timed = 0
        self.lines: list[str] = []

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._fit_start, self._epochs_timed = time.perf_counter(), 0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        now = time.perf_counter()
        self._epochs_timed += 1
        left = max(int(trainer.max_epochs or 0) - trainer.current_epoch - 1, 0) if trainer.max_epochs else None
        eta = None if left is None else left * (now - self._fit_start) / self._epochs_timed
        timer = next((cb for cb in trainer.callbacks if isinstance(cb, Timer)), None)
        remaining = timer.time_remaining() if timer is not None else None
        if remaining is not None:
            eta = max(remaining, 0.0) if eta is None else min(eta, max(remaining, 0.0))
        line = epoch_line(trainer.current_epoch + 1, int(trainer.max_epochs or 0), dict(trainer.callback_metrics),
                          now - self._epoch_start, eta)
        self.lines.append(line)
        if self._enabled and trainer.is_global_zero:
            log.info("%s", line)


def _batch_size(batch: Any) -> int:
    if isinstance(batch, dict) and "label" in batch:
        return len(batch["label"])
    if isinstance(batch, (list, tuple)) and batch:
        return len(batch[0])
    return 0


class StopRecord(Callback):
    """Counts the training images seen and says, after ``fit``, why training stopped (:meth:`summary`). Its count
    travels in checkpoints, so a resumed run counts the images of every attempt."""

    def __init__(self) -> None:
        self.images_seen = 0
        self.interrupted = False
        self.epoch_batches = 0  # batches done in the last epoch started (Lightning ends a cut-short one too)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.epoch_batches = 0

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.images_seen += _batch_size(batch) * max(int(trainer.world_size), 1)
        self.epoch_batches = batch_idx + 1

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self.interrupted = isinstance(exception, KeyboardInterrupt)

    def state_dict(self) -> dict[str, Any]:
        return {"images_seen": self.images_seen}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.images_seen = int(state_dict.get("images_seen", 0))

    def reason(self, trainer: pl.Trainer) -> str:
        """``interrupted``, ``early stopping at epoch k``, ``max_time``, ``max_steps``, ``max_epochs`` (or
        ``stopped`` when none of these says it). Epochs are counted from 1."""
        if self.interrupted or trainer.interrupted:
            return "interrupted"
        stopper = next((cb for cb in trainer.callbacks if isinstance(cb, EarlyStopping)), None)
        if stopper is not None and stopper.stopped_epoch > 0:
            return f"early stopping at epoch {stopper.stopped_epoch + 1}"
        timer = next((cb for cb in trainer.callbacks if isinstance(cb, Timer)), None)
        remaining = timer.time_remaining() if timer is not None else None
        if remaining is not None and remaining <= 0:
            return "max_time"
        if trainer.max_steps is not None and 0 <= trainer.max_steps <= trainer.global_step:
            return "max_steps"
        if trainer.max_epochs is not None and 0 <= trainer.max_epochs <= trainer.current_epoch:
            return "max_epochs"
        return "stopped"

    def summary(self, trainer: pl.Trainer) -> dict[str, Any]:
        """``metrics.json`` fields: ``stop_reason``, ``epochs``, ``train_images_seen`` and
        ``limit_train_batches`` (only when it is a fraction or a count below the whole training split), and
        ``last_epoch_batches`` ("k/n") when the last epoch was cut short after k of its n batches (``max_time`` and
        ``max_steps`` stop between batches; ``epochs`` counts that epoch too)."""
        out: dict[str, Any] = {"stop_reason": self.reason(trainer), "epochs": int(trainer.current_epoch),
                               "train_images_seen": int(self.images_seen)}
        limit = trainer.limit_train_batches
        if limit is not None and not (isinstance(limit, float) and limit >= 1.0):
            out["limit_train_batches"] = limit
        total = trainer.num_training_batches
        if 0 < self.epoch_batches and isinstance(total, int) and self.epoch_batches < total:
            out["last_epoch_batches"] = f"{self.epoch_batches}/{total}"
        return out

    @staticmethod
    def sentence(summary: dict[str, Any]) -> str:
        """One line of the log from :meth:`summary`.

        Examples:
            >>> StopRecord.sentence({"stop_reason": "max_epochs", "epochs": 2, "train_images_seen": 260})
            'training stopped: max_epochs, after 2 epochs; 260 training images seen'
            >>> StopRecord.sentence({"stop_reason": "max_time", "epochs": 2, "train_images_seen": 146,
            ...                      "last_epoch_batches": "1/9"})  # doctest: +NORMALIZE_WHITESPACE
            'training stopped: max_time, after 2 epochs, the last one cut short after 1/9 batches;
             146 training images seen'
        """
        limit = summary.get("limit_train_batches")
        part = f" (each on limit_train_batches={limit} of the training batches)" if limit is not None else ""
        if summary.get("last_epoch_batches"):
            part += f", the last one cut short after {summary['last_epoch_batches']} batches"
        epochs = f"{summary['epochs']} epoch" + ("s" if summary["epochs"] != 1 else "")
        return (f"training stopped: {summary['stop_reason']}, after {epochs}{part}; "
                f"{summary['train_images_seen']} training images seen")


class ModelTable(ModelSummary):
    """Lightning's plain-text model summary, without FLOPs when none were measured (``Total FLOPs: 0``)."""

    @staticmethod
    def summarize(summary_data: list[tuple[str, list[str]]], total_parameters: int, trainable_parameters: int,
                  model_size: float, total_training_modes: dict[str, int], total_flops: int,
                  **summarize_kwargs: Any) -> None:
        if not total_flops:
            summary_data = [(name, column) for name, column in summary_data if name != "FLOPs"]
        table = _format_summary_table(total_parameters, trainable_parameters, model_size, total_training_modes,
                                      total_flops, *summary_data)
        if not total_flops:
            table = "\n".join(line for line in table.splitlines() if "total flops" not in line.lower())
        logging.getLogger("fer_lightning.summary").info("\n%s", table)
