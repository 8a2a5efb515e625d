"""Early fusion, the project's subject: named feature blocks (HOG, LBP, the CNN's GAP features) normalised, reduced,
balanced and concatenated by fixed layers fitted on the training split, then classified by an MLP.

``model.fusion.balance`` chooses how blocks are weighted (:data:`BALANCES`: a name -> the fitted per-block scale,
or None for the paper's plain concatenation); a new balance is one :class:`~fer_lightning.models.components.fitted`
layer registered here. Late fusion (the probabilities of trained models) is :mod:`fer_lightning.models.late_fusion`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from torch import nn

from fer_lightning.models.components.fitted import BlockScale, PCAProjection, ZScore
from fer_lightning.models.components.heads import MLPHead
from fer_lightning.models.components.metrics import mean_nll
from fer_lightning.runtime.registry import Registry

# model.fusion.balance: none (the paper: blocks enter in proportion to their widths) | block (equal total variance)
BALANCES: Registry[type[BlockScale] | None] = Registry("model.fusion.balance", {"none": None, "block": BlockScale})




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

    Args:
        block_dims: ``{block: width}`` in fusion order (e.g. ``{"deep": 1280, "hog@224": 26244, "lbp@224": 490}``).
        num_classes: the number of classes.
        n_components, fitted_components, balance, per_block_pca: see above.
        hidden, dropout, input_dropout, batchnorm: the :class:`MLPHead` on the fused features.

    Shape:
        - Input: ``{block: (B, width)}``.
        - Output: :math:`(B, num\\_classes)` logits; :meth:`reduce`: :math:`(B, k)` fused features.

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> blocks = {"hog": torch.randn(40, 30, generator=g), "lbp": torch.randn(40, 5, generator=g)}
        >>> head = FusionHead({"hog": 30, "lbp": 5}, num_classes=3, n_components=8, balance="block")
        >>> head.fit(blocks)  # z-score, balance, PCA fitted; the MLP built on the fused width
        8
        >>> head.eval()(blocks).shape
        torch.Size([40, 3])
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
        super().__init__()
        scale = BALANCES.get(balance)
        self.names = list(block_dims)
        self.num_classes = num_classes
        self.balance = balance
        self.mlp_kwargs = {"hidden": list(hidden), "dropout": dropout if isinstance(dropout, int | float)
                           else list(dropout), "input_dropout": input_dropout, "batchnorm": batchnorm}
        self.zscore = nn.ModuleDict({name: ZScore(dim) for name, dim in block_dims.items()})
        self.block_pca = (None if per_block_pca is None else
                          nn.ModuleDict({name: PCAProjection(dim, per_block_pca) for name, dim in block_dims.items()}))
        self.scale = None if scale is None else nn.ModuleDict({name: scale() for name in block_dims})
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


# ----------------------------------------------------------------------------------------------- late fusion
class LateFusionWeights(ABC):
    """How late fusion weights its members' class probabilities, from their predictions on validation images.

    ``uses_validation``: whether the weights depend on the validation predictions at all (when not, the members
    are not run on them).
    """

    uses_validation = True

    @abstractmethod
    def __call__(self, probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``probs`` :math:`(M, N, C)` of the M members on N validation images, ``targets`` :math:`(N,)` ->
        the weights :math:`(M,)`, summing to 1."""


class EqualWeights(LateFusionWeights):
    """``model.weights=mean``: every member weighs ``1 / M``.

    Examples:
        >>> EqualWeights()(torch.zeros(4, 0, 7), torch.zeros(0))
        tensor([0.2500, 0.2500, 0.2500, 0.2500])
    """

    uses_validation = False

    def __call__(self, probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return torch.full((len(probs),), 1.0 / len(probs))


class LikelihoodWeights(LateFusionWeights):
    """``model.weights=loglik``: ``w_m`` proportional to ``exp(-NLL_m)``, member m's per-image geometric-mean
    likelihood of the true class on the validation images.

    Examples:
        >>> probs = torch.tensor([[[0.9, 0.1]], [[0.5, 0.5]]])  # two members, one image of class 0
        >>> LikelihoodWeights()(probs, torch.tensor([0]))
        tensor([0.6429, 0.3571], dtype=torch.float64)
    """

    def __call__(self, probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        nll = torch.tensor([mean_nll(p, targets) for p in probs], dtype=torch.float64)
        return torch.softmax(-nll, 0)


# model.weights: how the members of a late fusion are weighted
WEIGHTINGS: Registry[type[LateFusionWeights]] = Registry("model.weights", {"mean": EqualWeights,
                                                                           "loglik": LikelihoodWeights})
