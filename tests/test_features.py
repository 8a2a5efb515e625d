"""HOG and uniform LBP as batched torch ops: parity with scikit-image, histograms, the extractor."""

import numpy as np
import pytest
import torch
from skimage.feature import hog as sk_hog
from skimage.feature import local_binary_pattern

from fer_lightning.data.decoded import decode_store
from fer_lightning.data.images import read_grey, resize_grey
from fer_lightning.data.preprocessing import Preprocessing
from fer_lightning.data.sources.jaffe import scan_jaffe
from fer_lightning.errors import FERError
from fer_lightning.features import HandcraftedFeatures, hog, hog_dim, lbp_codes, lbp_histograms
from fer_lightning.features.lbp import grid_edges

from .conftest import LONDON

HOG_KW = {"orientations": 9, "pixels_per_cell": (8, 8), "cells_per_block": (2, 2), "block_norm": "L2-Hys"}


def _images(synthetic_dir) -> dict[str, np.ndarray]:
    """Test images: synthetic faces, real photos, noise, flat and few-level (tie-heavy) images, odd sizes."""
    rng = np.random.default_rng(0)
    recs = scan_jaffe(synthetic_dir)
    faces = decode_store([recs[0], recs[100]], Preprocessing(224), None).images[:, 0].numpy()
    out = {"synthetic_face_0": faces[0], "synthetic_face_1": faces[1]}
    if LONDON.is_dir():
        for cls, stem in (("neutral", "001"), ("happiness", "144")):
            out[f"london_{cls}_{stem}"] = resize_grey(read_grey(LONDON / cls / f"{stem}.jpg"), 224)
    out["noise"] = rng.integers(0, 256, (224, 224), dtype=np.uint8)
    out["flat"] = np.full((224, 224), 117, np.uint8)
    out["black"] = np.zeros((224, 224), np.uint8)
    out["three_levels"] = rng.integers(100, 103, (224, 224), dtype=np.uint8)
    out["odd_61x77"] = rng.integers(0, 256, (61, 77), dtype=np.uint8)
    out["odd_17x33"] = rng.integers(0, 256, (17, 33), dtype=np.uint8)
    out["gradient_ramp"] = np.tile(np.arange(224, dtype=np.uint8), (224, 1))
    return out


@pytest.fixture(scope="module")
def images(synthetic_dir):
    return _images(synthetic_dir)


def test_london_photos_are_part_of_the_parity_set(images):
    if not LONDON.is_dir():
        pytest.skip(f"{LONDON} is not here")
    assert any(k.startswith("london_") for k in images)


def test_hog_parity_uint8(images):
    batch = torch.from_numpy(np.stack([images[k] for k in images if images[k].shape == (224, 224)]))[:, None]
    ours = hog(batch)
    assert ours.shape == (len(batch), 26244) and ours.dtype == torch.float32
    for i, k in enumerate(k for k in images if images[k].shape == (224, 224)):
        ref = sk_hog(images[k], **HOG_KW, feature_vector=True)
        assert np.abs(ours[i].numpy() - ref).max() < 1e-5, k


@pytest.mark.parametrize("name", ["odd_61x77", "odd_17x33"])
def test_hog_parity_odd_sizes(images, name):
    img = images[name]
    ref = sk_hog(img, **HOG_KW, feature_vector=True)
    ours = hog(torch.from_numpy(img)[None, None])[0].numpy()
    assert ours.shape == ref.shape == (hog_dim(*img.shape),)
    assert np.abs(ours - ref).max() < 1e-5


def test_hog_parity_float_and_other_settings(images):
    img = images["synthetic_face_0"].astype(np.float64) / 255.0
    ref = sk_hog(img, orientations=12, pixels_per_cell=(6, 6), cells_per_block=(3, 3), block_norm="L2")
    ours = hog(torch.from_numpy(img)[None, None], orientations=12, pixels_per_cell=6, cells_per_block=3,
               block_norm="L2")
    assert np.abs(ours[0].numpy() - ref).max() < 1e-5


