"""Fixed layers fitted from training features: z-score normalisation and PCA.

Both hold their statistics as buffers (saved in checkpoints, so loading needs no data), are never trained, and
are fitted once from (a sample of) the train split, in float64, and compute in float32 even under mixed-precision
autocast. Shapes that depend on the fit (the number of PCA components) are restored from the checkpoint's buffers
when a state dict is loaded.

At scale: statistics are accumulated ``CHUNK_ROWS`` rows at a time (no float64 copy of a large matrix), and the
PCA is exact (an SVD) while the smaller side of the matrix is at most ``PCA_EXACT_MAX``, randomized above
(``torch.pca_lowrank``, seeded, with oversampling and power iterations; the total variance is exact, so explained
variance ratios mean what sklearn's mean).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from fer_lightning.errors import FERError
from fer_lightning.runs.checkpoints import FITTED_KEY, tensors_digest

log = logging.getLogger(__name__)
CHUNK_ROWS = 4096
PCA_EXACT_MAX = 4096  # exact SVD while min(n_samples, n_features) <= this; randomized (torch.pca_lowrank) above


def _column_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Column means and population standard deviations in float64: at once up to ``CHUNK_ROWS`` rows, else in
    two passes over chunks of rows."""
    if len(x) <= CHUNK_ROWS:
        x64 = x.to(torch.float64)
        return x64.mean(0), x64.std(0, correction=0)
    n = len(x)
    mean = sum(x[i : i + CHUNK_ROWS].to(torch.float64).sum(0) for i in range(0, n, CHUNK_ROWS)) / n
    sq = sum((x[i : i + CHUNK_ROWS].to(torch.float64) - mean).square_().sum(0) for i in range(0, n, CHUNK_ROWS))
    return mean, (sq / n).sqrt()


