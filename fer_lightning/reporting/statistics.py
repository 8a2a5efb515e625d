"""Statistics of a report: confidence intervals of a mean over runs, McNemar's exact test on paired predictions."""

from __future__ import annotations

import math
import statistics

import numpy as np
from scipy import stats


def mean_ci(values: list[float], level: float = 0.95) -> tuple[float, float, float, float]:
    """Mean, sample SD, and the ``level`` confidence interval of the mean (Student's t; a point for one run)."""
    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return mean, 0.0, mean, mean
    sd = statistics.stdev(values)
    half = stats.t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    return mean, sd, mean - half, mean + half


def proportion_ci(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion (e.g. the accuracy of one run on ``n`` test images), as fractions.

    Examples:
        >>> [round(v, 4) for v in proportion_ci(45, 50)]
        [0.7864, 0.9565]
    """
    if n <= 0:
        return math.nan, math.nan
    ci = stats.binomtest(int(successes), int(n)).proportion_ci(level, method="wilson")
    return float(ci.low), float(ci.high)


def mcnemar(a_correct: np.ndarray, b_correct: np.ndarray) -> tuple[int, int, float]:
    """McNemar's exact (binomial) test: (a right & b wrong, a wrong & b right, two-sided p-value)."""
    b = int(np.sum(a_correct & ~b_correct))
    c = int(np.sum(~a_correct & b_correct))
    p = 1.0 if b + c == 0 else float(stats.binomtest(b, b + c, 0.5).pvalue)
    return b, c, p

