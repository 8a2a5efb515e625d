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

    ``uses_validation``: whether the weights depend on the validation predictions at all (the members run on
    them anyway: the fit records the fused accuracy there). ``calibrates``: whether each member's probabilities
    are first sharpened or softened by a temperature fitted on those predictions (:meth:`temperatures`, then
    :func:`calibrate`).
    """

    uses_validation = True
    calibrates = False
    crossfits = False  # fitted on out-of-fold predictions of the training images (model.fit_on=crossfit)

    @abstractmethod
    def __call__(self, probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``probs`` :math:`(M, N, C)` of the M members on N validation images, ``targets`` :math:`(N,)` ->
        the weights :math:`(M,)`, summing to 1."""

    def temperatures(self, probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The members' temperatures :math:`(M,)` (all 1: no calibration)."""
        return torch.ones(len(probs), dtype=torch.float64)


def calibrate(probs: torch.Tensor, temperatures: torch.Tensor) -> torch.Tensor:
    """Temperature scaling of probabilities: ``softmax(log p_m / T_m)`` for each member m.

    Shape:
        - probs: :math:`(M, ..., C)`; temperatures: :math:`(M,)`, positive.
        - Output: like ``probs``.

    Examples:
        >>> p = torch.tensor([[[0.8, 0.2]], [[0.6, 0.4]]])
        >>> calibrate(p, torch.tensor([1.0, 1e6]))  # T=1 leaves p; a huge T flattens it
        tensor([[[0.8000, 0.2000]],
        <BLANKLINE>
                [[0.5000, 0.5000]]])
    """
    log_p = probs.clamp_min(torch.finfo(probs.dtype).tiny).log()
    t = temperatures.to(log_p.dtype).reshape(-1, *([1] * (probs.dim() - 1)))
    return (log_p / t).softmax(-1)


def fit_temperature(probs: torch.Tensor, targets: torch.Tensor, steps: int = 20) -> float:
    """The temperature ``T > 0`` that minimises the mean negative log-likelihood of ``softmax(log p / T)`` on
    held-out predictions (Guo et al. 2017), by L-BFGS on ``log T``; 1 when there are none.

    Shape:
        - probs: :math:`(N, C)`; targets: :math:`(N,)`.

    Examples:
        >>> p = torch.tensor([[0.6, 0.4], [0.6, 0.4], [0.6, 0.4], [0.4, 0.6]])  # right 3 times in 4, at 0.6
        >>> round(fit_temperature(p, torch.tensor([0, 0, 0, 0])), 3)  # sharpened until p(right) = 0.75
        0.369
    """
    if len(targets) == 0:
        return 1.0
    log_p = probs.double().clamp_min(torch.finfo(torch.float64).tiny).log()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(log_p / log_t.exp(), targets.long())
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return float(log_t.detach().clamp(-6.0, 6.0).exp())


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


class ShrunkWeights(LikelihoodWeights):
    """``model.weights=shrunk``: the ``loglik`` weights shrunk toward equal weights,
    ``w = s / M + (1 - s) w_loglik`` with ``shrinkage`` s in [0, 1] (1: ``mean``, 0: ``loglik``; default 0.5). The
    members' validation predictions are optimistic (each member chose its best epoch on them), so their likelihood
    is trusted only half.

    Examples:
        >>> probs = torch.tensor([[[0.9, 0.1]], [[0.5, 0.5]]])
        >>> ShrunkWeights()(probs, torch.tensor([0]))
        tensor([0.5714, 0.4286], dtype=torch.float64)
        >>> ShrunkWeights(shrinkage=1.0)(probs, torch.tensor([0]))
        tensor([0.5000, 0.5000], dtype=torch.float64)
    """

    def __init__(self, shrinkage: float = 0.5) -> None:
        if not 0.0 <= shrinkage <= 1.0:
            raise ValueError(f"shrinkage={shrinkage}: a number between 0 and 1")
        self.shrinkage = float(shrinkage)

    def __call__(self, probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        w = super().__call__(probs, targets)
        return self.shrinkage / len(probs) + (1.0 - self.shrinkage) * w


class CalibratedMean(LateFusionWeights):
    """``model.weights=calibrated``: each member's probabilities temperature-scaled (:func:`fit_temperature` on
    the validation images), then their plain mean (equal weights): no member is trusted more than another, but an
    over- or under-confident one no longer dominates the mean by its confidence alone.

    Examples:
        >>> probs = torch.tensor([[[0.6, 0.4], [0.4, 0.6]], [[0.99, 0.01], [0.99, 0.01]]])
        >>> w = CalibratedMean()
        >>> w(probs, torch.tensor([0, 1]))
        tensor([0.5000, 0.5000])
        >>> t = w.temperatures(probs, torch.tensor([0, 1]))  # the member wrong with confidence is flattened
        >>> bool(t[0] < 1 < t[1])
        True
    """

    calibrates = True

    def __call__(self, probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return torch.full((len(probs),), 1.0 / len(probs))

    def temperatures(self, probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return torch.tensor([fit_temperature(p, targets) for p in probs], dtype=torch.float64)


class CrossfitWeights(LikelihoodWeights):
    """``model.weights=crossfit``: the ``loglik`` weights fitted on out-of-fold predictions of the training images
    (``model.fit_on=crossfit``): each member is trained again on k inner folds of the training split, and each of
    those runs predicts the training images it did not train on. No member was selected on those predictions, so
    a member that merely fits (or memorises) its own validation or training images gains no weight from it.

    Examples:
        >>> probs = torch.tensor([[[0.9, 0.1]], [[0.5, 0.5]]])  # out-of-fold: like loglik, on other predictions
        >>> CrossfitWeights()(probs, torch.tensor([0]))
        tensor([0.6429, 0.3571], dtype=torch.float64)
    """

    crossfits = True


# model.weights: how the members of a late fusion are weighted (docs: "Fusion weights")
WEIGHTINGS: Registry[type[LateFusionWeights]] = Registry("model.weights", {
    "mean": EqualWeights, "loglik": LikelihoodWeights, "shrunk": ShrunkWeights, "calibrated": CalibratedMean,
    "crossfit": CrossfitWeights})
