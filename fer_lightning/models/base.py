"""The classifier base shared by every model: loss, metrics, logging, optimiser and collected predictions."""

from __future__ import annotations

import inspect
import io
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytorch_lightning as pl
import torch
from torch import nn

from fer_lightning.data.contract import DataNeeds, ModelData, ProvidesModelData
from fer_lightning.errors import FERError
from fer_lightning.models.components.fitted import move_fitted
from fer_lightning.models.components.metrics import ClassificationMetrics, mean_nll
from fer_lightning.models.components.optim import OptimSettings
from fer_lightning.models.components.recipe import Primitives
from fer_lightning.runs.checkpoints import FORMAT_KEY, check_record, read_checkpoint
from fer_lightning.runtime.collectives import gather_outputs
from fer_lightning.runtime.registry import choose

log = logging.getLogger(__name__)
STAGES = ("train", "val", "test")
CLASS_WEIGHTS = ("none", "balanced")


def channels_last_wanted(setting: bool | str, device: str, precision: Any = "32-true") -> bool:
    """Whether a CNN backbone trains in channels-last memory format (``model.channels_last``): ``true``,
    ``false``, or ``auto`` (where it was measured faster: on a CPU, through oneDNN, and on a GPU with 16-bit
    precision, ``trainer.precision=bf16-mixed`` or ``16-mixed``; docs/scaling.md). Other values are refused in
    one line.

    Examples:
        >>> channels_last_wanted("auto", "cpu"), channels_last_wanted("auto", "cuda", "bf16-mixed")
        (True, True)
        >>> channels_last_wanted("auto", "cuda", "32-true"), channels_last_wanted(False, "cpu")
        (False, False)
    """
    if isinstance(setting, bool):
        return setting
    if setting != "auto":
        raise FERError(f"model.channels_last={setting}: give true, false or auto (channels-last memory format "
                       "for the CNN: auto is on a CPU and with 16-bit precision on a GPU)")
    return device == "cpu" or "16" in str(precision)


