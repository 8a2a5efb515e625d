"""Classification heads: small MLPs on top of feature vectors."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from fer_lightning.errors import FERError


class MLPHead(nn.Sequential):
    """Feature vectors -> class logits: ``[Dropout(input_dropout)] -> [BatchNorm1d] -> (Linear -> ReLU -> Dropout)
    per hidden size -> Linear``.

    The paper's deep-only head is ``MLPHead(1280, 7, hidden=[256], dropout=[0.5])``; its handcrafted and fusion
    head is ``MLPHead(d, 7, hidden=[512, 256], dropout=[0.5, 0.3], input_dropout=0.5, batchnorm=True)``. With
    ``hidden=[]`` it is a linear (multinomial logistic regression) head; ``dropout`` is then not used.

    Args:
        in_features: the feature width.
        num_classes: the number of classes.
        hidden: the hidden layers' widths.
        dropout: one rate per hidden layer (or one rate for all).
        input_dropout: dropout on the input features.
        batchnorm: a BatchNorm1d on the (dropped-out) input.

    Shape:
        - Input: :math:`(B, in\\_features)`.
        - Output: :math:`(B, num\\_classes)` logits.

    Examples:
        >>> import torch
        >>> head = MLPHead(1280, 7, hidden=[256], dropout=[0.5])
        >>> head(torch.zeros(4, 1280)).shape
        torch.Size([4, 7])
        >>> [type(m).__name__ for m in MLPHead(10, 3, hidden=[])]
        ['Linear']
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden: Sequence[int] = (256,),
        dropout: Sequence[float] | float = (0.5,),
        input_dropout: float = 0.0,
        batchnorm: bool = False,
    ) -> None:
        hidden = [int(h) for h in hidden]
        dropout = [float(dropout)] * len(hidden) if isinstance(dropout, int | float) else [float(p) for p in dropout]
        if hidden and len(hidden) != len(dropout):
            raise FERError(
                f"head: {len(hidden)} hidden sizes {hidden} but {len(dropout)} dropout rates {dropout}; give one rate "
                "per hidden layer (model.head.dropout) or a single rate"
            )
        for p in [*dropout, input_dropout]:
            if not 0.0 <= p < 1.0:
                raise FERError(f"head: dropout rate {p} is not in [0, 1)")
        layers: list[nn.Module] = []
        if input_dropout > 0:
            layers.append(nn.Dropout(input_dropout))
        if batchnorm:
            layers.append(nn.BatchNorm1d(in_features))
        width = in_features
        for h, p in zip(hidden, dropout[: len(hidden)], strict=True):
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True), nn.Dropout(p)]
            width = h
        layers.append(nn.Linear(width, num_classes))
        super().__init__(*layers)


