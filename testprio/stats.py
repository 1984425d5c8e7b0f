"""Small-sample statistics without SciPy at run time: Student's t distribution, the mean with
its t-interval, the paired t-test, and Holm's step-down correction.

The t distribution's tails come from the regularized incomplete beta function (a continued
fraction, as in Numerical Recipes' ``betacf``), so that an interval and its test always agree:
a 95% interval of a paired difference excludes 0 exactly when the two-sided p is below 0.05.
``tests/test_stats.py`` checks every function against ``scipy.stats`` (and Holm against a
hand-computed case).

Pure Python and NumPy: ``testprio.retrain`` (the accuracies' intervals) and
``testprio.evaluation`` (the verdicts) both import it, and it imports neither.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Spread of paired differences at or below this is none: they are one value up to round-off
# (accuracies are multiples of 1 / test size, their differences exact or a few ulps apart).
ZERO_SPREAD = 1e-12


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    fraction = d
    for m in range(1, 400):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            fraction *= c * d
        if abs(c * d - 1.0) < eps:
            break
    return fraction


def incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function ``I_x(a, b)`` for ``a, b > 0``, ``0 <= x <= 1``."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    # The fraction converges fast below the mean a / (a + b); above it, use the symmetry.
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: float) -> float:
    """``P(|T| >= |t|)`` for Student's T with ``df`` degrees of freedom (``df > 0``)."""
    if math.isinf(t):
        return 0.0
    return incomplete_beta(df / 2.0, 0.5, df / (df + t * t))


@functools.lru_cache(maxsize=256)
def t_quantile(q: float, df: int) -> float:
    """The ``q`` quantile of Student's t with ``df`` degrees of freedom, ``0.5 <= q < 1``
    (by bisection on :func:`t_two_sided_p`, to about 1e-12)."""
    if df < 1:
        raise ValueError("df must be at least 1")
    if not 0.5 <= q < 1.0:
        raise ValueError("q must be in [0.5, 1)")
    target = 2.0 * (1.0 - q)  # the two-sided tail beyond the quantile
    low, high = 0.0, 1.0
    while t_two_sided_p(high, df) > target:
        low, high = high, high * 2.0
    for _ in range(200):
        middle = (low + high) / 2.0
        if t_two_sided_p(middle, df) > target:
            low = middle
        else:
            high = middle
        if high - low < 1e-12 * max(1.0, high):
            break
    return (low + high) / 2.0


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (df >= 1): the
    factor of a two-sided 95% interval."""
    return t_quantile(0.975, df)


def mean_ci(values: Sequence[float]) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean and its 95% t-interval ``mean +- t * s / sqrt(n)``
    (``s`` the sample standard deviation), clipped to [0, 1] (the values are accuracies).
    One value gives a zero-width interval."""
    data = np.asarray(values, dtype=np.float64)
    mean = float(data.mean())
    if len(data) < 2:
        return mean, mean, mean
    half = t_quantile_975(len(data) - 1) * float(data.std(ddof=1)) / math.sqrt(len(data))
    return mean, max(0.0, mean - half), min(1.0, mean + half)


@dataclass(frozen=True)
class PairedDifference:
    """The paired difference ``a - b`` over n pairs: its mean, 95% t-interval and the
    two-sided p-value of the paired t-test (``scipy.stats.ttest_rel(a, b)``).

    Where the test is undefined it is not passed: one pair, or differences without spread
    (all equal), give a zero-width interval at the mean and ``p = 1.0`` (no evidence).
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
    spread = float(differences.std(ddof=1)) if n > 1 else 0.0
    if n < 2 or spread <= ZERO_SPREAD:
        return PairedDifference(mean, mean, mean, 1.0, n)
    error = spread / math.sqrt(n)
    half = t_quantile_975(n - 1) * error
    p = min(1.0, t_two_sided_p(mean / error, n - 1))
    return PairedDifference(mean, mean - half, mean + half, p, n)


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
