"""Train / validation / test splits: the paper's stratified random split, leave-one-subject-out, subject k-fold,
a dataset's published split, and keeping copies of one image (duplicates) on one side of every split."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, train_test_split

from fer_lightning.data.coverage import warn_missing_classes
from fer_lightning.data.settings import OWN_SPLITS, SplitSettings
from fer_lightning.data.sources.base import Source
from fer_lightning.errors import FERError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Split:
    """Indices into the dataset for each part; disjoint and sorted. ``reserve``: validation images set aside for
    fitting fusion weights (``data.fusion_reserve``), never seen by the members' early stopping or selection."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    reserve: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def assignment(self, n: int) -> list[str]:
        """``'train' | 'val' | 'test' | 'reserve' | 'unused'`` for each of the ``n`` images."""
        out = ["unused"] * n
        for name in ("train", "val", "test", "reserve"):
            for i in getattr(self, name):
                out[int(i)] = name
        return out


def _count(size: int | float | None, n: int, option: str) -> int | None:
    """A split size given as a count (int) or a fraction of ``n`` (float in (0, 1))."""
    if size is None:
        return None
    if _is_fraction(size):
        if not 0.0 < size < 1.0:
            raise FERError(f"{option}={size}: give a count of images or a fraction between 0 and 1")
        return int(round(size * n))
    size = int(size)
    if size < 0:
        raise FERError(f"{option}={size}: a split size cannot be negative")
    return size


def _is_fraction(size: int | float | None) -> bool:
    return isinstance(size, float) and not size.is_integer()


def _stratified_take(
    idx: np.ndarray, labels: np.ndarray, k: int, seed: int, option: str, fraction: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``idx`` into (rest, taken) with ``k`` taken, stratified by label; ``k`` from a fraction (``fraction``)
    too small to hold one image of each class is raised to one per class where the rest keeps as many."""
    n_classes = len(np.unique(labels[idx]))
    if fraction and k < n_classes <= len(idx) - n_classes:
        log.info("%s: %d of %d images is fewer than the %d classes; taking %d (one per class)", option, k, len(idx),
                 n_classes, n_classes)
        k = n_classes
    if k == 0:
        return idx, idx[:0]
    if k < n_classes or len(idx) - k < n_classes:
        raise FERError(
            f"{option}={k} cannot be met: a stratified split of {len(idx)} images over {n_classes} classes "
            f"needs between {n_classes} and {len(idx) - n_classes} images; change {option}"
        )
    try:
        rest, taken = train_test_split(idx, test_size=k, stratify=labels[idx], random_state=seed)
    except ValueError as e:
        raise FERError(f"{option}={k} cannot be met with a stratified split of {len(idx)} images ({e})") from e
    return np.sort(rest), np.sort(taken)


def paper_split(
    labels: Sequence[str],
    *,
    test_size: int | float = 57,
    val_size: int | float = 23,
    train_size: int | float | None = None,
    seed: int = 0,
    groups: Sequence[int] | None = None,
) -> Split:
    """The paper's stratified random split (133 / 23 / 57 of JAFFE's 213): test first, then validation, then
    train = the rest (or ``train_size`` of the rest, stratified). ``groups``: for each image, the index of the
    first image with the same pixels; copies are split as one image and follow it."""
    y = np.asarray(labels)
    n = len(y)
    if groups is not None:
        groups = np.asarray(groups)
        reps = np.flatnonzero(groups == np.arange(n))
        if len(reps) < n:
            sub = paper_split(y[reps].tolist(), test_size=test_size, val_size=val_size, train_size=train_size,
                              seed=seed)
            part = np.full(n, -1)
            for k, name in enumerate(("train", "val", "test")):
                part[reps[getattr(sub, name)]] = k
            part = part[groups]
            return Split(*(np.flatnonzero(part == k) for k in range(3)))
    n_test = _count(test_size, n, "data.test_size")
    n_val = _count(val_size, n, "data.val_size")
    n_train = _count(train_size, n, "data.train_size")
    rest_n = n - n_test - n_val
    n_classes = len(set(y.tolist()))
    if rest_n < n_classes or (n_train is not None and n_train > rest_n):
        want = f"{n_train or 'the rest'} train + {n_val} val + {n_test} test"
        raise FERError(f"split sizes {want} do not fit in {n} images "
                       f"({n_classes} classes); lower data.test_size/val_size/train_size")
    idx = np.arange(n)
    rest, test = _stratified_take(idx, y, n_test, seed, "data.test_size", _is_fraction(test_size))
    train, val = _stratified_take(rest, y, n_val, seed + 1, "data.val_size", _is_fraction(val_size))
    if n_train is not None and n_train < len(train):
        _, train = _stratified_take(train, y, n_train, seed + 2, "data.train_size")
    return Split(train=train, val=val, test=test)


def loso_split(
    labels: Sequence[str], subjects: Sequence[str], *, fold: int, val_size: int | float = 23, seed: int = 0
) -> Split:
    """Leave one subject out: the ``fold``-th subject (sorted order) is the test set; validation is drawn,
    stratified, from the other subjects' images."""
    y, s = np.asarray(labels), np.asarray(subjects)
    order = sorted(set(s.tolist()))
    if len(order) < 2:
        raise FERError(f"data.split=loso needs at least 2 subjects; the data hold {len(order)} ({', '.join(order)}): "
                       "add subjects, set data.subject_regex to the subject part of the file names, or use "
                       "data.split=paper")
    if not 0 <= fold < len(order):
        raise FERError(f"data.fold={fold} is out of range: {len(order)} subjects, so folds are 0..{len(order) - 1}")
    test = np.flatnonzero(s == order[fold])
    rest = np.flatnonzero(s != order[fold])
    n_val = _count(val_size, len(rest), "data.val_size")
    train, val = _stratified_take(rest, y, n_val, seed, "data.val_size", _is_fraction(val_size))
    return Split(train=train, val=val, test=np.sort(test))


