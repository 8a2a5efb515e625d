"""Cross-dataset evaluation: a checkpoint tested on a dataset whose classes differ from its own.

Classes are matched by their canonical names (:mod:`fer_lightning.data.classes`: every source reads ``happy``,
``Happy`` or ``HA`` as ``happiness``). Only the classes both have are scored:

* the test images of the data's other classes are dropped (one log line names them and counts the images);
* the model's probabilities are restricted to the shared classes and renormalised to sum to one (the same as a
  softmax over the shared classes' logits); the prediction is their argmax, so a model is never marked wrong for
  choosing a class the data does not have; the accuracy over all its classes is recorded beside it
  (``cross_dataset.acc_all_classes`` in ``metrics.json``: a prediction of an unshared class counts as wrong);
* metrics, confusion matrix and ``predictions.csv`` are over the shared classes, in the model's order.

Fewer than two shared classes is refused: there is nothing to classify.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fer_lightning.data.splits import Split
from fer_lightning.errors import FERError
from fer_lightning.models.components.metrics import ClassificationMetrics, mean_nll

log = logging.getLogger("fer_lightning.evaluate")

RULE = ("shared classes by name; other classes' images dropped; probabilities restricted to the shared classes and "
        "renormalised")
TEST_IMAGES = ("split", "all")  # the data's test split, or every image (a dataset that is only a test set)


@dataclass(frozen=True)
class ClassMapping:
    """How a model's classes meet a dataset's, by name.

    Args:
        model_classes: the checkpoint's classes, in its output order.
        data_classes: the dataset's classes, in its label order.

    Examples:
        >>> m = ClassMapping(("anger", "contempt", "happiness", "neutral"), ("happiness", "neutral", "surprise"))
        >>> m.shared, m.unscored, m.dropped
        (('happiness', 'neutral'), ('anger', 'contempt'), ('surprise',))
        >>> m.data_to_model().tolist()  # the data's labels as model outputs (-1: not a model class)
        [2, 3, -1]
        >>> m.identical
        False
    """

    model_classes: tuple[str, ...]
    data_classes: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "model_classes", tuple(self.model_classes))
        object.__setattr__(self, "data_classes", tuple(self.data_classes))

    @property
    def shared(self) -> tuple[str, ...]:
        """The classes both have, in the model's order: those scored."""
        return tuple(c for c in self.model_classes if c in self.data_classes)

    @property
    def unscored(self) -> tuple[str, ...]:
        """The model's classes the data does not have (removed from its probabilities)."""
        return tuple(c for c in self.model_classes if c not in self.data_classes)

    @property
    def dropped(self) -> tuple[str, ...]:
        """The data's classes the model does not have (their images are not scored)."""
        return tuple(c for c in self.data_classes if c not in self.model_classes)

    @property
    def identical(self) -> bool:
        return self.model_classes == self.data_classes

    def data_to_model(self) -> torch.Tensor:
        """For each data label, the model's output index of that class (-1 where the model has none)."""
        return torch.tensor([self.model_classes.index(c) if c in self.model_classes else -1
                             for c in self.data_classes], dtype=torch.long)

    def check(self, where: str = "the data") -> None:
        """One line when fewer than two classes are shared: there is nothing to classify."""
        if len(self.shared) < 2:
            raise FERError(f"{where} shares {len(self.shared)} class(es) ({', '.join(self.shared) or 'none'}) with "
                           f"the checkpoint ({', '.join(self.model_classes)}); cross-dataset evaluation needs two "
                           "or more: evaluate on data with at least two of the checkpoint's classes")


