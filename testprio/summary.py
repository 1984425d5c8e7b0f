"""Summary figures of a ranking: histograms, class x score counts, accuracy and APFD.

Pure NumPy over arrays given in ranking order (most uncertain first).
"""

from __future__ import annotations

import numpy as np

from testprio.metrics import METRIC_UPPER_BOUNDS, METRICS

HISTOGRAM_BINS = 20
COUNT_PIECE = 2**20
# A prioritizer whose scores take one value for at least this share of the pool is
# degenerate: its order there is the tie-break's, the sample-id order.
DEGENERATE_SHARE = 0.95


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


def score_spread(scores: np.ndarray) -> dict:
    """How many values a prioritizer's ``(N,)`` scores take: ``{"degenerate",
    "distinct_values", "modal_share"}``, ``modal_share`` the share of the pool holding the
    most common value; degenerate when it is at least ``DEGENERATE_SHARE`` (one value, or one
    value for nearly every sample: the order is then the sample-id order). NaNs count as one
    value."""
    values = np.asarray(scores).ravel()
    if not len(values):
        return {"degenerate": False, "distinct_values": 0, "modal_share": None}
    _, counts = np.unique(values, return_counts=True)
    share = float(counts.max()) / len(values)
    return {
        "degenerate": share >= DEGENERATE_SHARE,
        "distinct_values": int(len(counts)),
        "modal_share": round(share, 6),
    }


DEGENERATE_NOTE = "constant on this pool: its order is the sample-id order"


def degenerate_note(entry: dict) -> str:
    """What to say beside a prioritizer (an entry with :func:`score_spread`'s fields, as
    evaluation.json and summary.json hold them): the note when it is degenerate, else ''."""
    if entry.get("degenerate") is not True:
        return ""
    share, distinct = entry.get("modal_share"), entry.get("distinct_values")
    if isinstance(share, int | float) and share < 1 and isinstance(distinct, int):
        return f"{DEGENERATE_NOTE} ({share:.0%} of the pool share one of {distinct} values)"
    return DEGENERATE_NOTE


def score_bins(values: np.ndarray, upper: float, bins: int = HISTOGRAM_BINS) -> np.ndarray:
    """Bin index 0..bins-1 of each value on ``[0, upper]`` (values at the edge go last)."""
    if upper <= 0:
        return np.zeros(len(values), dtype=np.int16)
    index = values.astype(np.float32, copy=False) * np.float32(bins / upper)
    np.floor(index, out=index)  # in place: one float32 temporary, not three
    np.clip(index, 0, bins - 1, out=index)
    return index.astype(np.int16)


def _edges(upper: float, bins: int = HISTOGRAM_BINS) -> list[float]:
    return np.linspace(0.0, upper, bins + 1).round(6).tolist()


def _nan_to_none(values: np.ndarray) -> list[float | None]:
    return [None if np.isnan(v) else round(float(v), 6) for v in values]


def _counts(groups: np.ndarray, size: int) -> np.ndarray:
    """``np.bincount(groups, minlength=size)`` a million at a time.

    bincount copies its input to int64 first; in pieces that copy stays small, and integer
    counts add up exactly in any order.
    """
    counts = np.zeros(size, np.int64)
    for start in range(0, len(groups), COUNT_PIECE):
        piece = np.bincount(groups[start : start + COUNT_PIECE], minlength=size)
        if len(piece) > len(counts):
            counts = np.concatenate([counts, np.zeros(len(piece) - len(counts), np.int64)])
        counts[: len(piece)] += piece
    return counts


def _grouped_mean(values: np.ndarray, groups: np.ndarray, size: int) -> list[float | None]:
    counts = _counts(groups, size)
    # In one call: float sums in another order could round differently.
    sums = np.bincount(groups, weights=values, minlength=size)
    with np.errstate(invalid="ignore", divide="ignore"):
        return _nan_to_none(sums / counts)


def _grouped_rate(hits: np.ndarray, groups: np.ndarray, size: int) -> list[float | None]:
    """Share of ``hits`` (booleans) per group: the mean of 0/1 values, counted exactly."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return _nan_to_none(_counts(groups[hits], size) / _counts(groups, size))


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

    ``ranked`` holds ``predicted``, every metric, and ``label`` (-1 where unknown); when
    ``metric`` is another score column (coverage, surprise, instability) also that column,
    binned over its own finite range (infinite values in the last bin).
    Temporaries stay within a few ``(n,)`` arrays (no int64 copies are kept, only the chosen
    metric's bins), so the rank stage's memory does not peak here.
    """
    predicted = ranked["predicted"]
    n = len(predicted)
    k = num_classes
    histograms, per_class_mean = {}, {}
    metric_bins = np.empty(0, np.int16)
    for name in METRICS:
        upper = METRIC_UPPER_BOUNDS[name](k)
        bins = score_bins(ranked[name], upper)
        histograms[name] = {
            "edges": _edges(upper),
            "counts": _counts(bins, HISTOGRAM_BINS).tolist(),
            "mean": round(float(ranked[name].mean()), 6) if n else None,
        }
        per_class_mean[name] = _grouped_mean(ranked[name], predicted, k)
        if name == metric:
            metric_bins = bins
        del bins
    if metric not in METRICS:  # a coverage, surprise or instability column: its own range
        values = ranked[metric].astype(np.float64)
        finite = values[np.isfinite(values)]
        low = float(finite.min()) if len(finite) else 0.0
        high = float(finite.max()) if len(finite) else 0.0
        shifted = np.where(np.isfinite(values), values - low, high - low)  # inf: last bin
        metric_bins = score_bins(shifted, high - low)
        histograms[metric] = {
            "edges": np.linspace(low, high, HISTOGRAM_BINS + 1).round(6).tolist(),
            "counts": _counts(metric_bins, HISTOGRAM_BINS).tolist(),
            "mean": round(float(finite.mean()), 6) if len(finite) else None,
        }
        per_class_mean[metric] = _grouped_mean(
            np.where(np.isfinite(values), values, 0.0), predicted, k
        )
    class_of_bin = predicted.astype(np.int32)  # a copy, then updated in place
    class_of_bin *= np.int32(HISTOGRAM_BINS)
    class_of_bin += metric_bins
    class_bins = _counts(class_of_bin, k * HISTOGRAM_BINS).reshape(k, HISTOGRAM_BINS)
    del class_of_bin
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
        "predicted_counts": _counts(predicted, k).tolist(),
        "per_class_mean": per_class_mean,
        "labels": _label_figures(ranked["label"], predicted, metric_bins, k),
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
    truth = label[known]
    wrong = truth != predicted[known]
    rate = _grouped_rate(wrong, metric_bins[known], HISTOGRAM_BINS)
    classes = max(k, int(truth.max()) + 1)
    return {
        "labeled": labeled,
        "accuracy": round(float(1.0 - wrong.mean()), 6),
        "misclassified": int(wrong.sum()),
        "apfd": apfd(wrong),
        "misclassification_rate_per_bin": rate,
        "per_class_accuracy": _grouped_rate(~wrong, truth, classes),
    }
