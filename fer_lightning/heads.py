"""Classification heads: small MLPs on top of feature vectors."""

from __future__ import annotations

from collections.abc import Sequence

import torch
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


class FusionHead(nn.Module):
    """Named feature blocks -> logits: z-score each block -> concatenate -> PCA -> :class:`MLPHead`.

    ``block_dims`` fixes the blocks and their order. The z-score and PCA layers are fitted once from training
    blocks with :meth:`fit`, which also builds the MLP (its input size is the number of PCA components). With
    ``fitted_components`` given (as when a checkpoint is loaded) everything is built at once.
    """

    def __init__(
        self,
        block_dims: dict[str, int],
        num_classes: int,
        n_components: int | float = 0.95,
        fitted_components: int | None = None,
        hidden: Sequence[int] = (512, 256),
        dropout: Sequence[float] = (0.5, 0.3),
        input_dropout: float = 0.5,
        batchnorm: bool = True,
    ) -> None:
        from fer_lightning.layers import PCAProjection, ZScore

        super().__init__()
        self.names = list(block_dims)
        self.num_classes = num_classes
        self.mlp_kwargs = {"hidden": list(hidden), "dropout": list(dropout), "input_dropout": input_dropout,
                           "batchnorm": batchnorm}
        self.zscore = nn.ModuleDict({name: ZScore(dim) for name, dim in block_dims.items()})
        self.pca = PCAProjection(sum(block_dims.values()), n_components, fitted_components)
        self.mlp = MLPHead(fitted_components, num_classes, **self.mlp_kwargs) if fitted_components else None

    @property
    def fitted(self) -> bool:
        return self.mlp is not None and bool(self.pca.fitted)

    def reduce(self, blocks: dict[str, torch.Tensor]) -> torch.Tensor:
        """z-scored, concatenated and PCA-projected features ``(B, k)``."""
        return self.pca(torch.cat([self.zscore[n](blocks[n]) for n in self.names], dim=1))

    def fit(self, blocks: dict[str, torch.Tensor]) -> int:
        """Fit the z-score and PCA layers on training blocks, build the MLP; returns the number of components."""
        for n in self.names:
            self.zscore[n].fit(blocks[n])
        normalised = torch.cat([self.zscore[n](blocks[n].to(self.zscore[n].mean.device)) for n in self.names], dim=1)
        self.pca.fit(normalised)
        self.mlp = MLPHead(self.pca.out_features, self.num_classes, **self.mlp_kwargs).to(self.pca.mean.device)
        return self.pca.out_features

    def forward(self, blocks: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.mlp(self.reduce(blocks))
