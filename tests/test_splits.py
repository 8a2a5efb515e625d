"""The paper's stratified split and leave-one-subject-out folds."""

from collections import Counter

import numpy as np
import pytest

from fer_lightning.data.classes import CLASS_NAMES, JAFFE_SUBJECTS
from fer_lightning.data.splits import loso_split, paper_split
from fer_lightning.errors import FERError

# JAFFE's class counts (paper, section 4.1): 213 images
JAFFE_COUNTS = {"anger": 30, "disgust": 29, "fear": 32, "happiness": 31, "neutral": 30, "sadness": 31, "surprise": 30}


def jaffe_like():
    labels = [c for c, n in JAFFE_COUNTS.items() for _ in range(n)]
    rng = np.random.default_rng(0)
    subjects = [JAFFE_SUBJECTS[i % 10] for i in rng.permutation(len(labels))]
    return labels, subjects


def test_paper_sizes_and_disjoint():
    labels, _ = jaffe_like()
    s = paper_split(labels, seed=0)
    assert (len(s.train), len(s.val), len(s.test)) == (133, 23, 57)
    all_idx = np.concatenate([s.train, s.val, s.test])
    assert len(set(all_idx.tolist())) == 213


def test_paper_split_is_stratified():
    labels, _ = jaffe_like()
    y = np.asarray(labels)
    s = paper_split(labels, seed=3)
    for part, n in (("train", 133), ("val", 23), ("test", 57)):
        counts = Counter(y[getattr(s, part)])
        for c in CLASS_NAMES:
            expected = JAFFE_COUNTS[c] * n / 213
            assert abs(counts[c] - expected) <= 1.0, (part, c, counts[c], expected)


def test_paper_split_determinism():
    labels, _ = jaffe_like()
    a, b, c = paper_split(labels, seed=1), paper_split(labels, seed=1), paper_split(labels, seed=2)
    assert all(np.array_equal(getattr(a, p), getattr(b, p)) for p in ("train", "val", "test"))
    assert not np.array_equal(a.test, c.test)


def test_fractions_and_train_size():
    labels, _ = jaffe_like()
    s = paper_split(labels, test_size=0.2, val_size=0.1, train_size=70, seed=0)
    assert (len(s.test), len(s.val), len(s.train)) == (43, 21, 70)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"test_size": 150, "val_size": 70}, "do not fit in 213 images"),
        ({"test_size": 3}, r"data.test_size=3 cannot be met"),
        ({"val_size": 200, "test_size": 7}, "do not fit"),
        ({"train_size": 150}, "do not fit"),
        ({"test_size": 1.5}, r"data.test_size=1.5"),
    ],
)
def test_impossible_sizes(kwargs, match):
    labels, _ = jaffe_like()
    with pytest.raises(FERError, match=match):
        paper_split(labels, **kwargs)


def test_loso_folds_are_subject_disjoint_and_cover_everyone():
    labels, subjects = jaffe_like()
    s_arr = np.asarray(subjects)
    seen_test = []
    for fold in range(10):
        s = loso_split(labels, subjects, fold=fold, val_size=23, seed=0)
        test_subjects = set(s_arr[s.test])
        assert test_subjects == {sorted(JAFFE_SUBJECTS)[fold]}
        assert test_subjects.isdisjoint(s_arr[s.train]) and test_subjects.isdisjoint(s_arr[s.val])
        assert len(s.val) == 23 and len(s.train) + len(s.val) + len(s.test) == 213
        assert set(np.asarray(labels)[s.val]) == set(CLASS_NAMES)  # stratified: every class in val
        seen_test += s.test.tolist()
    assert sorted(seen_test) == list(range(213))


def test_loso_bad_fold():
    labels, subjects = jaffe_like()
    with pytest.raises(FERError, match=r"data.fold=10 is out of range: 10 subjects, so folds are 0..9"):
        loso_split(labels, subjects, fold=10)


def test_assignment():
    labels, _ = jaffe_like()
    s = paper_split(labels, seed=0)
    a = s.assignment(213)
    assert Counter(a) == {"train": 133, "val": 23, "test": 57}
