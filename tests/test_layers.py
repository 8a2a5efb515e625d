"""Fixed z-score and PCA layers against scikit-learn; the fusion head built on them."""

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler

from fer_lightning.errors import FERError
from fer_lightning.models.components.fitted import PCAProjection, ZScore
from fer_lightning.models.components.fusion import FusionHead


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    latent = rng.normal(size=(120, 12)) * np.linspace(5, 0.5, 12)
    train = latent @ rng.normal(size=(12, 300)) + rng.normal(scale=0.1, size=(120, 300)) + 3.0
    other = rng.normal(size=(40, 300)) * 2
    train[:, 7] = 1.5  # a constant feature
    return train, other


def test_zscore_equals_standard_scaler(data):
    train, other = data
    z = ZScore(300).fit(torch.from_numpy(train))
    ref = StandardScaler().fit(train)
    np.testing.assert_allclose(z(torch.from_numpy(other).float()).numpy(), ref.transform(other), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(z.double()(torch.from_numpy(other)).numpy(), ref.transform(other), atol=1e-6)


@pytest.mark.parametrize("n", [5, 30, 119, 0.9, 0.99])
def test_pca_equals_sklearn(data, n):
    train, other = data
    ref = PCA(n).fit(train)
    layer = PCAProjection(300, n).double().fit(torch.from_numpy(train))
    assert layer.out_features == ref.n_components_
    ours = layer(torch.from_numpy(other)).numpy()
    np.testing.assert_allclose(ours, ref.transform(other), atol=1e-4)
    np.testing.assert_allclose(layer.explained_variance_ratio.numpy(), ref.explained_variance_ratio_, atol=1e-8)
    # float32, as used in training: same within float32 precision
    f32 = PCAProjection(300, n).fit(torch.from_numpy(train))
    np.testing.assert_allclose(f32(torch.from_numpy(other).float()).numpy(), ref.transform(other), rtol=1e-4, atol=1e-3)


def test_pca_is_a_fixed_linear_layer(data):
    train, _ = data
    layer = PCAProjection(300, 10).fit(torch.from_numpy(train))
    assert list(layer.parameters()) == []  # not trained
    lin = torch.nn.Linear(300, 10)
    with torch.no_grad():
        lin.weight.copy_(layer.components)
        lin.bias.copy_(-(layer.components @ layer.mean))
    x = torch.randn(4, 300)
    torch.testing.assert_close(layer(x), lin(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("n", [120, 500])
def test_too_many_components(data, n):
    with pytest.raises(FERError, match=rf"pca.n_components={n} is more than the 120 training samples allow"):
        PCAProjection(300, n).fit(torch.from_numpy(data[0]))


def test_unfitted_layers_refuse():
    with pytest.raises(RuntimeError, match="before it was fitted"):
        PCAProjection(3, 2)(torch.zeros(1, 3))


def test_state_dict_restores_fitted_shapes(data):
    train, other = data
    fitted = PCAProjection(300, 0.95).fit(torch.from_numpy(train))
    fresh = PCAProjection(300, 0.95)  # shape unknown until loaded
    fresh.load_state_dict(fitted.state_dict())
    x = torch.from_numpy(other).float()
    torch.testing.assert_close(fresh(x), fitted(x))


def test_fusion_head_fits_only_what_it_is_given(data):
    train, other = data
    blocks = {"a": torch.from_numpy(train[:, :200]).float(), "b": torch.from_numpy(train[:, 200:]).float()}
    head = FusionHead({"a": 200, "b": 100}, 7, n_components=20)
    assert not head.fitted
    assert head.fit(blocks) == 20 and head.fitted
    np.testing.assert_allclose(head.zscore["a"].mean.numpy(), train[:, :200].mean(0), rtol=1e-5, atol=1e-5)
    out = head.eval()({"a": torch.from_numpy(other[:, :200]).float(), "b": torch.from_numpy(other[:, 200:]).float()})
    assert out.shape == (40, 7)
    reloaded = FusionHead({"a": 200, "b": 100}, 7, n_components=20, fitted_components=20)
    reloaded.load_state_dict(head.state_dict())
    x = {"a": torch.randn(3, 200), "b": torch.randn(3, 100)}
    torch.testing.assert_close(reloaded.eval()(x), head(x))


def test_zscore_in_chunks_equals_standard_scaler(data, monkeypatch):
    import fer_lightning.models.components.fitted as layers

    monkeypatch.setattr(layers, "CHUNK_ROWS", 16)  # 120 rows: eight chunks, two passes
    train, other = data
    z = ZScore(300).double().fit(torch.from_numpy(train))
    np.testing.assert_allclose(z(torch.from_numpy(other)).numpy(), StandardScaler().fit(train).transform(other),
                               atol=1e-9)


@pytest.mark.parametrize("n", [8, 0.9])
def test_randomized_pca_matches_sklearn(data, monkeypatch, n):
    """Above PCA_EXACT_MAX the PCA is randomized (torch.pca_lowrank): same components, projections and
    explained-variance ratios as sklearn's exact PCA where the spectrum has a gap."""
    import fer_lightning.models.components.fitted as layers

    monkeypatch.setattr(layers, "PCA_EXACT_MAX", 50)
    monkeypatch.setattr(layers, "CHUNK_ROWS", 32)
    train, other = data
    ref = PCA(n).fit(train)
    state = torch.get_rng_state()
    layer = PCAProjection(300, n).double().fit(torch.from_numpy(train))
    assert torch.equal(state, torch.get_rng_state())  # seeded on its own: training's randomness is untouched
    assert layer.out_features == ref.n_components_
    np.testing.assert_allclose(layer.explained_variance_ratio.numpy(), ref.explained_variance_ratio_, rtol=1e-4)
    np.testing.assert_allclose(layer(torch.from_numpy(other)).numpy(), ref.transform(other), rtol=1e-3, atol=1e-3)
