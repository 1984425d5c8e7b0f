"""Each score against a three-line reference, plus planted cases."""

import numpy as np
import pytest

from testprio import metrics
from testprio.errors import TestprioError
from tests.conftest import make_deterministic


def _reference_gini(p):
    return np.array([1 - sum(v * v for v in row) for row in p])


def _reference_entropy(p):
    return np.array([-sum(v * np.log(v) for v in row if v > 0) for row in p])


def _reference_margin(p):
    return np.array([1 - (sorted(row)[-1] - sorted(row)[-2]) for row in p])


def _reference_least_confidence(p):
    return np.array([1 - max(row) for row in p])


REFERENCES = {
    "gini": _reference_gini,
    "entropy": _reference_entropy,
    "margin": _reference_margin,
    "least_confidence": _reference_least_confidence,
}


def _random_probs(n=200, k=7, seed=0):
    rng = make_deterministic(seed)
    return metrics.softmax(rng.normal(0, 3, (n, k)))


def test_every_metric_has_a_reference():
    assert set(REFERENCES) == set(metrics.METRICS)


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_metric_matches_reference(name):
    probs = _random_probs()
    np.testing.assert_allclose(metrics.METRICS[name](probs), REFERENCES[name](probs), atol=1e-12)


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_uniform_row_scores_highest_and_one_hot_lowest(name):
    k = 5
    probs = np.vstack([np.eye(k)[2], np.full(k, 1 / k), _random_probs(50, k, seed=3)])
    values = metrics.METRICS[name](probs)
    assert values.argmax() == 1
    assert values.argmin() == 0
    assert values[0] == pytest.approx(0.0, abs=1e-12)
    assert values[1] == pytest.approx(metrics.METRIC_UPPER_BOUNDS[name](k))


def test_softmax_rows_sum_to_one_and_survive_large_logits():
    logits = np.array([[1000.0, 0.0, -1000.0], [1.0, 2.0, 3.0]], dtype=np.float32)
    probs = metrics.softmax(logits)
    assert np.isfinite(probs).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    np.testing.assert_allclose(probs[1], np.exp([1, 2, 3]) / np.exp([1, 2, 3]).sum())


def test_score_probabilities_columns_and_dtypes():
    probs = np.array([[0.1, 0.7, 0.2], [0.5, 0.5, 0.0]])
    scores = metrics.score_probabilities(probs)
    assert scores["predicted"].tolist() == [1, 0]  # ties go to the first class
    assert scores["predicted"].dtype == np.int32
    np.testing.assert_allclose(scores["confidence"], [0.7, 0.5])
    assert all(scores[name].dtype == np.float32 for name in metrics.METRICS)
    np.testing.assert_allclose(scores["margin"], [0.5, 1.0], rtol=1e-6)


def test_single_class_margin_is_defined():
    assert metrics.margin(np.array([[1.0]])).tolist() == [0.0]


def test_looks_like_probabilities():
    assert metrics.looks_like_probabilities(_random_probs())
    assert not metrics.looks_like_probabilities(np.array([[2.0, -1.0]]))
    assert not metrics.looks_like_probabilities(np.array([[0.2, 0.2]]))
    assert not metrics.looks_like_probabilities(np.empty((0, 3)))


def test_unknown_metric_is_refused():
    with pytest.raises(TestprioError, match="unknown metric 'ginny'; choose one of gini"):
        metrics.check_metric("ginny")
