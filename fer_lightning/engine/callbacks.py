"""Lightning callbacks of the project: :class:`TrainingPictures` (TensorBoard pictures when training starts),
:class:`ConfusionFigures` (the validation and test confusion matrices as TensorBoard figures) and
:class:`BestCheckpoint` and :class:`LastCheckpoint` (the best checkpoint and ``checkpoints/last.ckpt``: written at most
every ``every_s`` seconds, on interruption and at the end)."""

from __future__ import annotations

import copy
import logging
import time
from typing import Any
from weakref import proxy

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger

from fer_lightning.engine.drawing import Drawing, log_figure
from fer_lightning.errors import FERError
from fer_lightning.features.extractor import HandcraftedFeatures, resize_uint8, to_unit
from fer_lightning.reporting.figures import confusion_matrix_figure, redraw_confusion_matrix_figure
from fer_lightning.reporting.mosaics import hog_figure, image_grid_figure, lbp_figure
from fer_lightning.runs.checkpoints import FITTED_KEY

log = logging.getLogger(__name__)


def _copied(value: Any, memo: dict[Any, Any]) -> Any:
    """``value`` with its dicts, lists, tuples and tensors copied, each object once and the storage of every tensor
    once: what was one object (or shared a storage) still is, so the copy is written byte for byte as ``value``
    would have been."""
    if id(value) in memo:
        return memo[id(value)]
    if isinstance(value, torch.Tensor):
        storage = value.untyped_storage()
        key = ("storage", storage.data_ptr() or id(value))
        if key not in memo:
            memo[key] = storage.clone()
        out = value.new_empty(0).set_(memo[key], value.storage_offset(), value.size(), value.stride())
    elif isinstance(value, dict):
        out = copy.copy(value)  # its class and attributes (a state dict's _metadata), then its values copied
        for k, v in value.items():
            out[k] = _copied(v, memo)
    elif isinstance(value, list | tuple) and not hasattr(value, "_fields"):
        out = type(value)(_copied(v, memo) for v in value)
    else:
        return value
    memo[id(value)] = out
    return out


