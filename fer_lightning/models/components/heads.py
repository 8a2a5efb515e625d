"""Classification heads: small MLPs on top of feature vectors."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from fer_lightning.errors import FERError


class MLPHead(nn.Sequential):
    """``(B, in_features)`` -> ``(B, num_classes)`` logits.

    ``[Dropout(input_dropout)] -> [BatchNorm1d] -> (Linear -> ReLU -> Dropout) per hidden size -> Linear``.
    The paper's deep-only head is ``MLPHead(1280, 7, hidden=[256], dropout=[0.5])``; its handcrafted and
    fusion head is ``MLPHead(d, 7, hidden=[512, 256], dropout=[0.5, 0.3], input_dropout=0.5, batchnorm=True)``.
    With ``hidden=[]`` it is a linear (multinomial logistic regression) head; ``dropout`` is then not used.
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


