"""Summary figures of a ranking: histograms, class x score counts, accuracy and APFD.

Pure NumPy over arrays given in ranking order (most uncertain first).
"""

from __future__ import annotations

import numpy as np

from testprio.metrics import METRIC_UPPER_BOUNDS, METRICS

HISTOGRAM_BINS = 20


def apfd(misclassified: np.ndarray) -> dict | None:
    """APFD of a prioritisation, given ``(n,)`` booleans in ranked order (True = fault).

    ``APFD = 1 - sum(1-based ranks of faults) / (k n) + 1 / (2 n)``; higher is better.
    ``normalized`` maps it onto [0, 1] between the worst order (all faults last) and the
    best (all faults first) for the same k and n. Returns None without any fault.
    """
    n = int(len(misclassified))
    k = int(np.count_nonzero(misclassified))
    if n == 0 or k == 0:
        return None
    rank_sum = float(np.flatnonzero(misclassified).sum() + k)  # 0-based positions -> ranks
    raw = 1.0 - rank_sum / (k * n) + 1.0 / (2 * n)
    best = 1.0 - k / (2 * n)
    worst = k / (2 * n)
    normalized = (raw - worst) / (best - worst) if best > worst else None
    return {
        "raw": raw,
        "normalized": normalized,
        "best": best,
        "worst": worst,
        "faults": k,
        "samples": n,
    }


def score_bins(values: np.ndarray, upper: float, bins: int = HISTOGRAM_BINS) -> np.ndarray:
    """Bin index 0..bins-1 of each value on ``[0, upper]`` (values at the edge go last)."""
    if upper <= 0:
        return np.zeros(len(values), dtype=np.int16)
    index = np.floor(values.astype(np.float32) * np.float32(bins / upper))
    return np.clip(index, 0, bins - 1).astype(np.int16)


def _edges(upper: float, bins: int = HISTOGRAM_BINS) -> list[float]:
    return np.linspace(0.0, upper, bins + 1).round(6).tolist()


def _nan_to_none(values: np.ndarray) -> list[float | None]:
    return [None if np.isnan(v) else round(float(v), 6) for v in values]


def _grouped_mean(values: np.ndarray, groups: np.ndarray, size: int) -> list[float | None]:
    counts = np.bincount(groups, minlength=size)
    sums = np.bincount(groups, weights=values, minlength=size)
    with np.errstate(invalid="ignore", divide="ignore"):
        return _nan_to_none(sums / counts)


def build_summary(
    ranked: dict[str, np.ndarray],
    *,
    metric: str,
    num_classes: int,
    samples_in: int,
    quarantined: int,
    top: list[dict],
) -> dict:
    """Figures for ``summary.json`` from ``ranked`` columns (each ``(n,)``, ranking order).

    ``ranked`` holds ``predicted``, every metric, and ``label`` (-1 where unknown).
    """
    predicted = ranked["predicted"].astype(np.int64)
    n = len(predicted)
    k = num_classes
    histograms, per_class_mean = {}, {}
    bins_of = {}
    for name in METRICS:
        upper = METRIC_UPPER_BOUNDS[name](k)
        bins_of[name] = score_bins(ranked[name], upper)
        histograms[name] = {
            "edges": _edges(upper),
            "counts": np.bincount(bins_of[name], minlength=HISTOGRAM_BINS).tolist(),
            "mean": round(float(ranked[name].mean()), 6) if n else None,
        }
        per_class_mean[name] = _grouped_mean(ranked[name], predicted, k)
    class_bins = np.bincount(
        predicted * HISTOGRAM_BINS + bins_of[metric], minlength=k * HISTOGRAM_BINS
    ).reshape(k, HISTOGRAM_BINS)
    summary = {
        "metric": metric,
        "num_classes": k,
        "counts": {"samples": samples_in, "ranked": n, "quarantined": quarantined},
        "histograms": histograms,
        "class_score_bins": {
            "metric": metric,
            "edges": histograms[metric]["edges"],
            "counts": class_bins.tolist(),
        },
        "predicted_counts": np.bincount(predicted, minlength=k).tolist(),
        "per_class_mean": per_class_mean,
        "labels": _label_figures(ranked["label"], predicted, bins_of[metric], k),
        "top": top,
    }
    return summary


def _label_figures(
    label: np.ndarray, predicted: np.ndarray, metric_bins: np.ndarray, k: int
) -> dict | None:
    known = label >= 0
    labeled = int(known.sum())
    if not labeled:
        return None
    truth, guess = label[known].astype(np.int64), predicted[known]
    wrong = truth != guess
    bins = metric_bins[known]
    bin_counts = np.bincount(bins, minlength=HISTOGRAM_BINS)
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = np.bincount(bins, weights=wrong, minlength=HISTOGRAM_BINS) / bin_counts
    classes = max(k, int(truth.max()) + 1)
    return {
        "labeled": labeled,
        "accuracy": round(float(1.0 - wrong.mean()), 6),
        "misclassified": int(wrong.sum()),
        "apfd": apfd(wrong),
        "misclassification_rate_per_bin": _nan_to_none(rate),
        "per_class_accuracy": _grouped_mean((~wrong).astype(np.float64), truth, classes),
    }
