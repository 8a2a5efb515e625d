"""Classification metrics with torchmetrics: they live on the module's device and are computed at epoch end.

A class with no image in what was measured has no per-class metric (its ``acc_<class>`` is left out, never 0), and
the macro averages (precision, recall, F1, AUROC) are over the classes that have images."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)


class ClassificationMetrics(nn.Module):
    """Accuracy, macro precision / recall / F1, macro AUROC, per-class accuracy and the confusion matrix.

    ``update(probs (B, C), target (B,))``; ``compute()`` -> ``{name: scalar tensor}`` with ``acc``,
    ``precision_macro``, ``recall_macro``, ``f1_macro``, ``auroc`` and ``acc_<class>`` (per-class accuracy, i.e.
    recall of that class); ``confusion_matrix()`` -> ``(C, C)`` counts, rows = true class.

    A class without any image among the targets is *absent*: it has no ``acc_<class>`` key, and the macro averages
    are taken over the present classes only (as scikit-learn's ``labels=<present classes>``); when every class is
    present the values are torchmetrics' own.

    Args:
        class_names: the classes, in the models' output order.
        sync_on_compute: sum the states of every process when computing (False when the updates already hold every
            process's outputs).
        validate_args: torchmetrics' checks of every update's inputs (values of the targets in range, ...). False
            for updates whose inputs are known to be well formed (a training step's softmax and labels): the checks
            read values back to the host, a wait for the device at every step on a GPU; the values are the same.

    Shape:
        - probs: :math:`(B, C)` class probabilities; target: :math:`(B,)` class indices.

    Examples:
        >>> m = ClassificationMetrics(["anger", "happiness"])
        >>> m.update(torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]), torch.tensor([0, 1, 1]))
        >>> {k: round(float(v), 4) for k, v in m.compute().items() if k in ("acc", "acc_happiness")}
        {'acc': 0.6667, 'acc_happiness': 0.5}
        >>> m.confusion_matrix()
        tensor([[1, 0],
                [1, 1]])

        A class with no image (sadness) is left out, not reported as 0:

        >>> m = ClassificationMetrics(["anger", "happiness", "sadness"])
        >>> m.update(torch.tensor([[0.8, 0.1, 0.1], [0.1, 0.3, 0.6]]), torch.tensor([0, 1]))
        >>> {k: round(float(v), 4) for k, v in m.compute().items()}  # doctest: +NORMALIZE_WHITESPACE
        {'acc': 0.5, 'auroc': 1.0, 'f1_macro': 0.5, 'precision_macro': 0.5, 'recall_macro': 0.5, 'acc_anger': 1.0,
         'acc_happiness': 0.0}
    """

    def __init__(self, class_names: Sequence[str], sync_on_compute: bool = True, validate_args: bool = True) -> None:
        super().__init__()
        self.class_names = list(class_names)
        n = len(self.class_names)
        # sync_on_compute False: the updates already hold every process's data
        sync = {"sync_on_compute": sync_on_compute, "validate_args": validate_args}
        self.scalars = MetricCollection(
            {
                "acc": MulticlassAccuracy(n, average="micro", **sync),
                "precision_macro": MulticlassPrecision(n, average="macro", **sync),
                "recall_macro": MulticlassRecall(n, average="macro", **sync),
                "f1_macro": MulticlassF1Score(n, average="macro", **sync),
            }
        )
        self.auroc = MulticlassAUROC(n, average=None, **sync)  # per class: averaged over the present ones
        self.per_class = MulticlassAccuracy(n, average=None, **sync)
        self.confmat = MulticlassConfusionMatrix(n, **sync)

    def update(self, probs: torch.Tensor, target: torch.Tensor) -> None:
        self.scalars.update(probs, target)
        self.auroc.update(probs, target)
        self.per_class.update(probs, target)
        self.confmat.update(probs, target)

    def compute(self) -> dict[str, torch.Tensor]:
        present = self.confmat.compute().sum(dim=1) > 0  # classes with at least one image
        with warnings.catch_warnings():  # absent classes are handled here, not warned about by torchmetrics
            warnings.filterwarnings("ignore", message=".*(positive samples|was `nan`|no samples).*")
            out = dict(self.scalars.compute())
            auroc = self.auroc.compute()
        out = {"acc": out.pop("acc"), "auroc": macro_over_present(auroc, present & ~torch.isnan(auroc)), **out}
        if not bool(present.all()):
            out.update(macro_from_confusion(self.confmat.compute(), present))
        for name, value, has in zip(self.class_names, self.per_class.compute(), present.tolist(), strict=True):
            if has:
                out[f"acc_{name}"] = value
        return out

    def confusion_matrix(self) -> torch.Tensor:
        return self.confmat.compute()

    def reset(self) -> None:
        self.scalars.reset()
        self.auroc.reset()
        self.per_class.reset()
        self.confmat.reset()


def macro_over_present(scores: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """The mean of per-class ``scores`` over the ``present`` classes (NaN when none is).

    Examples:
        >>> macro_over_present(torch.tensor([1.0, 0.0, 0.5]), torch.tensor([True, False, True]))
        tensor(0.7500)
    """
    return scores[present].mean()


def macro_from_confusion(cm: torch.Tensor, present: torch.Tensor) -> dict[str, torch.Tensor]:
    """Macro precision, recall and F1 from a confusion matrix (rows = true class), over the ``present`` classes;
    a class never predicted has precision 0 (scikit-learn's ``zero_division=0``).

    Shape:
        - cm: :math:`(C, C)`; present: :math:`(C,)` booleans.

    Examples:
        >>> cm = torch.tensor([[2, 0, 0], [1, 1, 0], [0, 0, 0]])
        >>> {k: round(float(v), 4) for k, v in macro_from_confusion(cm, cm.sum(1) > 0).items()}
        {'precision_macro': 0.8333, 'recall_macro': 0.75, 'f1_macro': 0.7333}
    """
    cm = cm.double()
    tp, predicted, actual = cm.diagonal(), cm.sum(dim=0), cm.sum(dim=1)
    precision = torch.where(predicted > 0, tp / predicted.clamp_min(1), 0.0)
    recall = torch.where(actual > 0, tp / actual.clamp_min(1), 0.0)
    f1 = torch.where(predicted + actual > 0, 2 * tp / (predicted + actual).clamp_min(1), 0.0)
    return {k: macro_over_present(v, present).float()
            for k, v in (("precision_macro", precision), ("recall_macro", recall), ("f1_macro", f1))}


def mean_nll(probs: torch.Tensor, target: torch.Tensor) -> float:
    """Mean negative log-likelihood of the true classes (plain, without label smoothing): what model selection
    and late-fusion weighting compare.

    Shape:
        - probs: :math:`(N, C)`; target: :math:`(N,)`.

    Examples:
        >>> round(mean_nll(torch.tensor([[0.5, 0.5], [0.25, 0.75]]), torch.tensor([0, 1])), 4)
        0.4904
    """
    p = probs.double().gather(1, target.long().view(-1, 1)).clamp_min(1e-12)
    return float(-p.log().mean())