def test_hog_is_differentiable_for_float_images():
    x = torch.rand(2, 1, 32, 32, dtype=torch.float64, requires_grad=True)
    x.data[:, :, :8, :8] = 0.5  # a flat patch: zero gradients must not give NaN
    hog(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_hog_rejects_bad_input():
    with pytest.raises(ValueError, match="too small"):
        hog(torch.zeros(1, 1, 10, 10, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        hog(torch.zeros(10, 10, dtype=torch.uint8))


def test_lbp_parity_uint8_exact(images):
    for k, img in images.items():
        ref = local_binary_pattern(img, 8, 1, method="uniform")
        ours = lbp_codes(torch.from_numpy(img.copy())[None, None])[0, 0].numpy()
        assert ours.dtype == np.uint8 and set(np.unique(ours)) <= set(range(10))
        np.testing.assert_array_equal(ours, ref, err_msg=k)


def test_lbp_batched_equals_single(images):
    batch = torch.from_numpy(np.stack([images["synthetic_face_0"], images["noise"], images["flat"]]))[:, None]
    codes = lbp_codes(batch, chunk=2)
    for i in range(3):
        torch.testing.assert_close(codes[i : i + 1], lbp_codes(batch[i : i + 1]))


@pytest.mark.filterwarnings("ignore:Applying `local_binary_pattern` to floating-point")
def test_lbp_parity_general_path(images):
    img = images["synthetic_face_1"][:96, :96]
    for P, R in ((8, 1), (16, 2), (8, 1.5)):
        ref = local_binary_pattern(img, P, R, method="uniform")
        ours = lbp_codes(torch.from_numpy(img.astype(np.float64))[None, None], P, R)[0, 0].numpy()
        np.testing.assert_array_equal(ours, ref, err_msg=f"P={P} R={R}")
    f = images["three_levels"][:64, :64].astype(np.float32) / 255  # float input, many ties
    ref = local_binary_pattern(f, 8, 1, method="uniform")
    np.testing.assert_array_equal(lbp_codes(torch.from_numpy(f)[None, None])[0, 0].numpy(), ref)


def test_lbp_histograms_against_numpy(images):
    codes = lbp_codes(torch.from_numpy(np.stack([images["synthetic_face_0"], images["odd_61x77"][:61, :61]
                                                 .repeat(4, 0).repeat(4, 1)[:224, :224]]))[:, None])
    hist = lbp_histograms(codes, 10, (7, 5))
    assert hist.shape == (2, 7 * 5 * 10)
    ey, ex = grid_edges(224, 7), grid_edges(224, 5)
    for b in range(2):
        c = codes[b, 0].numpy()
        ref = [np.bincount(c[ey[i]:ey[i + 1], ex[j]:ex[j + 1]].ravel(), minlength=10) / c[ey[i]:ey[i + 1],
               ex[j]:ex[j + 1]].size for i in range(7) for j in range(5)]
        np.testing.assert_allclose(hist[b].numpy(), np.concatenate(ref), atol=1e-7)
    assert torch.allclose(hist.view(2, 35, 10).sum(-1), torch.ones(2, 35))


def test_extractor_backends_agree_and_dims(images):
    x = torch.from_numpy(np.stack([images["synthetic_face_0"], images["noise"]]))[:, None]
    cfg = {"hog": {"scales": [224, 112]}, "lbp": {"scales": [224, 64], "grid": [4, 4]}}
    fast = HandcraftedFeatures(**cfg)
    ref = HandcraftedFeatures(**cfg, backend="skimage")
    a, b = fast(x), ref(x)
    assert list(a) == ["hog@224", "hog@112", "lbp@224", "lbp@64"]
    assert {k: v.shape[1] for k, v in a.items()} == fast.block_dims() == {
        "hog@224": 26244, "hog@112": 6084, "lbp@224": 160, "lbp@64": 160}
    for k in a:
        assert (a[k] - b[k]).abs().max() < 1e-5, k
    assert "total 32648" in fast.describe()
    # float images in [0, 1] are quantised to the same 8 bits
    for k, v in fast(x.float() / 255).items():
        torch.testing.assert_close(v, a[k])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"backend": "opencv"}, "features.backend=opencv is unknown"),
        ({"source": "disk"}, "features.source=disk is unknown"),
        ({"backend": "skimage", "source": "online"}, "needs features.backend=torch"),
        ({"hog": None, "lbp": None}, "enable at least one"),
        ({"hog": {"scales": [8]}}, "16 px or more"),
    ],
)
def test_extractor_config_errors(kwargs, match):
    with pytest.raises(FERError, match=match):
        HandcraftedFeatures(**{"hog": {}, "lbp": {}, **kwargs})


@pytest.mark.gpu
def test_cuda_matches_cpu(images):
    x = torch.from_numpy(np.stack([images["synthetic_face_0"], images["flat"], images["three_levels"]]))[:, None]
    ext = HandcraftedFeatures(hog={}, lbp={})
    cpu, gpu = ext(x), ext(x.cuda())
    for k in cpu:
        assert gpu[k].is_cuda
        assert (gpu[k].cpu() - cpu[k]).abs().max() < 1e-5, k


def test_features_first_computed_under_inference_mode_then_outside_it():
    """Lightning validates and tests under ``torch.inference_mode``: the buffers and tables HOG and LBP keep between
    calls are made as plain tensors there too, so the same shapes computed afterwards outside that mode (a training
    in the same process, a prediction) neither fail nor differ. A size no other test uses: fresh caches."""
    x = torch.randint(0, 256, (3, 1, 43, 43), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    extractor = HandcraftedFeatures(hog={"scales": [43]}, lbp={"scales": [43], "grid": [3, 3]})
    with torch.inference_mode():
        inside = extractor(x)
    outside = extractor(x)
    assert inside.keys() == outside.keys() and all(torch.equal(inside[k], outside[k]) for k in inside)
    assert not any(v.is_inference() for v in outside.values())