def _held(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """``checkpoint`` as it is now, kept until it is written (:func:`_copied`; its fitted layers never change)."""
    memo: dict[Any, Any] = {}
    return {k: v if k == FITTED_KEY else _copied(v, memo) for k, v in checkpoint.items()}


class HeldCheckpoint(ModelCheckpoint):
    """A :class:`~pytorch_lightning.callbacks.ModelCheckpoint` whose files are written when ``every_s`` seconds have
    passed since one was last written (0: at once, as Lightning does), and else held in memory (a copy of the
    checkpoint as it would have been written then) until one is due, training ends, or training is interrupted
    (:meth:`flush`). Whenever a file is due, every checkpoint held by any of them is written with it, so the files
    on disk always agree (``last.ckpt`` never names a best checkpoint that is not written). A run killed outright
    loses at most ``every_s`` seconds; the files a finished or interrupted run leaves are the same as when each was
    written at once. Heads whose epochs take milliseconds no longer write a checkpoint per epoch.

    Args:
        every_s: seconds between writes (``callbacks.<option>.every_s``); 0: every checkpoint when it is made.
    """

    option = "model_checkpoint"

    def __init__(self, *args: Any, every_s: float = 0.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if isinstance(every_s, bool) or not isinstance(every_s, int | float) or every_s < 0:
            raise FERError(f"callbacks.{self.option}.every_s={every_s}: give 0 (write at once) or a number of "
                           "seconds between checkpoint writes")
        self.every_s = float(every_s)
        self._written_at = time.monotonic()
        self._pending: dict[str, dict[str, Any]] = {}  # path -> the checkpoint to write there
        self._doomed: list[str] = []  # files replaced by a held checkpoint: removed once it is written

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._written_at = time.monotonic()

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        self._pending.pop(filepath, None)
        # rank 0's clock decides for every process (writing waits for all of them)
        if trainer.strategy.broadcast(time.monotonic() - self._written_at >= self.every_s):
            flush_all(trainer)  # what every checkpoint callback holds first, then this one
            super()._save_checkpoint(trainer, filepath)
            self._written_at = time.monotonic()
            return
        # not due: the checkpoint as it would be written now
        ckpt = trainer._checkpoint_connector.dump_checkpoint(self.save_weights_only)
        self._pending[filepath] = _held(ckpt)
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath

    def _remove_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        if self._pending.pop(filepath, None) is not None:
            return  # held, never written
        if self._pending:  # replaced by a held one: the file stays until its replacement is written
            self._doomed.append(filepath)
            return
        super()._remove_checkpoint(trainer, filepath)

    def flush(self, trainer: pl.Trainer) -> None:
        """Write the checkpoints held in memory, if any (rank 0 writes), then remove the files they replace."""
        written = list(self._pending)
        for filepath, ckpt in self._pending.items():
            trainer.strategy.save_checkpoint(ckpt, filepath)
            if trainer.is_global_zero:
                for logger in trainer.loggers:
                    logger.after_save_checkpoint(proxy(self))
        self._pending = {}
        for filepath in self._doomed:
            if filepath not in written:
                super()._remove_checkpoint(trainer, filepath)
        self._doomed = []
        if written:
            self._written_at = time.monotonic()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self.flush(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        super().on_exception(trainer, pl_module, exception)
        self.flush(trainer)


def flush_all(trainer: pl.Trainer) -> None:
    """Write what every :class:`HeldCheckpoint` of ``trainer`` holds."""
    for cb in trainer.checkpoint_callbacks:
        if isinstance(cb, HeldCheckpoint):
            cb.flush(trainer)


class BestCheckpoint(HeldCheckpoint):
    """The best checkpoint on the monitored metric (``conf/callbacks/model_checkpoint.yaml``): Lightning's
    :class:`~pytorch_lightning.callbacks.ModelCheckpoint`, held in memory between writes (:class:`HeldCheckpoint`).
    Its state in checkpoints keeps ModelCheckpoint's key, so checkpoints written by either resume into the other."""

    @property
    def state_key(self) -> str:
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)


class LastCheckpoint(HeldCheckpoint):
    """``last.ckpt``, the resume point (``conf/callbacks/last_checkpoint.yaml``), held in memory between writes
    (:class:`HeldCheckpoint`: written every ``every_s`` seconds, at the end and on interruption).

    A class of its own also so that its state key never equals another ModelCheckpoint's:
    ``callbacks.model_checkpoint.monitor=null`` would otherwise give two checkpoint callbacks with the same key,
    which Lightning refuses.
    """

    option = "last_checkpoint"


class TrainingPictures(Callback):
    """Logs, once when training starts, to every TensorBoard logger (tab IMAGES, tags ``pictures/*``):

    * ``pictures/augmented_batch``: ``n_images`` random training images as the model receives them, after the
      data module's on-device augmentation (they pass through the trainer's own batch transfer), titled with
      their labels;
    * for models with handcrafted features (``handcrafted``, ``hybrid``): ``pictures/hog`` and ``pictures/lbp``,
      the HOG and uniform-LBP visualisations of ``n_faces`` of those images un-augmented, at the first scale of
      the model's own descriptor settings.

    The random draws happen on forked random-number generators, so a run's training is the same with or without
    this callback. The figures are drawn and logged on a background thread (:class:`Drawing`) while the first
    epochs run; the end of training waits for them. Nothing is computed without a TensorBoard logger (or on other
    ranks than 0).
    """

    def __init__(self, n_images: int = 16, n_faces: int = 4) -> None:
        self.n_images, self.n_faces = int(n_images), int(n_faces)
        self._drawing = Drawing()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        writers = [lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        if not writers or not trainer.is_global_zero or self.n_images < 1:
            return
        parts, step = self.pictures(trainer, pl_module), trainer.global_step
        self._drawing.submit(self._log, parts, writers, step)
        log.info("TensorBoard pictures (drawn while training runs): %s", ", ".join(parts))

    def _log(self, parts: dict[str, Any], writers: list[Any], step: int) -> None:
        for tag, fig in self.draw(parts).items():
            log_figure(writers, tag, fig, step)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._drawing.wait()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._drawing.wait(raise_errors=False)

    def figures(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        """``tag -> Figure`` for this run (what :meth:`on_train_start` logs)."""
        return self.draw(self.pictures(trainer, pl_module))

    def pictures(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, tuple[Any, ...]]:
        """``tag -> (figure builder, its arguments)``: the images drawn (random draws on forked generators, on the
        training thread), not yet drawn."""
        device = pl_module.device
        with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
            batch = self._sample(trainer)
            raw = batch["image"].clone()  # uint8, as stored
            seen = trainer.strategy.batch_to_device(batch, dataloader_idx=0)["image"]  # augmented, on the device
            augment = getattr(trainer.datamodule, "augment", None)
            if not getattr(pl_module, "reads_images", True) and augment is not None:
                seen = augment(to_unit(seen))  # a head on stored features: what its augmented copies were made with
        names = getattr(pl_module, "class_names", None)
        titles = [names[int(t)] if names else str(int(t)) for t in batch["label"]]
        out = {"pictures/augmented_batch": (image_grid_figure, seen[:, 0].float().cpu().numpy(), titles,
                                            f"What the model sees: {len(titles)} augmented training images "
                                            f"({seen.shape[-1]} px)")}
        extractor = getattr(pl_module, "extractor", None)
        if isinstance(extractor, HandcraftedFeatures):
            faces = raw[: self.n_faces]
            for name, cfg, build in (("hog", extractor.hog_cfg, hog_figure), ("lbp", extractor.lbp_cfg, lbp_figure)):
                if cfg is not None:
                    scale = int(cfg["scales"][0])
                    out[f"pictures/{name}"] = (build, resize_uint8(faces, scale)[:, 0].numpy(), cfg)
        return out

    @staticmethod
    def draw(parts: dict[str, tuple[Any, ...]]) -> dict[str, Any]:
        """``tag -> Figure`` from :meth:`pictures`."""
        return {tag: build(*args) for tag, (build, *args) in parts.items()}

    def _sample(self, trainer: pl.Trainer) -> dict[str, Any]:
        """A random batch of training items straight from the dataset (the training loader's own iterator and
        workers are left alone), collated as the loader does."""
        loader = trainer.train_dataloader
        dataset = getattr(loader, "dataset", None)
        if dataset is None:  # device-resident batches (data.on_device): the first shuffled batch, moved to the CPU
            batch = next(iter(loader))
            return {k: v[: self.n_images].cpu() if torch.is_tensor(v) else v for k, v in batch.items()}
        pick = torch.randperm(len(dataset))[: self.n_images].tolist()
        return loader.collate_fn([dataset[i] for i in pick])


class ConfusionFigures(Callback):
    """Logs the model's validation confusion matrix every ``every_n_epochs`` epochs, at most once in ``every_s``
    seconds, and at the end of training (the last validation's, when it was not drawn), and the test's
    (``val/confusion_matrix``, ``test/confusion_matrix``), as a figure to every TensorBoard logger, drawn on a
    background thread (:class:`Drawing`; the ends of training and testing wait for them). The model computes the
    matrix (``pl_module.confusion[stage]``); nothing is drawn without a TensorBoard logger. Drawing a figure costs
    about 0.1 s of CPU, more than an epoch of a head on fixed features: hence neither every epoch nor, for a
    training of seconds, more than the last one.

    Args:
        every_n_epochs: draw the validation matrix of epochs ``n-1, 2n-1, ...``; 1: every epoch.
        every_s: and only when this many seconds have passed since training started or the last one was drawn;
            0: every ``every_n_epochs`` epochs whatever the time.
    """

    def __init__(self, every_n_epochs: int = 10, every_s: float = 30.0) -> None:
        if isinstance(every_n_epochs, bool) or not isinstance(every_n_epochs, int) or every_n_epochs < 1:
            raise FERError(f"callbacks.confusion_figures.every_n_epochs={every_n_epochs}: give a whole number >= 1")
        if isinstance(every_s, bool) or not isinstance(every_s, int | float) or every_s < 0:
            raise FERError(f"callbacks.confusion_figures.every_s={every_s}: give 0 (every every_n_epochs epochs) or "
                           "a number of seconds between two figures")
        self.every_n_epochs, self.every_s = every_n_epochs, float(every_s)
        self._drawn_at = time.monotonic()
        self._undrawn: tuple[int, int] | None = None  # (epoch, global step) of a validation not drawn yet
        self._figures: dict[str, Any] = {}  # stage -> its figure, redrawn for the next matrix (on the drawing thread)
        self._drawing = Drawing()

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._drawing.wait()
        self._figures = {}  # a model's classes

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._drawn_at = time.monotonic()

    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str, epoch: int, step: int) -> None:
        writers = [lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        cm = getattr(pl_module, "confusion", {}).get(stage)
        if not writers or cm is None:
            return
        self._drawing.submit(self._draw, writers, cm.numpy().copy(), list(pl_module.class_names), stage, epoch, step)

    def _draw(self, writers: list[Any], cm: Any, class_names: list[str], stage: str, epoch: int, step: int) -> None:
        title = f"{stage} confusion matrix (epoch {epoch})"
        fig = self._figures.get(stage)  # drawn before: the same classes, redrawn (the same picture, in half the time)
        if fig is None:
            fig = self._figures[stage] = confusion_matrix_figure(cm, class_names, title)
        else:
            redraw_confusion_matrix_figure(fig, cm, title)
        log_figure(writers, f"{stage}/confusion_matrix", fig, step)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        epoch, step = trainer.current_epoch, trainer.global_step
        due = (epoch + 1) % self.every_n_epochs == 0 and time.monotonic() - self._drawn_at >= self.every_s
        if trainer.state.fn != "fit" or due:
            self._log(trainer, pl_module, "val", epoch, step)
            self._undrawn = None
            self._drawn_at = time.monotonic()
        else:
            self._undrawn = (epoch, step)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._undrawn is not None:
            self._log(trainer, pl_module, "val", *self._undrawn)
            self._undrawn = None
        self._drawing.wait()

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log(trainer, pl_module, "test", trainer.current_epoch, trainer.global_step)
        self._drawing.wait()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._drawing.wait()  # a validation outside training

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._drawing.wait(raise_errors=False)