def _grouped_val(
    rest: np.ndarray, y: np.ndarray, s: np.ndarray, n_val: int, seed: int, draws: int = 20
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``rest`` into (train, val) by whole subjects, about ``n_val`` validation images, stratified as far
    as subjects allow. The seeded draw is kept when its validation holds every class of ``rest`` and its training
    part too; else the first of ``draws`` candidates (that draw's other folds, then the next seeds' folds) that
    does, or the first that keeps every class in training and covers the most classes in validation."""
    n_subjects = len(set(s[rest].tolist()))
    if n_val <= 0:
        return rest, rest[:0]
    parts = max(2, min(n_subjects, int(round(len(rest) / n_val))))
    if n_subjects < 2:
        raise FERError("data.val_size: the training folds hold one subject; validation needs another subject")
    classes = len(set(y[rest].tolist()))

    def draws_of() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for attempt in range(draws):
            cv = StratifiedGroupKFold(n_splits=parts, shuffle=True, random_state=seed + attempt)
            yield from cv.split(rest, y[rest], groups=s[rest])

    best: tuple[tuple[bool, int], np.ndarray, np.ndarray] | None = None
    for train_pos, val_pos in itertools.islice(draws_of(), draws):
        score = (len(set(y[rest[train_pos]].tolist())) == classes, len(set(y[rest[val_pos]].tolist())))
        if best is None or score > best[0]:
            best = (score, train_pos, val_pos)
        if score == (True, classes):
            break
    _, train_pos, val_pos = best
    return np.sort(rest[train_pos]), np.sort(rest[val_pos])


def subject_kfold_split(
    labels: Sequence[str],
    subjects: Sequence[str],
    *,
    folds: int = 5,
    fold: int = 0,
    val_size: int | float = 23,
    seed: int = 0,
) -> Split:
    """Subject-independent k-fold: every subject's images fall in one fold (``StratifiedGroupKFold``, seeded);
    fold ``fold`` is the test set, and validation takes whole subjects from the other folds."""
    y, s = np.asarray(labels), np.asarray(subjects)
    n_subjects = len(set(s.tolist()))
    if not 2 <= folds <= n_subjects:
        raise FERError(f"data.folds={folds} cannot be met: it must be between 2 and the {n_subjects} subjects")
    if not 0 <= fold < folds:
        raise FERError(f"data.fold={fold} is out of range: data.folds={folds}, so folds are 0..{folds - 1}")
    cv = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    rest, test = list(cv.split(np.zeros(len(y)), y, groups=s))[fold]
    n_val = _count(val_size, len(rest), "data.val_size")
    train, val = _grouped_val(np.asarray(rest), y, s, n_val, seed)
    return Split(train=train, val=val, test=np.sort(test))


def official_split(
    parts: Sequence[str | None], labels: Sequence[str], *, val_size: int | float = 0.1, seed: int = 0,
    option: str = "data.split=official",
) -> Split:
    """The dataset's own split (FER2013's Usage, RAF-DB's train/test, a manifest's ``split`` column). Where it has
    no validation part, ``val_size`` images (a count or a fraction) are drawn from train, stratified."""
    p, y = np.asarray([s or "" for s in parts]), np.asarray(labels)
    train, val, test = (np.flatnonzero(p == name) for name in ("train", "val", "test"))
    if len(test) == 0:
        raise FERError(f"{option}: the dataset's split has no test images; use data.split=paper (a random split)")
    if len(val) == 0:
        n_val = _count(val_size, len(train), "data.val_size")
        train, val = _stratified_take(train, y, n_val, seed, "data.val_size", _is_fraction(val_size))
    return Split(train=np.sort(train), val=np.sort(val), test=np.sort(test))


def separate_copies(split: Split, groups: Sequence[int]) -> tuple[Split, int]:
    """Drop from validation and test every copy of an image already in an earlier part (train, then val), so no
    image is both trained and tested on; returns the split and how many were dropped."""
    g = np.asarray(groups)
    seen = np.zeros(len(g), dtype=bool)
    seen[g[split.train]] = True
    kept = []
    for part in (split.val, split.test):
        part = np.asarray(part)
        keep = part[~seen[g[part]]]
        seen[g[keep]] = True
        kept.append(keep)
    dropped = len(split.val) + len(split.test) - sum(len(k) for k in kept)
    return Split(train=split.train, val=kept[0], test=kept[1]), dropped


def inner_split(
    split: Split,
    labels: Sequence[str],
    subjects: Sequence[str],
    *,
    folds: int,
    fold: int,
    seed: int = 0,
    by_subject: bool = False,
) -> Split:
    """Inner fold ``fold`` of ``folds`` of the *training* part of ``split``: train = the training images outside
    that fold, val = unchanged, test = the held-out training images. The outer test images are in no part, so
    nothing computed on an inner split has seen them (used for out-of-fold features and inner cross-validation).

    The folds are stratified by label and, with ``by_subject`` (for subject-independent outer splits), keep each
    subject's images together, so held-out images relate to the rest as the outer test images do.
    """
    if not 2 <= folds <= len(split.train):
        raise FERError(f"data.inner_folds={folds}: give a number of folds between 2 and the {len(split.train)} "
                       "training images (0 turns inner folds off)")
    if not 0 <= fold < folds:
        raise FERError(f"data.inner_fold={fold} is out of range: data.inner_folds={folds}, so 0..{folds - 1}")
    y, s = np.asarray(labels)[split.train], np.asarray(subjects)[split.train]
    if by_subject:
        if len(set(s.tolist())) < folds:
            raise FERError(f"data.inner_folds={folds}: the training part holds only {len(set(s.tolist()))} subjects")
        cv = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        parts = list(cv.split(np.zeros(len(y)), y, groups=s))
    else:
        smallest = min(np.unique(y, return_counts=True)[1])
        cv = StratifiedKFold(n_splits=min(folds, max(2, smallest)), shuffle=True, random_state=seed)
        if cv.n_splits != folds:
            raise FERError(f"data.inner_folds={folds}: a class has only {smallest} training images; use at most "
                           f"{max(2, smallest)} inner folds")
        parts = list(cv.split(np.zeros(len(y)), y))
    keep, held = parts[fold]
    return Split(train=np.sort(split.train[keep]), val=split.val, test=np.sort(split.train[held]))


def reserve_for_fusion(split: Split, labels: Sequence[str], size: int | float, seed: int = 0) -> Split:
    """``size`` of the validation images (a count or a fraction of them), stratified and seeded, moved to
    ``split.reserve``: the members validate on the rest; a late fusion fits its weights on the reserve."""
    k = _count(size, len(split.val), "data.fusion_reserve")
    val, reserve = _stratified_take(np.asarray(split.val), np.asarray(labels), k, seed + 3, "data.fusion_reserve",
                                    _is_fraction(size))
    return Split(split.train, val, split.test, reserve)


def resolve_split(settings: SplitSettings, source: Source) -> SplitSettings:
    """``data.split=auto`` made concrete: ``folders`` / ``manifest`` / ``official`` (the dataset's own split) when
    every image has a split part, else the source's default split (said in the log, one line); other settings
    unchanged. A split given for only some images is refused rather than silently ignored."""
    if settings.name != "auto":
        return settings
    records = source.records
    with_split = sum(r.split is not None for r in records)
    if 0 < with_split < len(records):
        raise FERError(f"{source.name}: {len(records) - with_split} of {len(records)} images have no split "
                       "(train/val/test); give every image one, or choose data.split=paper or subject_kfold")
    if with_split:
        name = source.own_split
        log.info("%s has its own split (%s): data.split=auto uses it as data.split=%s", source.name,
                 ", ".join(f"{p} {sum(r.split == p for r in records)}" for p in ("train", "val", "test")), name)
    else:
        name = source.default_split
        log.info("%s has no split of its own: data.split=auto draws data.split=%s", source.name, name)
    return replace(settings, name=name)


def draw_split(settings: SplitSettings, source: Source, labels: Sequence[str], subjects: Sequence[str],
               groups: np.ndarray) -> Split:
    """The split ``settings`` asks for on a source's images (copies of one image kept on one side, an inner fold
    where asked); every class must keep training images, and classes missing from validation or test are
    warned about."""
    s = settings = resolve_split(settings, source)
    name = s.name
    if name == "paper":
        split = paper_split(labels, test_size=s.test_size, val_size=s.val_size, train_size=s.train_size, seed=s.seed,
                            groups=groups)
    else:
        if s.subject_independent and not source.has_subjects:
            raise FERError(f"data.split={name} needs a subject id for every image, and {source.name} has "
                           "none; use data.split=paper (random) or data.split=official where the dataset has one")
        if name == "folders" and not source.has_split:
            raise FERError(f"data.split=folders needs split folders (root/train/<class>/, root/test/<class>/), and "
                           f"{source.root} holds class folders; use data.split=subject_kfold or paper")
        if name in OWN_SPLITS and not source.has_split:
            raise FERError(f"data.split={name} needs the dataset's own split (FER2013's Usage, RAF-DB, AffectNet, a "
                           f"manifest's split column), and {source.name} has none; use data.split=paper")
        if name == "loso":
            split = loso_split(labels, subjects, fold=s.fold, val_size=s.val_size, seed=s.seed)
        elif name == "subject_kfold":
            split = subject_kfold_split(labels, subjects, folds=s.folds, fold=s.fold, val_size=s.val_size, seed=s.seed)
        else:
            split = official_split([r.split for r in source.records], labels, val_size=s.val_size, seed=s.seed,
                                   option=f"data.split={name}")
        split, dropped = separate_copies(split, groups)
        if dropped:
            log.warning("dropped %d validation/test image(s) that copy an image of an earlier part of the split",
                        dropped)
    if s.inner_folds:
        split = inner_split(split, labels, subjects, folds=s.inner_folds, fold=s.inner_fold, seed=s.seed,
                            by_subject=s.subject_independent)
        log.info("inner fold %d of %d: the held-out training images are this run's test set (outer test unused)",
                 s.inner_fold, s.inner_folds)
    if s.fusion_reserve:
        split = reserve_for_fusion(split, labels, s.fusion_reserve, s.seed)
    for c in sorted(set(labels) - {labels[i] for i in split.train}):
        raise FERError(f"class '{c}' has no training images in the {name} split of {source.name}; choose another "
                       "split or add images of it")
    warn_missing_classes(split, labels, s)
    return split