class FERClassifier(pl.LightningModule):
    """Subclasses build their network in ``__init__`` and implement ``forward(images) -> logits``; what they need
    from the data beyond batches is declared in ``needs`` (:class:`~fer_lightning.data.contract.DataNeeds`) and
    handed to :meth:`prepare` at setup as one :class:`~fer_lightning.data.contract.ModelData`.

    Batches are dicts with ``image`` ``(B, 1, H, W)`` float, ``label`` ``(B,)`` and ``index`` ``(B,)``. Metrics
    are logged as ``train/*``, ``val/*``, ``test/*`` at epoch end; val/test loss and metrics are computed from
    the outputs of every process (DDP), each image of the split once; after a validation or test epoch,
    ``results[stage]`` holds the scalar metrics, ``confusion[stage]`` the confusion matrix and
    ``outputs[stage]`` the per-image ``index``, ``probs`` and ``target`` (all on the CPU).
    """

    model_name = "classifier"
    needs: ClassVar[DataNeeds] = DataNeeds()

    def __init__(
        self,
        class_names: Sequence[str],
        optim: dict[str, Any] | None = None,
        class_weights: str = "none",
        channels_last: bool | str = False,
        compile: bool | str = False,
    ) -> None:
        """``optim``: :class:`~fer_lightning.models.components.optim.OptimSettings` keys (a recipe section;
        defaults: the paper's
        Adam 1e-4); ``class_weights``: ``none`` or ``balanced`` (loss weights inverse to the training split's
        class frequencies); ``channels_last`` (true, false or auto: :func:`channels_last_wanted`), ``compile``:
        speed options for a CNN backbone (:meth:`configure_model`)."""
        super().__init__()
        self.class_names = tuple(class_names)
        self.optim = OptimSettings.from_config(optim)
        choose(class_weights, CLASS_WEIGHTS, "model.class_weights")
        self.class_weights = class_weights
        channels_last_wanted(channels_last, "cpu")  # refused here, before anything trains, when it is no choice
        self.channels_last, self.compile_backbone = channels_last, compile
        self.criterion = nn.CrossEntropyLoss(label_smoothing=self.optim.label_smoothing)
        # the modern recipe's primitives (MixUp/CutMix, RandAugment, erasing, EMA, unfreezing): all off by default
        self.primitives = Primitives(self.optim, len(self.class_names))
        # balanced: inverse class frequencies of the training split, set when fitting starts (not saved: the
        # checkpoint classifies without it)
        self.register_buffer("class_weight", None, persistent=False)
        # one metric set per stage, as attributes so they follow the module's device
        # (val/test metrics see every process's outputs already gathered: they must not sum them again)
        # (training metrics are updated once per epoch with the softmax and labels of its steps, known to be well
        # formed: no input checks, which read values back from the device)
        self.train_metrics = ClassificationMetrics(self.class_names, validate_args=False)
        self.val_metrics = ClassificationMetrics(self.class_names, sync_on_compute=False)
        self.test_metrics = ClassificationMetrics(self.class_names, sync_on_compute=False)
        self.results: dict[str, dict[str, float]] = {}
        self.confusion: dict[str, torch.Tensor] = {}
        self.outputs: dict[str, dict[str, torch.Tensor]] = {}
        self._collected: dict[str, list[dict[str, torch.Tensor]]] = {"val": [], "test": []}
        self._seen: list[tuple[torch.Tensor, torch.Tensor]] = []  # this training epoch's (probs, label) per step
        self.data: ModelData | None = None  # handed over at setup by a data module that provides it
        # the checkpoint this model started from (model.init_from), recorded in its checkpoints
        self.started_from: dict[str, Any] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def stage_metrics(self, stage: str) -> ClassificationMetrics:
        return getattr(self, f"{stage}_metrics")

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self(batch["image"])

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        if stage == "train":  # train metrics stay on each image's own label when the batch is mixed
            batch = self.primitives.batch(batch)
        logits = self.logits(batch)
        # FER+ soft labels train on the vote distribution; metrics stay on the label (its argmax)
        loss = nn.functional.cross_entropy(logits, batch.get("soft", batch["label"]), weight=self.class_weight,
                                           label_smoothing=self.criterion.label_smoothing)
        if stage in self._collected:  # val/test: loss and metrics at epoch end, over every image once
            self._collected[stage].append(
                {"index": batch["index"], "logits": logits.detach().float(), "target": batch["label"]}
            )
            return loss
        # the training metrics take the epoch's outputs in one update at its end (the same values: their states
        # are counts and the concatenated outputs), not one update of each of them per step
        self._seen.append((logits.detach().float().softmax(dim=-1), batch["label"]))
        self._log(f"{stage}/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(logits),
                  sync_dist=True)
        return loss

    def _log(self, name: str, value: torch.Tensor, batch_size: int | None = None, **meta: Any) -> None:
        """``self.log(name, value, batch_size=batch_size, **meta)``, with the same result: Lightning's own call
        registers the key (and starts a new epoch's values); afterwards the value goes straight into the result
        Lightning registered, without re-checking its metadata and moving it to its device at every call (about
        1 ms each, most of the per-epoch time of a head on fixed features). A call site always passes the same
        ``meta``."""
        trainer, fx = self._trainer, self._current_fx_name
        results = trainer._results if trainer is not None and fx is not None else None
        held = results.get(f"{fx}.{name}") if results is not None and results.dataloader_idx is None else None
        if (held is None or not held.is_tensor or held.value.device != value.device
                or trainer._logger_connector.should_reset_tensors(fx)):
            self.log(name, value, batch_size=batch_size, **meta)
            return
        value = value.clone().detach().squeeze()  # as self.log takes it
        results.update_metrics(f"{fx}.{name}", value, results._extract_batch_size(held, batch_size, held.meta))
        trainer._logger_connector._current_fx = fx

    def setup(self, stage: str) -> None:
        """Take the data module's :class:`~fer_lightning.data.contract.ModelData` (when it provides one) and hand it
        to :meth:`prepare`."""
        dm = self.trainer.datamodule if self._trainer is not None else None
        if isinstance(dm, ProvidesModelData):
            self.data = dm.model_data()
            self.prepare(self.data, stage)

    def prepare(self, data: ModelData, stage: str) -> None:
        """Fit what depends on the training data (fixed layers, feature tables, weights of a fusion): nothing
        here."""

    def on_fit_start(self) -> None:
        if self.class_weights == "balanced" and self.data is not None and self.class_weight is None:
            counts = self.data.class_counts("train").double()
            weight = torch.where(counts > 0, counts.sum() / (len(counts) * counts.clamp_min(1)), 0.0)
            self.class_weight = weight.float().to(self.device)
            log.info("model.class_weights=balanced: loss weights %s",
                     ", ".join(f"{c} {w:.2f}" for c, w in zip(self.class_names, weight.tolist(), strict=True)))

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "test")

    def _split_outputs(self, stage: str) -> dict[str, torch.Tensor]:
        """The epoch's val/test outputs of every process, each image once (see :func:`gather_outputs`), with
        ``probs``; the stage's metrics updated with them and its loss logged."""
        out = gather_outputs(self._collected[stage], self.trainer.strategy)
        self._collected[stage] = []
        out["probs"] = out["logits"].softmax(dim=-1)
        self.stage_metrics(stage).update(out["probs"].to(self.device), out["target"].to(self.device))
        loss = self.criterion(out["logits"].to(self.device), out["target"].to(self.device))
        self._log(f"{stage}/loss", loss, prog_bar=True, sync_dist=True)
        return out

    def _epoch_end(self, stage: str) -> None:
        metrics = self.stage_metrics(stage)
        if stage == "train" and self._seen:
            probs, labels = zip(*self._seen, strict=True)
            self._seen = []
            metrics.update(torch.cat(probs), torch.cat(labels))
        outputs = self._split_outputs(stage) if self._collected.get(stage) else None
        values = metrics.compute()
        for k, v in values.items():  # self.log_dict's values, as it logs them
            self._log(f"{stage}/{k}", v, prog_bar=False, sync_dist=True)
        if outputs is not None and not self.trainer.sanity_checking:
            cm = metrics.confusion_matrix().cpu()
            self.outputs[stage] = {k: outputs[k] for k in ("index", "probs", "target")}
            self.results[stage] = {k: float(v) for k, v in values.items()}
            self.results[stage]["nll"] = mean_nll(self.outputs[stage]["probs"], self.outputs[stage]["target"])
            self.confusion[stage] = cm
        metrics.reset()

    def on_train_epoch_start(self) -> None:
        self._seen = []  # nothing left from an epoch that did not end (an interrupted fit)

    def on_train_epoch_end(self) -> None:
        self._epoch_end("train")

    def on_validation_epoch_end(self) -> None:
        self._epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._epoch_end("test")

    def configure_model(self) -> None:
        """Speed options, applied when a Trainer sets the model up (every model with a ``backbone``): its weights
        and inputs in channels-last memory format (``channels_last``, on the trainer's device and precision:
        :func:`channels_last_wanted`), and ``torch.compile`` of it (``compile``: true for torch's default backend,
        or a backend name such as ``aot_eager``); the state dict keeps its keys."""
        backbone = getattr(self, "backbone", None)
        if backbone is None:
            return
        trainer = self._trainer
        device = (trainer.strategy.root_device if trainer is not None else next(backbone.parameters()).device).type
        precision = trainer.precision if trainer is not None else "32-true"
        if channels_last_wanted(self.channels_last, device, precision) and not backbone.channels_last:
            backbone.to(memory_format=torch.channels_last)
            backbone.channels_last = True
        if self.compile_backbone and getattr(backbone, "_compiled_call_impl", None) is None:
            options = {} if self.compile_backbone is True else {"backend": str(self.compile_backbone)}
            backbone.compile(**options)

    @classmethod
    def from_checkpoint(
        cls, checkpoint: str | Path | Mapping[str, Any], map_location: str | torch.device = "cpu"
    ) -> FERClassifier:
        """This model from a checkpoint file, or from a checkpoint already read with
        :func:`~fer_lightning.runs.checkpoints.read_checkpoint` (so a command reads the file once), with nothing
        else: no data, no cache, no ImageNet file and no deep-run checkpoint (the backbone weights are in the
        checkpoint itself)."""
        ckpt = checkpoint if isinstance(checkpoint, Mapping) else read_checkpoint(checkpoint)
        kind = ckpt[FORMAT_KEY].get("model")
        if kind != cls.model_name:
            raise FERError(f"{checkpoint if isinstance(checkpoint, str | Path) else 'the checkpoint'} holds a "
                           f"'{kind}' model, not '{cls.model_name}'")
        hparams = dict(ckpt.get("hyper_parameters", {}))
        hparams.update(cls.offline_overrides(hparams))
        hparams["compile"] = False  # no compile wait when loading for inference
        params = inspect.signature(cls.__init__).parameters
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            hparams = {k: v for k, v in hparams.items() if k in params}
        model = cls(**hparams)
        model.on_load_checkpoint(ckpt)
        model.load_state_dict(ckpt["state_dict"])
        return model.to(map_location)

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, *args: Any, weights_only: bool = True, **kwargs: Any) -> Any:
        """Lightning's loader, reading with ``weights_only=True`` unless told otherwise; a checkpoint file is read
        with :func:`~fer_lightning.runs.checkpoints.read_checkpoint` (its fitted layers put back from their file)."""
        if isinstance(checkpoint_path, str | Path) and weights_only:
            buffer = io.BytesIO()
            torch.save(read_checkpoint(checkpoint_path), buffer)
            buffer.seek(0)
            checkpoint_path = buffer
        return super().load_from_checkpoint(checkpoint_path, *args, weights_only=weights_only, **kwargs)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Whoever loads a checkpoint into this model (resuming ``fit``, ``load_from_checkpoint``): it must be a
        checkpoint of this kind of model with these classes."""
        path = self._trainer.ckpt_path if self._trainer is not None else None
        check_record(checkpoint, self, f"ckpt_path={path}" if path else "the checkpoint")
        self.started_from = checkpoint[FORMAT_KEY].get("init_from", self.started_from)

    @classmethod
    def offline_overrides(cls, hparams: dict[str, Any]) -> dict[str, Any]:
        """Constructor arguments that replace, when a checkpoint is loaded, every reference to files outside it
        (ImageNet weights, the deep run's and the out-of-fold checkpoints): the checkpoint holds those weights."""
        backbone = hparams.get("backbone")
        if isinstance(backbone, dict):
            files = {k: None for k in ("checkpoint", "oof_checkpoints") if k in backbone}
            return {"backbone": {**backbone, "weights": "none", **files}}
        return {}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        record = {"model": self.model_name, "class_names": list(self.class_names), "format": 1}
        if self.data is not None:  # how raw images become inputs (predict, evaluate, export read it back)
            record["preprocessing"] = self.data.preprocessing.record()
        if self.started_from is not None:  # model.init_from: the checkpoint it started from
            record["init_from"] = self.started_from
        checkpoint[FORMAT_KEY] = record
        move_fitted(self, checkpoint)  # fitted layers: written once beside the checkpoints, named in the record

    def configure_callbacks(self) -> list[pl.Callback]:
        """The recipe's EMA of the weights and gradual unfreezing, when ``model.optim`` turns them on (for ``fit``:
        validating and testing afterwards evaluate the weights the model holds)."""
        self.primitives.check(self, images_only=not self.needs.handcrafted_blocks)
        return self.primitives.callbacks() if self.trainer.state.fn == "fit" else []

    def configure_optimizers(self) -> Any:
        max_epochs = self.trainer.max_epochs if self._trainer is not None else None
        params = self.primitives.param_groups(self, [p for p in self.parameters() if p.requires_grad])
        return self.optim.configure(params, max_epochs)


