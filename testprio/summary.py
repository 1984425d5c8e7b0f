"""Summary figures of a ranking: histograms, class x score counts, accuracy and APFD.

Pure NumPy over arrays given in ranking order (most uncertain first): ``build_summary`` takes
the whole ranking at once, ``SummaryStream`` the same figures from pieces of it, in order, in
memory that does not grow with the pool. Counts add up in any order; the float sums are
taken in the order and grouping ``build_summary``'s NumPy calls use (``PairwiseSum``, running
``bincount`` totals), so both give the same bytes in summary.json.
"""

from __future__ import annotations

from collections import deque

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
    return apfd_of_positions(n, k, int(np.flatnonzero(misclassified).sum()) if k else 0)


def apfd_of_positions(samples: int, faults: int, position_sum: int) -> dict | None:
    """:func:`apfd` from its counts: ``samples`` in the order, ``faults`` among them and the
    sum of the faults' 0-based positions (an exact integer), for an order seen a piece at a
    time."""
    n, k = int(samples), int(faults)
    if n == 0 or k == 0:
        return None
    rank_sum = float(int(position_sum) + k)  # 0-based positions -> ranks
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
        return spread_of_counts(0, 0, 0)
    _, counts = np.unique(values, return_counts=True)
    return spread_of_counts(len(values), len(counts), int(counts.max()))