class _Fitted(nn.Module):
    """Buffers that take the shape of whatever state dict is loaded into them."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("fitted", torch.tensor(False))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name, buf in list(self._buffers.items()):
            incoming = state_dict.get(prefix + name)
            if buf is not None and incoming is not None and incoming.shape != buf.shape:
                self._buffers[name] = torch.empty_like(incoming, device=buf.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _check_fitted(self) -> None:
        if torch.compiler.is_exporting():  # a buffer's value cannot steer a graph; export runs the model eagerly first
            return
        if not bool(self.fitted):
            raise RuntimeError(f"{type(self).__name__} is used before it was fitted on training features")


class ZScore(_Fitted):
    """``(x - mean) / std`` per feature, fitted once on training features, like
    ``sklearn.preprocessing.StandardScaler`` (population std; constant features are divided by 1).

    Args:
        num_features: the width ``D`` of the features.

    Shape:
        - Input: :math:`(B, D)`.
        - Output: :math:`(B, D)` float32 (float64 statistics are applied in float32 or wider, never under autocast).

    Examples:
        >>> from sklearn.preprocessing import StandardScaler
        >>> x = torch.randn(50, 4, generator=torch.Generator().manual_seed(0))
        >>> z = ZScore(4).fit(x)
        >>> reference = StandardScaler().fit_transform(x.double().numpy())
        >>> bool(torch.allclose(z(x).double(), torch.from_numpy(reference), atol=1e-5))
        True
    """

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(num_features))
        self.register_buffer("std", torch.ones(num_features))

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> ZScore:
        mean, std = _column_moments(x.detach())
        std = torch.where(std < 10 * torch.finfo(torch.float64).eps, torch.ones_like(std), std)
        self.mean = mean.to(self.mean.dtype).to(self.mean.device)
        self.std = std.to(self.std.dtype).to(self.std.device)
        self.fitted.fill_(True)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_fitted()
        with torch.autocast(x.device.type, enabled=False):  # fitted statistics apply in float32 (or float64), always
            return (x.to(torch.promote_types(self.mean.dtype, torch.float32)) - self.mean) / self.std


class PCAProjection(_Fitted):
    """A fixed linear layer ``(x - mean) @ components.T``, fitted once on training features like
    ``sklearn.decomposition.PCA(n_components)`` (same sign convention: each component's largest-magnitude entry is
    positive); exact (an SVD) up to ``PCA_EXACT_MAX`` samples or features, randomized above.

    Args:
        num_features: the width ``D`` of the features.
        n_components: an int (number of components, at most ``n_train - 1``) or a float in ``(0, 1)`` (the smallest
            number of components whose explained variance reaches that fraction).
        fitted_components: ``k`` when the layer is built to load a fitted state dict.

    Shape:
        - Input: :math:`(B, D)`.
        - Output: :math:`(B, k)` float32.

    Examples:
        >>> from sklearn.decomposition import PCA
        >>> x = torch.randn(40, 6, generator=torch.Generator().manual_seed(0)) @ torch.diag(torch.arange(1.0, 7.0))
        >>> pca = PCAProjection(6, 3).fit(x)
        >>> pca(x).shape
        torch.Size([40, 3])
        >>> reference = PCA(3).fit(x.double().numpy()).transform(x.double().numpy())
        >>> bool(torch.allclose(pca(x).double(), torch.from_numpy(reference), atol=1e-4))
        True
    """

    def __init__(self, num_features: int, n_components: int | float, fitted_components: int | None = None) -> None:
        super().__init__()
        self.n_components = n_components
        k = fitted_components or 0
        self.register_buffer("mean", torch.zeros(num_features))
        self.register_buffer("components", torch.zeros(k, num_features))
        self.register_buffer("explained_variance_ratio", torch.zeros(k))

    @property
    def out_features(self) -> int:
        return self.components.shape[0]

    def resize_input(self, num_features: int) -> None:
        """Set the input width before fitting (when it is known only then, e.g. after per-block PCAs)."""
        self.mean = torch.zeros(num_features, dtype=self.mean.dtype, device=self.mean.device)
        self.components = torch.zeros(0, num_features, dtype=self.components.dtype, device=self.components.device)

    def _count(self, ratio: torch.Tensor, n: int) -> int:
        nc = self.n_components
        if isinstance(nc, float) and not float(nc).is_integer():
            if not 0.0 < nc < 1.0:
                raise FERError(f"pca.n_components={nc}: give a number of components or a variance fraction in (0, 1)")
            cumulative = torch.cumsum(ratio, 0)
            return int(torch.searchsorted(cumulative, torch.tensor(nc, dtype=cumulative.dtype), right=True)) + 1
        k = int(nc)
        if not 1 <= k <= n - 1:
            raise FERError(
                f"pca.n_components={k} is more than the {n} training samples allow (at most n_train - 1 = {n - 1}); "
                f"lower it or give a variance fraction such as 0.95"
            )
        return k

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> PCAProjection:
        x = x.detach()
        n, d = x.shape
        if n < 2:
            raise FERError(f"PCA needs at least 2 training samples, got {n}")
        if min(n, d) <= PCA_EXACT_MAX:
            x64 = x.to(torch.float64)
            mean = x64.mean(0)
            _, s, vt = torch.linalg.svd(x64 - mean, full_matrices=False)
            variance = s.square() / (n - 1)
            ratio = variance / variance.sum()
            k = min(self._count(ratio, n), n - 1)
        else:
            mean, vt, ratio, k = self._randomized(x)
        vt = vt[:k]
        signs = torch.sign(vt.gather(1, vt.abs().argmax(1, keepdim=True)))  # sklearn's svd_flip(u_based_decision=False)
        vt = vt * signs
        device, dtype = self.mean.device, self.mean.dtype
        self.mean = mean.to(device, dtype)
        self.components = vt.to(device, dtype).contiguous()
        self.explained_variance_ratio = ratio[:k].to(device, dtype)
        self.fitted.fill_(True)
        return self

    def _randomized(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """Top components by ``torch.pca_lowrank`` (seeded; the global RNG is left alone), asking for more until
        they explain the requested variance fraction."""
        n, d = x.shape
        mean, std = _column_moments(x)
        total = std.square().sum() * n / (n - 1)
        nc, limit = self.n_components, min(n, d) - 1
        fraction = isinstance(nc, float) and not float(nc).is_integer()
        q = min(limit, 256 if fraction else self._count(torch.ones(1), n))
        while True:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                _, s, v = torch.pca_lowrank(x.float(), q=min(limit, q + 16), center=True, niter=4)
            ratio = (s.to(torch.float64).square() / (n - 1)) / total
            if not fraction or float(ratio.sum()) >= nc or q >= limit:
                k = min(self._count(ratio, n), len(ratio)) if fraction else q
                log.info("PCA: randomized on %d x %d, %d components (%.4f of the variance)", n, d, k,
                         float(ratio[:k].sum()))
                return mean, v.to(torch.float64).T, ratio, k
            q = min(limit, 2 * q)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_fitted()
        with torch.autocast(x.device.type, enabled=False):  # a projection of ~27k features: float32, always
            return F.linear(x.to(torch.promote_types(self.mean.dtype, torch.float32)) - self.mean, self.components)


class BlockScale(_Fitted):
    """Multiplies a feature block by ``1 / sqrt(total variance)`` of its training features, so that every block of a
    fusion enters it with total variance 1 (for a z-scored block of ``D`` non-constant features: ``1 / sqrt(D)``).

    Shape:
        - Input: :math:`(B, D)`.
        - Output: :math:`(B, D)`.

    Examples:
        >>> x = torch.randn(30, 16, generator=torch.Generator().manual_seed(0))
        >>> z = ZScore(16).fit(x)(x)  # 16 columns of variance 1
        >>> round(float(BlockScale().fit(z).factor), 4)  # 1 / sqrt(16)
        0.25
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("factor", torch.tensor(1.0))

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> BlockScale:
        total = x.detach().to(torch.float64).var(0, correction=0).sum()
        self.factor = (1.0 / total.clamp_min(1e-12).sqrt()).to(self.factor.device, self.factor.dtype)
        self.fitted.fill_(True)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_fitted()
        return x * self.factor


