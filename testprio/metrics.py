"""Uncertainty scores of class-probability rows. Pure NumPy: arrays in, arrays out.

For every metric a higher value means the model is less sure, so sorting descending puts
the inputs most worth labelling first.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from testprio.errors import TestprioError


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``(N, K)`` logits, computed in float64 for stability."""
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def gini(probs: np.ndarray) -> np.ndarray:
    """DeepGini impurity ``1 - sum_i p_i^2`` of ``(N, K)`` probabilities -> ``(N,)``."""
    return 1.0 - np.einsum("ij,ij->i", probs, probs)


def entropy(probs: np.ndarray) -> np.ndarray:
    """Shannon entropy ``-sum_i p_i ln p_i`` (nats) of ``(N, K)`` probabilities -> ``(N,)``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(probs > 0, probs * np.log(np.where(probs > 0, probs, 1.0)), 0.0)
    return -terms.sum(axis=1)


def _top_two(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if probs.shape[1] == 1:
        return probs[:, 0], np.zeros(len(probs), dtype=probs.dtype)
    top = np.partition(probs, -2, axis=1)
    return top[:, -1], top[:, -2]


def margin(probs: np.ndarray) -> np.ndarray:
    """``1 - (p_top1 - p_top2)`` of ``(N, K)`` probabilities -> ``(N,)``."""
    first, second = _top_two(probs)
    return 1.0 - (first - second)


def least_confidence(probs: np.ndarray) -> np.ndarray:
    """``1 - p_top1`` of ``(N, K)`` probabilities -> ``(N,)``."""
    return 1.0 - probs.max(axis=1)


METRICS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "gini": gini,
    "entropy": entropy,
    "margin": margin,
    "least_confidence": least_confidence,
}

# Largest value each metric can take for K classes (the uniform distribution's score), used
# to lay histogram bins over the metric's whole range.
METRIC_UPPER_BOUNDS: dict[str, Callable[[int], float]] = {
    "gini": lambda k: 1.0 - 1.0 / k,
    "entropy": lambda k: float(np.log(k)),
    "margin": lambda k: 1.0,
    "least_confidence": lambda k: 1.0 - 1.0 / k,
}


def check_metric(name: str) -> str:
    if name not in METRICS:
        raise TestprioError(f"unknown metric '{name}'; choose one of {', '.join(METRICS)}.")
    return name


def score_probabilities(probs: np.ndarray) -> dict[str, np.ndarray]:
    """All scores of ``(N, K)`` probabilities: each metric, ``predicted`` and ``confidence``.

    Scores are float32 ``(N,)``; ``predicted`` is the int32 arg-max (first index on ties).
    """
    scores = {name: fn(probs).astype(np.float32) for name, fn in METRICS.items()}
    scores["predicted"] = probs.argmax(axis=1).astype(np.int32)
    scores["confidence"] = probs.max(axis=1).astype(np.float32)
    return scores


def looks_like_probabilities(outputs: np.ndarray, *, tolerance: float = 1e-3) -> bool:
    """True when every ``(N, K)`` row is non-negative and sums to 1 within ``tolerance``."""
    if outputs.size == 0:
        return False
    return bool(
        (outputs >= -tolerance).all()
        and np.allclose(outputs.sum(axis=1), 1.0, atol=tolerance, rtol=0)
    )
