"""Classification heads: small MLPs on top of feature vectors."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


class MLPHead(nn.Sequential):
    """``(B, in_features)`` -> ``(B, num_classes)`` logits.

    ``[Dropout(input_dropout)] -> [BatchNorm1d] -> (Linear -> ReLU -> Dropout) per hidden size -> Linear``.
    The paper's deep-only head is ``MLPHead(1280, 7, hidden=[256], dropout=[0.5])``; its handcrafted and
    fusion head is ``MLPHead(d, 7, hidden=[512, 256], dropout=[0.5, 0.3], input_dropout=0.5, batchnorm=True)``.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden: Sequence[int] = (256,),
        dropout: Sequence[float] = (0.5,),
        input_dropout: float = 0.0,
        batchnorm: bool = False,
    ) -> None:
        if len(hidden) != len(dropout):
            raise ValueError(f"head: {len(hidden)} hidden sizes but {len(dropout)} dropout rates; give one rate each")
        layers: list[nn.Module] = []
        if input_dropout > 0:
            layers.append(nn.Dropout(input_dropout))
        if batchnorm:
            layers.append(nn.BatchNorm1d(in_features))
        width = in_features
        for h, p in zip(hidden, dropout, strict=True):
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True), nn.Dropout(p)]
            width = h
        layers.append(nn.Linear(width, num_classes))
        super().__init__(*layers)
