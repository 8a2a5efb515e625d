"""Classification heads: small MLPs on top of feature vectors."""

from __future__ import annotations

from collections.abc import Sequence

import torch
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


BALANCE = ("none", "block")


class FusionHead(nn.Module):
    """Named feature blocks -> logits: per block z-score [-> block PCA] [-> block weight] -> concatenate
    [-> PCA] -> :class:`MLPHead`.

    * ``balance="none"`` (the paper): the z-scored blocks are concatenated as they are, so a block's share of the
      fused variance is its number of dimensions (26,244 HOG values outweigh 1,280 GAP values 20 to 1).
      ``"block"``: each block is scaled by ``1 / sqrt(its total training variance)`` (``1 / sqrt(dim)`` for a
      z-scored block), so every block enters the fusion with the same total variance.
    * ``per_block_pca``: each z-scored block is first reduced by its own PCA (a count, or a variance fraction),
      before balancing and concatenation.
    * ``n_components``: the PCA of the concatenation (a count or a variance fraction); ``None`` skips it.

    ``block_dims`` fixes the blocks and their order. Every fixed layer is fitted once from training blocks with
    :meth:`fit`, which also builds the MLP (its input size is the fused width). With ``fitted_components`` (the
    fused width, as when a checkpoint is loaded) everything is built at once; fitted shapes come from the state
    dict.
    """

    def __init__(
        self,
        block_dims: dict[str, int],
        num_classes: int,
        n_components: int | float | None = 0.95,
        fitted_components: int | None = None,
        hidden: Sequence[int] = (512, 256),
        dropout: Sequence[float] | float = (0.5, 0.3),
        input_dropout: float = 0.5,
        batchnorm: bool = True,
        balance: str = "none",
        per_block_pca: int | float | None = None,
    ) -> None:
        from fer_lightning.layers import BlockScale, PCAProjection, ZScore

        super().__init__()
        if balance not in BALANCE:
            raise FERError(f"model.fusion.balance={balance} is unknown; choose one of: {', '.join(BALANCE)}")
        self.names = list(block_dims)
        self.num_classes = num_classes
        self.balance = balance
        self.mlp_kwargs = {"hidden": list(hidden), "dropout": dropout if isinstance(dropout, int | float)
                           else list(dropout), "input_dropout": input_dropout, "batchnorm": batchnorm}
        self.zscore = nn.ModuleDict({name: ZScore(dim) for name, dim in block_dims.items()})
        self.block_pca = (None if per_block_pca is None else
                          nn.ModuleDict({name: PCAProjection(dim, per_block_pca) for name, dim in block_dims.items()}))
        self.scale = nn.ModuleDict({name: BlockScale() for name in block_dims}) if balance == "block" else None
        width = sum(block_dims.values()) if per_block_pca is None else 0
        self.pca = None if n_components is None else PCAProjection(width, n_components, fitted_components)
        self.mlp = MLPHead(fitted_components, num_classes, **self.mlp_kwargs) if fitted_components else None

    @property
    def fitted(self) -> bool:
        return self.mlp is not None and all(bool(z.fitted) for z in self.zscore.values())

    def _block(self, name: str, x: torch.Tensor) -> torch.Tensor:
        x = self.zscore[name](x)
        if self.block_pca is not None:
            x = self.block_pca[name](x)
        if self.scale is not None:
            x = self.scale[name](x)
        return x

    def reduce(self, blocks: dict[str, torch.Tensor]) -> torch.Tensor:
        """The fused features the MLP sees ``(B, width)``: normalised, reduced, balanced, concatenated, PCA."""
        x = torch.cat([self._block(n, blocks[n]) for n in self.names], dim=1)
        return x if self.pca is None else self.pca(x)

    def fit(self, blocks: dict[str, torch.Tensor]) -> int:
        """Fit every fixed layer on training blocks, in the order they are applied, and build the MLP; returns
        the fused width."""
        device = next(iter(self.zscore.values())).mean.device
        parts = []
        for n in self.names:
            x = blocks[n].to(device)
            x = self.zscore[n].fit(x)(x)
            if self.block_pca is not None:
                x = self.block_pca[n].fit(x)(x)
            if self.scale is not None:
                x = self.scale[n].fit(x)(x)
            parts.append(x)
        fused = torch.cat(parts, dim=1)
        if self.pca is not None:
            if self.block_pca is not None:  # its input width is known only now
                self.pca.resize_input(fused.shape[1])
            fused = self.pca.fit(fused)(fused)
        width = fused.shape[1]
        self.mlp = MLPHead(width, self.num_classes, **self.mlp_kwargs).to(device)
        return width

    def forward(self, blocks: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.mlp(self.reduce(blocks))
