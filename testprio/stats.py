"""Small-sample statistics of the evaluation: the mean with its t-interval, the paired t-test
of two prioritizers' accuracies, and Holm's step-down correction.

The distributions are SciPy's (``scipy.stats.t``, ``scipy.stats.ttest_rel``); this module only
fixes what the evaluation reports where a test is undefined, so that evaluation.json never
holds NaN. SciPy is imported on first use, so that importing ``testprio.retrain`` or the
evaluation package (in every evaluate task and retraining worker) stays quick.
``testprio.retrain`` and ``testprio.evaluation`` both import this module; it imports neither.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Spread of paired differences at or below this is none: they are one value up to round-off
# (accuracies are multiples of 1 / test size, their differences exact or a few ulps apart).
ZERO_SPREAD = 1e-12
CONFIDENCE = 0.95


def mean_ci(values: Sequence[float]) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean and its 95% t-interval ``mean +- t * s / sqrt(n)``
    (``s`` the sample standard deviation), clipped to [0, 1] (the values are accuracies).
    One value, or values without spread, give a zero-width interval."""
    data = np.asarray(values, dtype=np.float64)
    mean = float(data.mean())
    if len(data) < 2 or float(data.std(ddof=1)) <= ZERO_SPREAD:
        return mean, mean, mean
    from scipy import stats

    low, high = stats.t.interval(CONFIDENCE, len(data) - 1, loc=mean, scale=stats.sem(data))
    return mean, max(0.0, float(low)), min(1.0, float(high))


@dataclass(frozen=True)
class PairedDifference:
    """The paired difference ``a - b`` over n pairs: its mean, 95% t-interval and the
    two-sided p-value of the paired t-test (``scipy.stats.ttest_rel(a, b)``).

    Where the test is undefined it is not passed: one pair, or differences without spread
    (all equal), give a zero-width interval at the mean and ``p = 1.0`` (no evidence; SciPy
    gives NaN, or a p of 0 from an infinite t, there).
    """

    diff_mean: float
    ci_low: float
    ci_high: float
    p: float
    n: int

    def as_dict(self) -> dict:
        return {
            "diff_mean": self.diff_mean,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "p": self.p,
        }


def paired_difference(a: Sequence[float], b: Sequence[float]) -> PairedDifference:
    """The paired t-test of ``a`` against ``b`` (same length, pair i = ``a[i], b[i]``)."""
    first, second = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if first.shape != second.shape or first.ndim != 1 or not len(first):
        raise ValueError("a paired difference needs two equally long, non-empty lists")
    differences = first - second
    n = len(differences)
    mean = float(differences.mean())
    if n < 2 or float(differences.std(ddof=1)) <= ZERO_SPREAD:
        return PairedDifference(mean, mean, mean, 1.0, n)
    from scipy import stats

    test = stats.ttest_rel(first, second)
    interval = test.confidence_interval(CONFIDENCE)
    p = float(test.pvalue)
    return PairedDifference(
        mean, float(interval.low), float(interval.high), min(1.0, p) if math.isfinite(p) else 1.0, n
    )


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the given order: the i-th smallest of m is
    multiplied by ``m - i`` (i from 0), kept at least the previous adjusted one, capped at 1
    (``statsmodels.stats.multitest.multipletests(p, method="holm")[1]``)."""
    m = len(pvalues)
    adjusted = [0.0] * m
    running = 0.0
    for rank, index in enumerate(sorted(range(m), key=lambda i: pvalues[i])):
        running = max(running, min(1.0, (m - rank) * float(pvalues[index])))
        adjusted[index] = running
    return adjusted
