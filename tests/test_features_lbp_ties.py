"""LBP's fast path on images built to break it: exact ties, near-ties, plateaus, ramps and extremes, all compared
exactly with scikit-image (a tie decided the wrong way changes a code, so any such mistake fails here)."""

import math
import threading

import numpy as np
import pytest
import torch
from skimage.feature import local_binary_pattern

from fer_lightning.features import lbp_codes, lbp_histograms, lbp_uint8
from fer_lightning.features.lbp import uniform_lbp
from fer_lightning.features.lbp_uint8 import _PLAN, _flagged, patterns_uint8, uniform8, uniform_table


def _assert_like_skimage(images: dict[str, np.ndarray]) -> None:
    for name, img in images.items():
        ours = lbp_codes(torch.from_numpy(np.ascontiguousarray(img))[None, None])[0, 0].numpy()
        ref = local_binary_pattern(img, 8, 1, method="uniform")
        np.testing.assert_array_equal(ours, ref, err_msg=name)


def _planted(pairs: list[tuple[int, int]], size: int = 224, seed: int = 0) -> np.ndarray:
    """Random noise with, for each diagonal neighbour and each ``(s, t)``, pixels whose neighbourhood has
    ``side1 + side2 - 2 * centre = s`` and ``far - centre = t`` (the integers that decide that diagonal bit): one
    with random sides, one with ``side1 = centre`` and one with ``side2 = centre`` where the values allow."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (size, size)).astype(np.int64)
    spots = [(r, c) for r in range(2, size - 2, 3) for c in range(2, size - 2, 3)]
    rng.shuffle(spots)
    k = 0
    for step in _PLAN:
        if step[0] != "diag":
            continue
        _, side1, side2, far = step
        for s, t in pairs:
            lo, hi = max(0, -t, math.ceil(-s / 2)), min(255, 255 - t, (510 - s) // 2)
            if lo > hi:
                continue
            centre = int(rng.integers(lo, hi + 1))
            total = 2 * centre + s  # side1 + side2, each in 0..255
            for a in {int(rng.integers(max(0, total - 255), min(255, total) + 1)), centre, total - centre}:
                if 0 <= total - a <= 255:
                    r, c = spots[k]
                    k += 1
                    img[r, c] = centre
                    img[r + side1[0], c + side1[1]] = a
                    img[r + side2[0], c + side2[1]] = total - a
                    img[r + far[0], c + far[1]] = centre + t
    assert k <= len(spots)
    return img.astype(np.uint8)


def test_uniform_codes_by_bit_arithmetic_equal_the_table():
    patterns = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(uniform8(patterns), uniform_table(8))
    assert torch.equal(uniform8(patterns.view(16, 16)), uniform_table(8).view(16, 16))


def test_flagged_finds_every_marked_entry():
    gen = torch.Generator().manual_seed(0)
    for dtype in (torch.uint8, torch.int16, torch.bool):
        for density in (0.0, 0.001, 0.3, 1.0):
            buf = (torch.rand(8 * 1001, generator=gen) < density).to(dtype)
            np.testing.assert_array_equal(_flagged(buf).numpy(), buf.nonzero().squeeze(1).numpy())


def test_lbp_exact_ties_flat_regions_and_extremes():
    rng = np.random.default_rng(1)
    images = {f"flat_{v}": np.full((37, 53), v, np.uint8) for v in (0, 1, 2, 127, 128, 254, 255)}
    images["black_white_noise"] = (rng.integers(0, 2, (224, 224)) * 255).astype(np.uint8)
    images["levels_254_255"] = rng.integers(254, 256, (224, 224)).astype(np.uint8)
    images["levels_0_1_2"] = rng.integers(0, 3, (224, 224)).astype(np.uint8)
    blocks = rng.integers(0, 256, (28, 28)).astype(np.uint8)  # plateaus of 8x8 pixels, one value each
    images["plateaus"] = np.kron(blocks, np.ones((8, 8), np.uint8))
    images["plateaus_two_levels"] = np.kron((blocks > 127).astype(np.uint8) * 200 + 50, np.ones((5, 5), np.uint8))
    images["white_with_a_dark_square"] = np.full((224, 224), 255, np.uint8)
    images["white_with_a_dark_square"][60:150, 70:160] = 3
    _assert_like_skimage(images)


def test_lbp_ramps_tie_every_diagonal():
    """Along ``v = k * (r +- c) + offset`` every diagonal across the ramp is an exact, non-flat tie (its two side
    pixels differ from the centre by +k and -k, the far corner equals it): scikit-image's float64 rounding
    decides each of them."""
    r, c = np.mgrid[0:224, 0:224]
    images = {}
    for k in (1, 2, 3, 5, 7, 29, 70, 127):
        for sign in (1, -1):
            images[f"ramp_{k}_{sign}"] = ((k * (r + sign * c) + 1000 * 256) % 256).astype(np.uint8)
    images["ramp_rows"] = np.broadcast_to(np.arange(224, dtype=np.uint8)[:, None], (224, 224))
    images["ramp_cols_odd_size"] = np.broadcast_to(np.arange(255, -1, -1, dtype=np.uint8)[None, :200], (61, 200))
    images["ramp_saturated"] = np.clip(3 * (r + c) - 300, 0, 255).astype(np.uint8)
    _assert_like_skimage(images)


def test_lbp_near_ties_planted_at_every_diagonal():
    """Every ``(s, t)`` whose int16 test ``29 s + 70 t`` is within 12 of 0 (the near-ties that are replayed in
    float64, ``|u| <= 3``, and the closest that are decided in int16), planted for each diagonal neighbour."""
    pairs = [(s, t) for t in range(-255, 256) for s in range(-510, 511) if abs(29 * s + 70 * t) <= 12]
    assert (-169, 70) in pairs and (0, 0) in pairs  # the closest non-tie to a tie, and the exact tie
    images = {f"planted_{i}": _planted(pairs[i::6], seed=i) for i in range(6)}
    _assert_like_skimage(images)


def test_lbp_sizes_and_batches_with_ties():
    """Odd and large sizes (the float64 fractions take other values on long rows), batched and chunked."""
    rng = np.random.default_rng(2)
    r, c = np.mgrid[0:67, 0:1100]
    wide = ((r + c) % 256).astype(np.uint8)
    wide[:, 500:700] = 255
    wide[30:40, :] = rng.integers(0, 3, (10, 1100))
    _assert_like_skimage({"wide_1100": wide, "tall_1100": np.ascontiguousarray(wide.T)})
    batch = np.stack([_planted([(0, 0), (-169, 70), (12, -5)], size=96, seed=i) for i in range(5)])
    codes = lbp_codes(torch.from_numpy(batch)[:, None], chunk=2)[:, 0].numpy()
    for i, img in enumerate(batch):
        np.testing.assert_array_equal(codes[i], local_binary_pattern(img, 8, 1, method="uniform"))


def test_two_step_decision_is_checked_and_a_wrong_step_breaks_near_ties(monkeypatch):
    """``z = 75 * clamp(29 s + 70 t, -4, 4) + t`` decides every diagonal but the exact ties: the import-time
    check rejects other steps, and with a wrong step the planted near-ties (|29 s + 70 t| <= 3, |t| up to 255)
    differ from scikit-image, so the planted tests would catch it."""
    rho = 0.5000045521 / 0.2071054479
    lbp_uint8._check_two_steps(rho)
    pairs = [(s, t) for t in range(-255, 256) for s in range(-510, 511) if 0 < abs(29 * s + 70 * t) <= 3]
    img = _planted(pairs, seed=7)
    _assert_like_skimage({"planted_near": img})
    for wrong in (40, 60):
        monkeypatch.setattr(lbp_uint8, "_STEP", wrong)
        with pytest.raises(AssertionError, match="two-step"):
            lbp_uint8._check_two_steps(rho)
        with pytest.raises(AssertionError):
            _assert_like_skimage({f"planted_near_step_{wrong}": img})


def test_only_exact_non_flat_ties_are_replayed():
    """The pixels replayed in float64 are exactly those with, at some diagonal, ``s = t = 0`` and a side pixel
    that differs from the centre (computed here in NumPy)."""
    img = _planted([(0, 0), (1, 0), (0, 1), (-12, 5), (29, -12)], size=64, seed=3)
    img[40:50, 10:30] = 77  # a flat patch: its ties are not replayed
    patterns_uint8(torch.from_numpy(img)[None])
    space = lbp_uint8._workspace(1, 64, 64, "cpu", threading.get_ident())
    flagged = space["near_all"][: 64 * 64].view(64, 64).numpy() != 0
    pad = np.pad(img.astype(np.int64), 1)
    expected = np.zeros_like(flagged)
    for step in _PLAN:
        if step[0] == "diag":
            (y1, x1), (y2, x2), (yf, xf) = step[1:]
            at = lambda dy, dx: pad[1 + dy : 65 + dy, 1 + dx : 65 + dx]  # noqa: E731
            s, t = at(y1, x1) + at(y2, x2) - 2 * at(0, 0), at(yf, xf) - at(0, 0)
            expected |= (s == 0) & (t == 0) & (at(y1, x1) != at(0, 0))
    assert expected.any() and (~expected).any()
    np.testing.assert_array_equal(flagged, expected)


def test_uniform_lbp_equals_codes_then_histograms_across_sizes_chunks_and_buffers():
    """The fused path (patterns counted per cell, chunks on threads, buffers reused between calls of other sizes)
    gives the histograms of the codes, which equal scikit-image's."""
    rng = np.random.default_rng(4)
    shapes = [(5, 64, 48), (1, 37, 53), (5, 64, 48), (3, 224, 224), (2, 17, 16)]
    for i, (b, h, w) in enumerate(shapes):
        x = torch.from_numpy(rng.integers(0, 256, (b, 1, h, w)).astype(np.uint8))
        x[:, :, : h // 3] = x[:, :, : h // 3] // 64 * 64  # plateaus and ties
        grid = (7, 7) if h >= 7 and w >= 7 else (2, 2)
        codes = lbp_codes(x)
        for k, img in enumerate(x[:, 0].numpy()):
            np.testing.assert_array_equal(codes[k, 0].numpy(), local_binary_pattern(img, 8, 1, method="uniform"))
        expected = lbp_histograms(codes, 10, grid)
        for chunk in (1, 2, 16):
            assert torch.equal(uniform_lbp(x, grid=grid, chunk=chunk), expected), (i, chunk)
    floats = x.float() / 255
    assert torch.equal(uniform_lbp(floats, grid=(2, 2)), lbp_histograms(lbp_codes(floats), 10, (2, 2)))