def restrict_to_shared(dm: Any, mapping: ClassMapping, source: str | None, test_images: str) -> dict[str, Any]:
    """Make ``dm`` (set up) serve the model: labels as model outputs, the test images of unshared classes dropped.
    Returns what ``metrics.json`` records under ``cross_dataset``."""
    mapping.check(f"data={dm.dataset_name}")
    to_model = mapping.data_to_model()
    test = np.asarray(dm.split.test, dtype=np.int64)
    labels = dm.targets[torch.as_tensor(test)]
    keep = (to_model[labels] >= 0).numpy()
    counts = {c: int((labels == k).sum()) for k, c in enumerate(mapping.data_classes) if c in mapping.dropped}
    dm.targets = to_model[dm.targets]  # -1: an unshared class; no split part below holds one

    def shared(part: Any) -> np.ndarray:
        part = np.asarray(part, dtype=np.int64)
        return part[(dm.targets[torch.as_tensor(part)] >= 0).numpy()]

    dm.soft = None  # soft labels (FER+) are over the data's classes; the test scores the labels
    dm.use_split(Split(shared(dm.split.train), shared(dm.split.val), test[keep]))
    if not keep.any():
        raise FERError(f"data={dm.dataset_name}: none of its test images is of a class the checkpoint has")
    dropped = (f"dropped classes {', '.join(f'{c} ({n})' for c, n in counts.items())}: {int((~keep).sum())} of "
               f"{len(test)} test images removed" if counts else f"all {len(test)} test images kept")
    unscored = (f"; the model's classes {', '.join(mapping.unscored)} are removed from its probabilities, which are "
                "renormalised" if mapping.unscored else "")
    log.info("cross-dataset: %s -> %s, scoring the %d shared classes (%s); %s%s", source or "the checkpoint's data",
             dm.dataset_name, len(mapping.shared), ", ".join(mapping.shared), dropped, unscored)
    return {"source": source, "target": dm.dataset_name, "shared_classes": list(mapping.shared),
            "model_classes": list(mapping.model_classes), "target_classes": list(mapping.data_classes),
            "dropped_classes": counts, "images_dropped": int((~keep).sum()), "test_images": test_images,
            "rule": RULE}


@dataclass
class SharedScores:
    """A tested model's outputs over the shared classes, shaped as a model's (``results``, ``confusion``,
    ``outputs`` of the ``test`` stage) for :func:`~fer_lightning.engine.outputs.metrics_of_test`."""

    model_name: str
    class_names: tuple[str, ...]
    results: dict[str, dict[str, float]] = field(default_factory=dict)
    confusion: dict[str, torch.Tensor] = field(default_factory=dict)
    outputs: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)


def score_shared(model: Any, mapping: ClassMapping) -> SharedScores:
    """The tested ``model``'s ``test`` outputs restricted to ``mapping.shared`` (see the module docstring).

    Shape:
        - ``model.outputs["test"]``: ``probs`` :math:`(N, C_{model})`, ``target`` :math:`(N,)` model indices.

    Examples:
        >>> from types import SimpleNamespace
        >>> out = {"index": torch.tensor([0, 1]), "target": torch.tensor([0, 2]),
        ...        "probs": torch.tensor([[0.4, 0.5, 0.1], [0.1, 0.6, 0.3]])}
        >>> model = SimpleNamespace(model_name="deep", outputs={"test": out})
        >>> s = score_shared(model, ClassMapping(("anger", "fear", "happiness"), ("anger", "happiness")))
        >>> s.outputs["test"]["probs"], s.outputs["test"]["target"]
        (tensor([[0.8000, 0.2000],
                [0.2500, 0.7500]]), tensor([0, 1]))
        >>> s.results["test"]["acc"]
        1.0
    """
    out = model.outputs["test"]
    cols = torch.tensor([mapping.model_classes.index(c) for c in mapping.shared])
    to_shared = torch.full((len(mapping.model_classes),), -1, dtype=torch.long)
    to_shared[cols] = torch.arange(len(cols))
    probs = out["probs"][:, cols]
    probs = probs / probs.sum(dim=1, keepdim=True).clamp_min(1e-12)
    target = to_shared[out["target"].long()]
    metrics = ClassificationMetrics(mapping.shared, sync_on_compute=False)
    metrics.update(probs, target)
    results = {k: float(v) for k, v in metrics.compute().items()}
    results["nll"] = mean_nll(probs, target)
    return SharedScores(model.model_name, mapping.shared, {"test": results}, {"test": metrics.confusion_matrix()},
                        {"test": {"index": out["index"], "probs": probs, "target": target}})


def all_classes_accuracy(model: Any) -> float:
    """Accuracy of the model's argmax over all its classes (an unshared class predicted counts as wrong)."""
    out = model.outputs["test"]
    return float((out["probs"].argmax(dim=1) == out["target"]).double().mean())


def whole_dataset(dm: Any) -> None:
    """Test on every image of ``dm`` (``test_images=all``): nothing is trained on, so no split is drawn."""
    n = len(dm.file_names())
    dm.use_split(Split(np.zeros(0, np.int64), np.zeros(0, np.int64), np.arange(n, dtype=np.int64)))
