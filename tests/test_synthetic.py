"""The embedded synthetic JAFFE-format set."""

from collections import Counter

import numpy as np
import pytest
from PIL import Image
from skimage.feature import hog
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import confusion_matrix
from sklearn.model_selection import GroupKFold, cross_val_predict

from fer_lightning.data.classes import CLASS_NAMES
from fer_lightning.data.decoded import decode_store
from fer_lightning.data.preprocessing import Preprocessing
from fer_lightning.data.sources.jaffe import scan_jaffe
from fer_lightning.data.synthetic import ensure_synthetic, generate


def test_layout_and_names(synthetic_dir):
    recs = scan_jaffe(synthetic_dir)  # the same code path as real JAFFE
    assert len(recs) == 210
    assert Counter(r.label for r in recs) == {c: 30 for c in CLASS_NAMES}
    assert Counter(r.subject for r in recs) == {f"Z{chr(65 + i)}": 21 for i in range(10)}
    modes = Counter(Image.open(r.path).mode for r in recs)
    assert modes["P"] > 0 and modes["L"] > 0  # palette files, like some real JAFFE images
    im = Image.open(recs[0].path)
    assert im.size == (256, 256)


def test_deterministic_and_seeded(tmp_path):
    a = generate(tmp_path / "a", n_subjects=2, per_expression=1, seed=5)
    b = generate(tmp_path / "b", n_subjects=2, per_expression=1, seed=5)
    c = generate(tmp_path / "c", n_subjects=2, per_expression=1, seed=6)
    for pa, pb, pc in zip(a, b, c, strict=True):
        assert pa.name == pb.name
        assert pa.read_bytes() == pb.read_bytes()
        assert not np.array_equal(np.asarray(Image.open(pa)), np.asarray(Image.open(pc)))


def test_ensure_is_idempotent(synthetic_dir, cache_dir):
    before = {p.name: p.stat().st_mtime_ns for p in synthetic_dir.iterdir()}
    assert ensure_synthetic(cache_dir) == synthetic_dir
    assert {p.name: p.stat().st_mtime_ns for p in synthetic_dir.iterdir()} == before
    assert not [p for p in synthetic_dir.parent.iterdir() if ".tmp" in p.name]


@pytest.mark.slow
def test_learnable_but_not_trivial(synthetic_dir):
    """Subject-independent HOG + logistic regression: well above chance (1/7), far from perfect, and with the
    designed confusions (anger/disgust, fear/surprise)."""
    d = decode_store(scan_jaffe(synthetic_dir), Preprocessing(64), None)
    x = np.stack([hog(im[0].numpy(), 9, (8, 8), (2, 2)) for im in d.images])
    y, groups = np.asarray(d.labels), np.asarray(d.subjects)
    pred = cross_val_predict(LogisticRegression(max_iter=2000, C=0.1), x, y, groups=groups, cv=GroupKFold(5))
    acc = (pred == y).mean()
    assert 0.4 < acc < 0.95, acc
    cm = confusion_matrix(y, pred, labels=list(CLASS_NAMES))
    i = {c: k for k, c in enumerate(CLASS_NAMES)}
    assert cm[i["anger"], i["disgust"]] + cm[i["disgust"], i["anger"]] > 0
    assert cm[i["fear"], i["surprise"]] + cm[i["surprise"], i["fear"]] > 0