# ------------------------------------------------------------------------------------- fitted on every rank
def _fitted_modules(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if isinstance(m, _Fitted)}


def fitted_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every fitted statistic (z-score, PCA, block scale) in ``model``, under its ``model.state_dict()`` key."""
    return {f"{name}.{key}": value for name, module in _fitted_modules(model).items()
            for key, value in module.state_dict().items()}


def fitted_digest(model: nn.Module) -> str:
    """A digest of every fitted statistic (z-score, PCA, block scale) in ``model``
    (:func:`~fer_lightning.runs.checkpoints.tensors_digest`)."""
    return tensors_digest(fitted_state(model))


def move_fitted(model: nn.Module, checkpoint: dict[str, Any]) -> None:
    """Move ``model``'s fitted statistics out of ``checkpoint["state_dict"]`` to ``checkpoint[FITTED_KEY]``, where
    :class:`~fer_lightning.runs.checkpoints.CheckedCheckpointIO` writes them once beside the checkpoint. Their digest
    is computed once for as long as no buffer changes (kept with the model, keyed on the buffers' storage and
    version counters)."""
    state = checkpoint.get("state_dict", {})
    tensors = {k: state.pop(k) for k in fitted_state(model) if k in state}
    if not tensors:
        return
    key = tuple((k, t.data_ptr(), t._version, tuple(t.shape)) for k, t in sorted(tensors.items()))
    cached = model.__dict__.get("_fitted_digest")
    if cached is None or cached[0] != key:  # the tensors are kept with it: their storage is never reused meanwhile
        cached = (key, tensors_digest(tensors), tensors)
        model.__dict__["_fitted_digest"] = cached
    checkpoint[FITTED_KEY] = {"digest": cached[1], "tensors": tensors}


def agree_on_fitted(model: nn.Module, strategy: Any) -> None:
    """After every process fitted ``model``'s z-score/PCA layers on the same training features: check that they
    hold the same statistics (digests compared), and where they do not, give every process rank 0's."""
    if strategy is None or strategy.world_size < 2:
        return
    digest = fitted_digest(model)
    digests: list[Any] = [None] * strategy.world_size
    dist.all_gather_object(digests, digest)
    modules = _fitted_modules(model)
    if len(set(digests)) == 1:
        log.info("z-score/PCA statistics identical on all %d processes (digest %s)", len(digests), digest)
        return
    state = {name: {k: v.cpu() for k, v in m.state_dict().items()} for name, m in modules.items()}
    state = strategy.broadcast(state, src=0)
    before = {name: tuple(b.shape) for name, m in modules.items() for b in m.buffers()}
    for name, m in modules.items():
        m.load_state_dict(state[name])
    if {name: tuple(b.shape) for name, m in modules.items() for b in m.buffers()} != before:
        raise FERError("the processes chose different numbers of PCA components from the same training features; "
                       "give model.pca.n_components as a number of components instead of a variance fraction")
    log.warning("z-score/PCA statistics differed between processes (digests %s); all use rank 0's",
                ", ".join(map(str, digests)))