def spread_of_counts(samples: int, distinct: int, modal: int) -> dict:
    """:func:`score_spread` from its counts: ``samples`` scores taking ``distinct`` values, the
    most common one ``modal`` times."""
    if not samples:
        return {"degenerate": False, "distinct_values": 0, "modal_share": None}
    share = float(modal) / samples
    return {
        "degenerate": share >= DEGENERATE_SHARE,
        "distinct_values": int(distinct),
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
    return _summary(
        metric=metric,
        num_classes=k,
        counts={"samples": samples_in, "ranked": n, "quarantined": quarantined},
        histograms=histograms,
        class_bins=class_bins,
        predicted_counts=_counts(predicted, k),
        per_class_mean=per_class_mean,
        labels=_label_figures(ranked["label"], predicted, metric_bins, k),
        top=top,
    )


def _summary(
    *,
    metric: str,
    num_classes: int,
    counts: dict,
    histograms: dict,
    class_bins: np.ndarray,
    predicted_counts: np.ndarray,
    per_class_mean: dict,
    labels: dict | None,
    top: list[dict],
) -> dict:
    """summary.json's figures, in its key order (``build_summary`` and ``SummaryStream``)."""
    return {
        "metric": metric,
        "num_classes": num_classes,
        "counts": counts,
        "histograms": histograms,
        "class_score_bins": {
            "metric": metric,
            "edges": histograms[metric]["edges"],
            "counts": class_bins.tolist(),
        },
        "predicted_counts": predicted_counts.tolist(),
        "per_class_mean": per_class_mean,
        "labels": labels,
        "top": top,
    }


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


# --- the same figures from pieces of the ranking ------------------------------------------

# NumPy sums a contiguous float array pairwise: halves (the first a multiple of 8 long) down
# to blocks of 128. A node of the tree whose values all lie in one block of at most this many
# is summed by NumPy itself, so each node gives NumPy's own bits.
PAIRWISE_LEAF = 2**16


def _pairwise_leaves(count: int, leaf: int):
    """Lengths, in order, of the nodes of NumPy's pairwise tree over ``count`` values that
    hold at most ``leaf`` values and whose parent holds more."""
    if count <= leaf:
        yield count
        return
    half = count // 2
    half -= half % 8
    yield from _pairwise_leaves(half, leaf)
    yield from _pairwise_leaves(count - half, leaf)


class PairwiseSum:
    """``np.add.reduce`` of ``count`` values (a float dtype) given a piece at a time, in order:
    the same bits as one call over all of them, holding at most ``leaf`` values."""

    def __init__(self, count: int, dtype, *, leaf: int = PAIRWISE_LEAF):
        self.count, self.dtype, self.leaf = int(count), np.dtype(dtype), leaf
        self._lengths = deque(_pairwise_leaves(self.count, leaf)) if self.count else deque()
        self._sums: list = []
        self._pending: list[np.ndarray] = []
        self._pending_count = 0

    def add(self, values: np.ndarray) -> None:
        values = np.asarray(values)
        if values.dtype != self.dtype:
            raise TypeError(f"PairwiseSum of {self.dtype} given {values.dtype} values")
        while len(values):
            if not self._lengths:
                raise ValueError(f"more than the {self.count} values announced")
            take = self._lengths[0] - self._pending_count
            self._pending.append(values[:take])
            self._pending_count += len(self._pending[-1])
            values = values[take:]
            if self._pending_count == self._lengths[0]:
                block = (
                    self._pending[0] if len(self._pending) == 1 else np.concatenate(self._pending)
                )
                self._sums.append(np.add.reduce(block))
                self._pending, self._pending_count = [], 0
                self._lengths.popleft()

    def total(self):
        """The sum (a NumPy scalar of ``dtype``) once all ``count`` values were added."""
        if self._lengths or not self.count:
            raise ValueError(f"PairwiseSum holds {len(self._sums)} blocks of {self.count} values")
        sums = iter(self._sums)

        def node(count: int):
            if count <= self.leaf:
                return next(sums)
            half = count // 2
            half -= half % 8
            left = node(half)
            return left + node(count - half)

        return node(self.count)

    def mean(self):
        """``ndarray.mean``'s value: the sum divided as NumPy's ``_mean`` divides it."""
        total = self.total()
        return total.dtype.type(total / np.intp(self.count))


def _add_counts(total: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """``total`` plus ``_counts(groups, len(total))``, longer where ``groups`` go further."""
    piece = _counts(groups, len(total))
    if len(piece) > len(total):
        total = np.concatenate([total, np.zeros(len(piece) - len(total), np.int64)])
    total[: len(piece)] += piece
    return total


def _add_weights(total: np.ndarray, groups: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Running ``np.bincount(groups, weights=values)``: the totals so far go in first, so each
    group adds its values one at a time in order, exactly as one call over the whole."""
    size = len(total)
    return np.bincount(
        np.concatenate([np.arange(size), groups]),
        weights=np.concatenate([total, values.astype(np.float64)]),
        minlength=size,
    )


class SummaryStream:
    """``build_summary``'s figures from pieces of the ranking given in ranking order.

    ``samples``: the rows that will come (the means need it up front). ``metric_range``:
    for a ``metric`` that is not a class metric, ``(low, high, finite)`` of its finite values
    over the whole pool (its histogram's range and the count its mean divides by). Each piece
    (``add``) holds ``predicted``, every class metric, ``label`` (-1 where unknown) and such a
    ``metric``, each ``(m,)``. Memory: a few arrays of classes x bins, one block of
    ``PAIRWISE_LEAF`` values per mean.
    """

    def __init__(
        self,
        *,
        metric: str,
        num_classes: int,
        samples: int,
        metric_range: tuple[float, float, int] | None = None,
    ):
        self.metric, self.k, self.samples = metric, num_classes, int(samples)
        self.seen = 0
        self._names = [*METRICS, *([] if metric in METRICS else [metric])]
        self._bins = {name: np.zeros(HISTOGRAM_BINS, np.int64) for name in self._names}
        self._sums = {name: np.zeros(num_classes) for name in self._names}
        self._means = {name: PairwiseSum(self.samples, np.float32) for name in METRICS}
        if metric not in METRICS:
            if metric_range is None:
                raise ValueError(f"SummaryStream of {metric} needs its metric_range")
            self._low, self._high, finite = metric_range
            self._means[metric] = PairwiseSum(finite, np.float64)
        self._predicted = np.zeros(num_classes, np.int64)
        self._class_bins = np.zeros(num_classes * HISTOGRAM_BINS, np.int64)
        # Labels: counts so far, and per score bin and per true class.
        self._labeled = self._wrong = self._position_sum = 0
        self._bin_known = np.zeros(HISTOGRAM_BINS, np.int64)
        self._bin_wrong = np.zeros(HISTOGRAM_BINS, np.int64)
        self._truth = np.zeros(num_classes, np.int64)
        self._truth_right = np.zeros(num_classes, np.int64)
        self._max_label = -1

    def add(self, ranked: dict[str, np.ndarray]) -> None:
        predicted = np.asarray(ranked["predicted"]).astype(np.intp, copy=False)
        self.seen += len(predicted)
        metric_bins = None
        for name in METRICS:
            values = ranked[name]
            bins = score_bins(values, METRIC_UPPER_BOUNDS[name](self.k))
            self._bins[name] = _add_counts(self._bins[name], bins)
            self._means[name].add(values)
            self._sums[name] = _add_weights(self._sums[name], predicted, values)
            if name == self.metric:
                metric_bins = bins
        if self.metric not in METRICS:
            values = ranked[self.metric].astype(np.float64)
            finite = np.isfinite(values)
            shifted = np.where(finite, values - self._low, self._high - self._low)
            metric_bins = score_bins(shifted, self._high - self._low)
            self._bins[self.metric] = _add_counts(self._bins[self.metric], metric_bins)
            self._means[self.metric].add(values[finite])
            self._sums[self.metric] = _add_weights(
                self._sums[self.metric], predicted, np.where(finite, values, 0.0)
            )
        self._predicted = _add_counts(self._predicted, predicted)
        class_of_bin = predicted.astype(np.int32)
        class_of_bin *= np.int32(HISTOGRAM_BINS)
        class_of_bin += metric_bins
        self._class_bins = _add_counts(self._class_bins, class_of_bin)
        self._add_labels(np.asarray(ranked["label"]), predicted, metric_bins)

    def _add_labels(self, label: np.ndarray, predicted: np.ndarray, metric_bins) -> None:
        known = label >= 0
        truth = label[known]
        if not len(truth):
            return
        wrong = truth != predicted[known]
        faults = np.flatnonzero(wrong)
        self._position_sum += int(faults.sum()) + self._labeled * len(faults)
        self._labeled += len(truth)
        self._wrong += len(faults)
        known_bins = metric_bins[known]
        self._bin_known = _add_counts(self._bin_known, known_bins)
        self._bin_wrong = _add_counts(self._bin_wrong, known_bins[wrong])
        self._truth = _add_counts(self._truth, truth)
        self._truth_right = _add_counts(self._truth_right, truth[~wrong])
        self._max_label = max(self._max_label, int(truth.max()))

    def _label_figures(self) -> dict | None:
        if not self._labeled:
            return None
        classes = max(self.k, self._max_label + 1)
        truth = np.zeros(classes, np.int64)
        right = np.zeros(classes, np.int64)
        truth[: len(self._truth)] = self._truth
        right[: len(self._truth_right)] = self._truth_right
        # wrong.mean() of booleans: their exact count as float64, divided by an intp count.
        error = np.float64(self._wrong) / np.intp(self._labeled)
        with np.errstate(invalid="ignore", divide="ignore"):
            return {
                "labeled": self._labeled,
                "accuracy": round(float(1.0 - error), 6),
                "misclassified": self._wrong,
                "apfd": apfd_of_positions(self._labeled, self._wrong, self._position_sum),
                "misclassification_rate_per_bin": _nan_to_none(self._bin_wrong / self._bin_known),
                "per_class_accuracy": _nan_to_none(right / truth),
            }

    def summary(self, *, samples_in: int, quarantined: int, top: list[dict]) -> dict:
        """The figures of ``build_summary``, once all ``samples`` rows were added."""
        if self.seen != self.samples:
            raise ValueError(f"SummaryStream got {self.seen} of {self.samples} rows")
        n = self.samples
        histograms, per_class_mean = {}, {}
        counts = self._predicted
        for name in self._names:
            if name in METRICS:
                edges = _edges(METRIC_UPPER_BOUNDS[name](self.k))
            else:
                edges = np.linspace(self._low, self._high, HISTOGRAM_BINS + 1).round(6).tolist()
            mean = self._means[name]
            histograms[name] = {
                "edges": edges,
                "counts": self._bins[name].tolist(),
                "mean": round(float(mean.mean()), 6) if mean.count else None,
            }
            with np.errstate(invalid="ignore", divide="ignore"):
                per_class_mean[name] = _nan_to_none(self._sums[name] / counts)
        return _summary(
            metric=self.metric,
            num_classes=self.k,
            counts={"samples": samples_in, "ranked": n, "quarantined": quarantined},
            histograms=histograms,
            class_bins=self._class_bins.reshape(self.k, HISTOGRAM_BINS),
            predicted_counts=self._predicted,
            per_class_mean=per_class_mean,
            labels=self._label_figures(),
            top=top,
        )
