"""Model checks from testing deep-learning code, run on the converted model with pool samples.

Each check takes ``predict`` (a float batch ``(N, *sample_shape)`` -> class probabilities
``(N, K)``), the samples ``x`` and their ``sample_ids``, and returns a record with
``passed``, a ``detail`` sentence and its figures. Differences are measured on
probabilities, the numbers every uncertainty score is computed from.

A failed check warns; with ``--strict-model-checks`` it fails the run.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Predict = Callable[[np.ndarray], np.ndarray]

# Largest difference in any probability that still counts as "the same output". Float32
# round-off of a reordered sum is ~1e-7; a model that depends on its batch or on chance
# (batch statistics, dropout left on) differs by orders of magnitude more.
CHECK_TOLERANCE = 1e-5
# Samples run one at a time by the batch-independence check.
SINGLE_SAMPLES = 8


def max_difference(a: np.ndarray, b: np.ndarray) -> float:
    """Largest absolute difference; NaN in both places counts as equal, in one as infinite."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    both_nan = np.isnan(a) & np.isnan(b)
    diff = np.where(both_nan, 0.0, np.abs(a - b))
    diff = np.where(np.isnan(diff), np.inf, diff)
    return float(diff.max()) if diff.size else 0.0


def deterministic(predict: Predict, x: np.ndarray, sample_ids: np.ndarray) -> dict:
    """The same batch twice gives the same output."""
    difference = max_difference(predict(x), predict(x))
    passed = difference <= CHECK_TOLERANCE
    return {
        "passed": passed,
        "max_difference": difference,
        "samples": len(x),
        "detail": (
            f"the same batch of {len(x)} run twice differs by at most {difference:.3g}"
            + ("" if passed else " (random operations such as dropout left on?)")
        ),
    }


def batch_independent(predict: Predict, x: np.ndarray, sample_ids: np.ndarray) -> dict:
    """Each sample run alone gives the output it gets inside the batch."""
    together = predict(x)
    count = min(SINGLE_SAMPLES, len(x))
    alone = np.concatenate([predict(x[i : i + 1]) for i in range(count)])
    difference = max_difference(alone, together[:count])
    passed = difference <= CHECK_TOLERANCE
    return {
        "passed": passed,
        "max_difference": difference,
        "samples": count,
        "batch": len(x),
        "detail": (
            f"{count} samples alone and inside a batch of {len(x)} differ by at most "
            f"{difference:.3g}" + ("" if passed else " (batch statistics used at inference?)")
        ),
    }


def finite_outputs(predict: Predict, x: np.ndarray, sample_ids: np.ndarray) -> dict:
    """No NaN or infinite output."""
    bad = ~np.isfinite(predict(x)).all(axis=1)
    ids = [int(i) for i in np.asarray(sample_ids)[bad]]
    shown = ", ".join(str(i) for i in ids[:10]) + (" ..." if len(ids) > 10 else "")
    return {
        "passed": not ids,
        "non_finite_samples": len(ids),
        "sample_ids": ids[:100],
        "detail": (
            f"all {len(x)} outputs are finite"
            if not ids
            else f"{len(ids)} of {len(x)} outputs hold NaN or Inf (sample_id {shown})"
        ),
    }


def class_rows(predict: Predict, x: np.ndarray, sample_ids: np.ndarray) -> dict:
    """A batch of N and a batch of 1 both give rows of the same K >= 2 class probabilities."""
    whole, single = predict(x), predict(x[:1])
    classes = int(whole.shape[1]) if whole.ndim == 2 else None
    sums = whole.sum(axis=1) if whole.ndim == 2 else np.array([np.nan])
    finite = np.isfinite(sums)
    passed = (
        whole.shape == (len(x), classes)
        and single.shape == (1, classes)
        and classes is not None
        and classes >= 2
        and bool(np.allclose(sums[finite], 1.0, atol=1e-3))
    )
    return {
        "passed": passed,
        "classes": classes,
        "detail": (
            f"batches of {len(x)} and 1 give shapes {tuple(whole.shape)} and "
            f"{tuple(single.shape)}, rows of {classes} class probabilities"
        ),
    }


MODEL_CHECKS: dict[str, Callable[[Predict, np.ndarray, np.ndarray], dict]] = {
    "deterministic": deterministic,
    "batch_independent": batch_independent,
    "finite_outputs": finite_outputs,
    "class_rows": class_rows,
}


def run_model_checks(predict: Predict, x: np.ndarray, sample_ids: np.ndarray) -> dict:
    """Every check of ``MODEL_CHECKS`` on ``x``: ``{name: record}``."""
    return {name: check(predict, x, sample_ids) for name, check in MODEL_CHECKS.items()}


def failed_checks(results: dict) -> dict:
    return {name: record for name, record in results.items() if not record["passed"]}
