"""Which classes each part of a split holds: a warning naming the classes missing from validation or test (their
per-class metrics cannot be measured there, and early stopping and checkpoint choice do not see them).

Examples:
    >>> from fer_lightning.data.splits import Split
    >>> split = Split(train=np.array([0, 1, 2]), val=np.array([3]), test=np.array([4, 5]))
    >>> labels = ["anger", "fear", "sadness", "anger", "anger", "fear"]
    >>> warn_missing_classes(split, labels, SplitSettings("subject_kfold", fold=0))  # doctest: +NORMALIZE_WHITESPACE
    ['validation (subject_kfold fold 0) has no image of: fear, sadness; its per-class metrics of these classes are
      absent, and its averages cover the other classes',
     'test (subject_kfold fold 0) has no image of: sadness; its per-class metrics of this class are absent, and its
      averages cover the other classes']
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from fer_lightning.data.settings import SplitSettings

log = logging.getLogger(__name__)


def part_name(settings: SplitSettings, part: str) -> str:
    """How a part of a split is named in messages: ``validation (subject_kfold fold 0)``, ``test (paper split)``."""
    s = settings
    if s.inner_folds:
        where = f"inner fold {s.inner_fold} of {s.inner_folds}"
    elif s.name in ("loso", "subject_kfold"):
        where = f"{s.name} fold {s.fold}"
    else:
        where = f"{s.name} split"
    return f"{'validation' if part == 'val' else part} ({where})"


def warn_missing_classes(split: Any, labels: Sequence[str], settings: SplitSettings) -> list[str]:
    """Warn (one line a part) when validation or test of ``split`` (a :class:`~fer_lightning.data.splits.Split`)
    holds no image of some of the dataset's classes; returns the lines. An empty part is not warned about (it is
    either refused or meant)."""
    y = np.asarray(labels)
    classes = sorted(set(y.tolist()))
    lines = []
    for part in ("val", "test"):
        idx = getattr(split, part)
        missing = [c for c in classes if c not in set(y[idx].tolist())]
        if len(idx) and missing:
            lines.append(f"{part_name(settings, part)} has no image of: {', '.join(missing)}; its per-class metrics "
                         f"of {'this class' if len(missing) == 1 else 'these classes'} are absent, and its averages "
                         "cover the other classes")
            log.warning(lines[-1])
    return lines


__all__ = ["part_name", "warn_missing_classes"]
