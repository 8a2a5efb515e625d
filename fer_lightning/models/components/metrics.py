"""Classification metrics with torchmetrics: they live on the module's device and are computed at epoch end."""

from __future__ import annotations

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

    Args:
        class_names: the classes, in the models' output order.
        sync_on_compute: sum the states of every process when computing (False when the updates already hold every
            process's outputs).

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
    """

    def __init__(self, class_names: Sequence[str], sync_on_compute: bool = True) -> None:
        super().__init__()
        self.class_names = list(class_names)
        n = len(self.class_names)
        sync = {"sync_on_compute": sync_on_compute}  # False: the updates already hold every process's data
        self.scalars = MetricCollection(
            {
                "acc": MulticlassAccuracy(n, average="micro", **sync),
                "precision_macro": MulticlassPrecision(n, average="macro", **sync),
                "recall_macro": MulticlassRecall(n, average="macro", **sync),
                "f1_macro": MulticlassF1Score(n, average="macro", **sync),
                "auroc": MulticlassAUROC(n, average="macro", **sync),
            }
        )
        self.per_class = MulticlassAccuracy(n, average=None, **sync)
        self.confmat = MulticlassConfusionMatrix(n, **sync)

    def update(self, probs: torch.Tensor, target: torch.Tensor) -> None:
        self.scalars.update(probs, target)
        self.per_class.update(probs, target)
        self.confmat.update(probs, target)

    def compute(self) -> dict[str, torch.Tensor]:
        out = dict(self.scalars.compute())
        for name, value in zip(self.class_names, self.per_class.compute(), strict=True):
            out[f"acc_{name}"] = value
        return out

    def confusion_matrix(self) -> torch.Tensor:
        return self.confmat.compute()

    def reset(self) -> None:
        self.scalars.reset()
        self.per_class.reset()
        self.confmat.reset()


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
