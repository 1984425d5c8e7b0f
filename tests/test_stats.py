"""testprio.stats: the t-interval and the paired t-test as scipy.stats computes them, what the
evaluation reports where they are undefined, and Holm's correction against a case worked by
hand."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as reference

from testprio import stats


def test_mean_ci_is_the_t_interval_and_contains_the_mean():
    values = [0.81, 0.84, 0.79, 0.83, 0.80]
    mean, low, high = stats.mean_ci(values)
    expected = reference.t.interval(
        0.95, len(values) - 1, loc=np.mean(values), scale=reference.sem(values)
    )
    assert mean == pytest.approx(np.mean(values))
    assert (low, high) == pytest.approx(expected, abs=1e-12)
    assert stats.mean_ci([0.7]) == (0.7, 0.7, 0.7)  # one seed: no spread to measure
    assert stats.mean_ci([0.99, 1.0, 0.9])[2] == 1.0  # an accuracy interval stays in [0, 1]


@pytest.mark.parametrize("n", [2, 3, 5, 10, 40])
def test_paired_difference_is_scipys_paired_t_test(n):
    rng = np.random.default_rng(n)
    a = rng.normal(0.80, 0.01, n)
    b = a - rng.normal(0.004, 0.006, n)
    found = stats.paired_difference(a, b)
    test = reference.ttest_rel(a, b)
    interval = test.confidence_interval(0.95)
    assert found.diff_mean == pytest.approx(np.mean(a - b), abs=1e-15)
    assert found.p == pytest.approx(test.pvalue, rel=1e-9)
    assert (found.ci_low, found.ci_high) == pytest.approx((interval.low, interval.high), abs=1e-12)
    assert found.n == n
    # The interval and the test agree: 0 lies outside exactly when p < 0.05.
    assert (found.ci_low > 0 or found.ci_high < 0) == (found.p < 0.05)


def test_paired_difference_where_the_test_is_undefined():
    one = stats.paired_difference([0.9], [0.85])
    assert one.as_dict() == pytest.approx(
        {"diff_mean": 0.05, "ci_low": 0.05, "ci_high": 0.05, "p": 1.0}
    )
    # scipy gives NaN (all zero) or a zero p (infinite t) here; neither is evidence.
    same = stats.paired_difference([0.9, 0.8, 0.7], [0.9, 0.8, 0.7])
    assert same.as_dict() == {"diff_mean": 0.0, "ci_low": 0.0, "ci_high": 0.0, "p": 1.0}
    shifted = stats.paired_difference([0.9, 0.8, 0.7], [0.875, 0.775, 0.675])
    assert shifted.p == 1.0 and shifted.ci_low == shifted.ci_high == pytest.approx(0.025)
    with pytest.raises(ValueError, match="two equally long, non-empty lists"):
        stats.paired_difference([0.9, 0.8], [0.9])


def test_holm_by_hand():
    # m = 4. Sorted: 0.005*4 = 0.02; 0.01*3 = 0.03; 0.03*2 = 0.06; 0.04*1 = 0.04 -> 0.06 (kept
    # at least the previous one); back in the given order.
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5, 0.6]) == [1.0, 1.0]  # capped at 1
    assert stats.holm([0.02, 0.02]) == pytest.approx([0.04, 0.04])  # ties
    assert stats.holm([0.3]) == [0.3] and stats.holm([]) == []
