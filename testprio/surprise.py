"""Surprise adequacy (Kim et al., ICSE 2019): how far a sample's hidden activations lie from
the activations the model produced on a reference set (usually its training data).

Three measures, each ``(N,)`` float64 where higher means more surprising:

* **LSA** — ``-log`` of a Gaussian kernel density fitted per predicted class on the reference
  activations of that class.
* **DSA** — distance to the nearest reference sample of the same predicted class, divided by
  the distance from that neighbour to its nearest reference sample of another class.
* **MDSA** — squared Mahalanobis distance to the reference activations of the predicted class.

The values equal the PyPI library ``dnn-tip`` 0.1.1 with its defaults, which the tests use as
their oracle: ``MultiModalSA.build_by_class(acts, preds, LSA)`` (LSA keeps the 300 units with
the highest variance per class, scipy's Scott bandwidth), ``DSA(acts, preds)`` and
``MultiModalSA.build_by_class(acts, preds, MDSA)`` (sklearn's ``EmpiricalCovariance``, whose
``mahalanobis`` is the squared distance). Where dnn-tip fails or loses precision we go on:
LSA works in log space (dnn-tip's density underflows to 0, giving ``inf``), and a class whose
covariance is singular (dead or collinear units) keeps a linearly independent subset of its
units instead of raising.

Memory does not grow with the pool: scoring runs batch by batch, and every nearest-neighbour
or kernel sum runs over blocks of the reference with running minima / log-sum-exps, so no
``(N, M)`` matrix is ever built. The reference itself (``M x units``) is held once.

The functions take vectors: a convolutional layer's feature map is made one first, by the mean
over space (one unit per channel, as SADL does) or flattened whole
(:func:`testprio.activations.flatten_activation`, ``--surprise-reduce``).

Fit once with :func:`fit_reference`, ship it with :meth:`SurpriseReference.to_bytes` and score
shards anywhere with :data:`SURPRISE_METRICS`.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from testprio.errors import TestprioError

Activations = np.ndarray | Sequence[np.ndarray]

FORMAT_VERSION = 1
# How a spatial layer (N, C, *spatial) becomes the vectors surprise reads
# (testprio.activations.SPATIAL_REDUCTIONS, --surprise-reduce): the mean over space, as SADL.
DEFAULT_REDUCE = "mean"
# Elements of one (queries x reference) block of squared distances: 4M float64 = 32 MiB.
_BLOCK_ELEMENTS = 1 << 22
# A singular class covariance keeps units whose residual variance (pivoted Cholesky) is above
# this share of the largest unit variance; below it a unit is a linear mix of the kept ones.
_RANK_RTOL = 1e-9
_PRECISIONS = {"float64": np.float64, "float32": np.float32}
_ALL = -1  # group id of the single group when by_class=False


def _flatten(activations: Activations, name: str) -> list[np.ndarray]:
    """Layers as 2-D ``(N, u_i)`` arrays, the way dnn-tip's ``_flatten_layers`` reads them."""
    layers = [activations] if isinstance(activations, np.ndarray) else list(activations)
    if not layers:
        raise TestprioError(f"{name} is an empty list of layers; pass at least one array.")
    flat = []
    for layer in layers:
        layer = np.asarray(layer)
        if layer.ndim < 2 or not np.issubdtype(layer.dtype, np.number):
            raise TestprioError(
                f"{name} must be numeric arrays of shape (N, units) (got shape {layer.shape}, "
                f"dtype {layer.dtype}); flatten each layer per sample first."
            )
        units = int(np.prod(layer.shape[1:]))  # not reshape(N, -1): ambiguous for N == 0
        flat.append(layer.reshape(layer.shape[0], units))
    if len({layer.shape[0] for layer in flat}) != 1:
        raise TestprioError(
            f"{name} layers have different sample counts {[len(a) for a in flat]}; "
            "pass the activations of the same samples for every layer."
        )
    return flat


def _rows(layers: list[np.ndarray], start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of the concatenated layers, as float64 (only this batch is copied)."""
    block = [layer[start:stop].astype(np.float64, copy=False) for layer in layers]
    out = block[0] if len(block) == 1 else np.concatenate(block, axis=1)
    if not np.all(np.isfinite(out)):
        raise TestprioError(
            "activations contain NaN or infinite values; check the model's hidden layer outputs."
        )
    return out


def _classes(predicted: np.ndarray, n: int, name: str) -> np.ndarray:
    predicted = np.asarray(predicted)
    if predicted.shape != (n,):
        raise TestprioError(
            f"{name} must have shape ({n},), one predicted class per activation row "
            f"(got {predicted.shape}); pass argmax of the model's outputs."
        )
    if not np.issubdtype(predicted.dtype, np.integer):
        if not np.issubdtype(predicted.dtype, np.number) or not np.all(
            np.isfinite(predicted) & (predicted == np.round(predicted))
        ):
            raise TestprioError(
                f"{name} must hold integer class ids; pass argmax of the model's outputs."
            )
    return predicted.astype(np.int64)


# ---------------------------------------------------------------------------------------------
# Blocked kernels
# ---------------------------------------------------------------------------------------------


def _block_rows(n_queries: int) -> int:
    return max(1, _BLOCK_ELEMENTS // max(1, n_queries))


def _nearest(
    queries: np.ndarray,
    reference: np.ndarray,
    ref_sq: np.ndarray,
    centre: np.ndarray,
    ranges: list[tuple[int, int]],
    dtype: type,
) -> np.ndarray:
    """Index into ``reference`` of each query's nearest row among ``ranges``.

    ``queries`` are already centred (float64). Squared distances (less the constant ``|q|^2``)
    come from ``|r|^2 - 2 q.r`` block by block, with a running minimum; the first index wins ties
    (strict ``<`` over ascending blocks, ``argmin`` inside one), as dnn-tip's ``argmin`` does.
    """
    q = (-2.0 * queries).astype(dtype, copy=False)  # scaling by -2 is exact in floating point
    best = np.full(len(q), np.inf, dtype=dtype)
    best_idx = np.zeros(len(q), dtype=np.int64)
    step = _block_rows(len(q))
    for start, stop in ranges:
        for lo in range(start, stop, step):
            hi = min(lo + step, stop)
            block = reference[lo:hi].astype(dtype, copy=False) - centre.astype(dtype)
            # |r|^2 - 2 q.r orders the rows as |q - r|^2 does; leaving out |q|^2 saves a pass
            # over the block and the rounding of adding a large constant.
            d2 = q @ block.T
            d2 += ref_sq[lo:hi].astype(dtype)
            local = np.argmin(d2, axis=1)
            local_d2 = d2[np.arange(len(q)), local]
            better = local_d2 < best
            best[better] = local_d2[better]
            best_idx[better] = lo + local[better]
    return best_idx


def _exact_distance(queries: np.ndarray, reference: np.ndarray, idx: np.ndarray, centre):
    """Euclidean distance to the chosen neighbours, recomputed directly (no cancellation)."""
    diff = queries - (reference[idx].astype(np.float64) - centre)
    return np.sqrt(np.einsum("ij,ij->i", diff, diff))


def _log_kernel_sum(queries: np.ndarray, whitened: np.ndarray) -> np.ndarray:
    """``log sum_j exp(-|q - w_j|^2 / 2)`` over blocks of ``whitened``, a running log-sum-exp.

    ``-|q - w|^2 / 2 = q.w - |w|^2 / 2 - |q|^2 / 2``; the last term is the same for every
    ``w``, so it is added once at the end and each block costs a product and three passes.
    """
    peak = np.full(len(queries), -np.inf)
    total = np.zeros(len(queries))
    step = _block_rows(len(queries))
    for lo in range(0, len(whitened), step):
        block = whitened[lo : lo + step]
        expo = queries @ block.T
        expo -= 0.5 * np.einsum("ij,ij->i", block, block)
        new_peak = np.maximum(peak, expo.max(axis=1))
        expo -= new_peak[:, None]
        np.exp(expo, out=expo)
        total = total * np.exp(peak - new_peak) + expo.sum(axis=1)
        peak = new_peak
    return peak + np.log(total) - 0.5 * np.einsum("ij,ij->i", queries, queries)


# ---------------------------------------------------------------------------------------------
# Per-group models
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _Kde:
    """Gaussian KDE of one group, as scipy's ``gaussian_kde`` with Scott's bandwidth."""

    units: np.ndarray  # (d,) kept unit indices
    mean: np.ndarray  # (d,)
    whitening: np.ndarray  # (d, d) inverse Cholesky factor of the kernel covariance
    log_norm: float  # -log n - d/2 log(2 pi) - log det(L)
    whitened: np.ndarray  # (n, d) reference rows, centred and whitened (not serialised)

    def log_density(self, x: np.ndarray) -> np.ndarray:
        if len(self.units) == 0:
            return np.zeros(len(x))
        q = (x[:, self.units] - self.mean) @ self.whitening.T
        return _log_kernel_sum(q, self.whitened) + self.log_norm


def _lsa_units(x: np.ndarray, max_features: int | None, var_threshold: float | None):
    """dnn-tip's unit choice: drop low-variance units, or keep the ``max_features`` highest."""
    var = np.var(x, axis=0)
    removed: np.ndarray = np.zeros(0, dtype=np.int64)
    if var_threshold is not None and var_threshold > 0:
        removed = np.where(var < var_threshold)[0]
    if max_features is not None:
        # Same call as dnn-tip, so that ties in variance drop the same units.
        removed = np.argsort(var)[: -min(max_features, x.shape[1])]
    return np.delete(np.arange(x.shape[1]), removed)


def _independent_units(cov: np.ndarray) -> np.ndarray:
    """Units of a linearly independent subset (pivoted Cholesky), for a singular covariance."""
    residual = cov.copy()
    scale = max(float(np.max(np.diag(cov), initial=0.0)), np.finfo(float).tiny)
    chosen: list[int] = []
    remaining = list(range(len(cov)))
    while remaining:
        diag = np.diag(residual)[remaining]
        best = int(np.argmax(diag))
        if diag[best] <= _RANK_RTOL * scale:
            break
        pivot = remaining.pop(best)
        chosen.append(pivot)
        col = residual[:, pivot] / np.sqrt(residual[pivot, pivot])
        residual = residual - np.outer(col, col)
    return np.sort(np.asarray(chosen, dtype=np.int64))


def _fit_kde(x: np.ndarray, max_features: int | None, var_threshold: float | None) -> _Kde:
    units = _lsa_units(x, max_features, var_threshold)
    cov = np.atleast_2d(np.cov(x[:, units], rowvar=False, ddof=1))
    try:
        chol = np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        # dnn-tip (scipy >= 1.10) raises here; we keep an independent subset of the units.
        keep = _independent_units(cov)
        units, cov = units[keep], cov[np.ix_(keep, keep)]
        chol = np.linalg.cholesky(cov) if len(units) else np.zeros((0, 0))
    factor = len(x) ** (-1.0 / (len(units) + 4))  # Scott's rule, n effective samples
    whitening = np.linalg.inv(chol * factor) if len(units) else np.zeros((0, 0))
    return _rebuild_kde(x, units, whitening)


@dataclass(frozen=True, eq=False)
class _Gauss:
    """Mean and precision (pseudo-inverse of the biased covariance), as sklearn computes them."""

    mean: np.ndarray
    precision: np.ndarray

    def squared_distance(self, x: np.ndarray) -> np.ndarray:
        centred = x - self.mean
        return np.einsum("ij,ij->i", centred @ self.precision, centred)


def _pinvh(a: np.ndarray) -> np.ndarray:
    """scipy.linalg.pinvh with its default cutoff (rtol = max(shape) * eps)."""
    s, u = np.linalg.eigh(a)
    keep = np.abs(s) > np.max(np.abs(s), initial=0.0) * max(a.shape) * np.finfo(a.dtype).eps
    u = u[:, keep]
    return (u / s[keep]) @ u.T


def _fit_gauss(x: np.ndarray) -> _Gauss:
    mean = x.mean(axis=0)
    centred = x - mean
    cov = centred.T @ centred / len(x)
    return _Gauss(mean, _pinvh(cov))


# ---------------------------------------------------------------------------------------------
# The reference
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class SurpriseReference:
    """What scoring needs from the reference set; build it with :func:`fit_reference`.

    ``activations`` ``(M, units)`` are sorted by predicted class (stable, so each class keeps
    the reference order) and ``classes`` ``(M,)`` is that sorted class column.
    """

    activations: np.ndarray
    classes: np.ndarray
    metrics: tuple[str, ...]
    by_class: bool
    lsa_max_features: int | None
    lsa_var_threshold: float | None
    centre: np.ndarray  # (units,) mean of the reference, subtracted before distance products
    ref_sq: np.ndarray  # (M,) squared norms of the centred reference
    other_class_distance: np.ndarray | None  # (M,) for DSA
    kde: dict[int, _Kde | None]
    gauss: dict[int, _Gauss]

    @property
    def units(self) -> int:
        return self.activations.shape[1]

    def class_range(self, cls: int) -> tuple[int, int]:
        return (
            int(np.searchsorted(self.classes, cls, "left")),
            int(np.searchsorted(self.classes, cls, "right")),
        )

    def _group(self, cls: int) -> int:
        return int(cls) if self.by_class else _ALL

    def to_bytes(self) -> bytes:
        """The reference as ``.npz`` bytes (no pickle), for :meth:`from_bytes`."""
        meta = {
            "format": FORMAT_VERSION,
            "metrics": list(self.metrics),
            "by_class": self.by_class,
            "lsa_max_features": self.lsa_max_features,
            "lsa_var_threshold": self.lsa_var_threshold,
            "lsa_groups": {str(g): m is not None for g, m in self.kde.items()},
            "mdsa_groups": [int(g) for g in self.gauss],
        }
        arrays = {
            "meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
            "activations": self.activations,
            "classes": self.classes,
        }
        if self.other_class_distance is not None:
            arrays["other_class_distance"] = self.other_class_distance
        for group, kde in self.kde.items():
            if kde is not None:
                arrays[f"lsa_units_{group}"] = kde.units
                arrays[f"lsa_whitening_{group}"] = kde.whitening
        for group, gauss in self.gauss.items():
            arrays[f"mdsa_mean_{group}"] = gauss.mean
            arrays[f"mdsa_precision_{group}"] = gauss.precision
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> SurpriseReference:
        """Rebuild a reference written by :meth:`to_bytes`."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                arrays = {key: npz[key] for key in npz.files}
            meta = json.loads(arrays.pop("meta").tobytes())
        except Exception as exc:  # noqa: BLE001 - any parse failure means the same to the user
            raise TestprioError(
                "the surprise reference bytes are not a reference written by "
                "SurpriseReference.to_bytes; fit the reference again."
            ) from exc
        if meta.get("format") != FORMAT_VERSION:
            raise TestprioError(
                f"the surprise reference has format {meta.get('format')} but this testprio "
                f"reads format {FORMAT_VERSION}; fit the reference again."
            )
        acts, classes = arrays["activations"], arrays["classes"]
        kde: dict[int, _Kde | None] = {}
        for key, fitted in meta["lsa_groups"].items():
            group = int(key)
            if not fitted:
                kde[group] = None
                continue
            x = _group_rows(acts, classes, group)
            units, whitening = arrays[f"lsa_units_{group}"], arrays[f"lsa_whitening_{group}"]
            kde[group] = _rebuild_kde(x, units, whitening)
        gauss = {
            g: _Gauss(arrays[f"mdsa_mean_{g}"], arrays[f"mdsa_precision_{g}"])
            for g in meta["mdsa_groups"]
        }
        centre, ref_sq = _centre(acts)
        return cls(
            activations=acts,
            classes=classes,
            metrics=tuple(meta["metrics"]),
            by_class=meta["by_class"],
            lsa_max_features=meta["lsa_max_features"],
            lsa_var_threshold=meta["lsa_var_threshold"],
            centre=centre,
            ref_sq=ref_sq,
            other_class_distance=arrays.get("other_class_distance"),
            kde=kde,
            gauss=gauss,
        )


def _group_rows(acts: np.ndarray, classes: np.ndarray, group: int) -> np.ndarray:
    if group == _ALL:
        return acts.astype(np.float64, copy=False)
    lo, hi = np.searchsorted(classes, group, "left"), np.searchsorted(classes, group, "right")
    return acts[lo:hi].astype(np.float64, copy=False)


def _rebuild_kde(x: np.ndarray, units: np.ndarray, whitening: np.ndarray) -> _Kde:
    d = len(units)
    mean = x[:, units].mean(axis=0)
    # log det(L) = -log det(W) for the triangular whitening W = L^-1.
    log_det = -float(np.log(np.abs(np.diag(whitening))).sum()) if d else 0.0
    log_norm = -np.log(len(x)) - 0.5 * d * np.log(2 * np.pi) - log_det
    return _Kde(units, mean, whitening, float(log_norm), (x[:, units] - mean) @ whitening.T)


def _centre(acts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    centre = acts.mean(axis=0, dtype=np.float64)
    ref_sq = np.empty(len(acts))
    step = _block_rows(acts.shape[1])
    for lo in range(0, len(acts), step):
        block = acts[lo : lo + step].astype(np.float64) - centre
        ref_sq[lo : lo + step] = np.einsum("ij,ij->i", block, block)
    return centre, ref_sq


def _other_class_distance(acts, classes, centre, ref_sq, *, batch_size: int) -> np.ndarray:
    """Per reference sample, the distance to its nearest reference sample of another class."""
    out = np.empty(len(acts))
    for cls in np.unique(classes):
        lo, hi = np.searchsorted(classes, cls, "left"), np.searchsorted(classes, cls, "right")
        others = [(0, int(lo)), (int(hi), len(acts))]
        for start in range(lo, hi, batch_size):
            stop = min(start + batch_size, hi)
            q = acts[start:stop].astype(np.float64) - centre
            idx = _nearest(q, acts, ref_sq, centre, others, np.float64)
            out[start:stop] = _exact_distance(q, acts, idx, centre)
    return out


def fit_reference(
    activations: Activations,
    predicted: np.ndarray,
    *,
    metrics: Sequence[str] = ("lsa", "dsa", "mdsa"),
    by_class: bool = True,
    lsa_max_features: int | None = 300,
    lsa_var_threshold: float | None = None,
    batch_size: int = 1024,
) -> SurpriseReference:
    """Fit the reference for the surprise ``metrics`` on reference activations.

    ``activations``: ``(M, units)`` or a list of per-layer ``(M, u_i)`` arrays (concatenated
    along units); ``predicted``: ``(M,)`` the model's predicted class of each reference row.
    ``by_class=False`` fits one LSA/MDSA model on all rows (DSA is always per class).
    LSA keeps per group the ``lsa_max_features`` units of highest variance, or, with
    ``lsa_max_features=None``, the units whose variance reaches ``lsa_var_threshold``
    (dnn-tip's two options; give at most one). DSA's fit is a chunked nearest-other-class
    search over the reference, ``O(M^2 units)``: fit only the metrics you score.
    """
    metrics = (metrics,) if isinstance(metrics, str) else tuple(metrics)
    unknown = sorted(set(metrics) - set(SURPRISE_METRICS))
    if unknown or not metrics:
        raise TestprioError(
            f"unknown surprise metrics {unknown or list(metrics)}; "
            f"choose from {sorted(SURPRISE_METRICS)}."
        )
    if lsa_max_features is not None and lsa_var_threshold is not None:
        raise TestprioError(
            "lsa_max_features and lsa_var_threshold cannot both be set; "
            "pass lsa_max_features=None to select units by variance threshold."
        )
    if lsa_max_features is not None and (
        isinstance(lsa_max_features, bool)
        or not isinstance(lsa_max_features, (int, np.integer))
        or lsa_max_features < 1
    ):
        raise TestprioError(
            f"lsa_max_features must be a positive integer (got {lsa_max_features!r})."
        )
    if batch_size < 1:
        raise TestprioError(f"batch_size must be a positive integer (got {batch_size}).")
    layers = _flatten(activations, "reference activations")
    n = layers[0].shape[0]
    if n == 0:
        raise TestprioError("reference activations have no rows; pass reference samples.")
    classes = _classes(predicted, n, "reference predicted classes")
    order = np.argsort(classes, kind="stable")
    dtype = np.result_type(*layers)
    dtype = dtype if dtype in (np.float32, np.float64) else np.float64
    acts = np.concatenate(layers, axis=1).astype(dtype)
    acts, classes = acts[order], classes[order]
    if not np.all(np.isfinite(acts)):
        raise TestprioError(
            "reference activations contain NaN or infinite values; "
            "check the model's hidden layer outputs."
        )
    centre, ref_sq = _centre(acts)
    groups = [int(c) for c in np.unique(classes)] if by_class else [_ALL]
    kde: dict[int, _Kde | None] = {}
    gauss: dict[int, _Gauss] = {}
    other = None
    if "lsa" in metrics:
        for group in groups:
            x = _group_rows(acts, classes, group)
            # A KDE bandwidth needs a covariance, which needs two samples.
            kde[group] = _fit_kde(x, lsa_max_features, lsa_var_threshold) if len(x) > 1 else None
    if "mdsa" in metrics:
        gauss = {group: _fit_gauss(_group_rows(acts, classes, group)) for group in groups}
    if "dsa" in metrics:
        if len(np.unique(classes)) < 2:
            raise TestprioError(
                "DSA needs reference samples of at least two predicted classes (got "
                f"{len(np.unique(classes))}); pass more reference data or drop 'dsa'."
            )
        other = _other_class_distance(acts, classes, centre, ref_sq, batch_size=batch_size)
    return SurpriseReference(
        activations=acts,
        classes=classes,
        metrics=tuple(m for m in SURPRISE_METRICS if m in metrics),
        by_class=by_class,
        lsa_max_features=lsa_max_features,
        lsa_var_threshold=lsa_var_threshold,
        centre=centre,
        ref_sq=ref_sq,
        other_class_distance=other,
        kde=kde,
        gauss=gauss,
    )


# ---------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------


def _score(
    metric: str,
    reference: SurpriseReference,
    activations: Activations,
    predicted: np.ndarray,
    batch_size: int,
    score_group: Callable[[int, np.ndarray], np.ndarray],
) -> np.ndarray:
    """Validate, then score batch by batch and within a batch class by class."""
    if not isinstance(reference, SurpriseReference):
        raise TestprioError(
            f"{metric} needs a SurpriseReference from fit_reference "
            f"(got {type(reference).__name__})."
        )
    if metric not in reference.metrics:
        raise TestprioError(
            f"the surprise reference was fitted without '{metric}' (it has "
            f"{list(reference.metrics)}); fit it again with metrics including '{metric}'."
        )
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, (int, np.integer))
        or (batch_size < 1)
    ):
        raise TestprioError(f"batch_size must be a positive integer (got {batch_size!r}).")
    layers = _flatten(activations, "activations")
    n = layers[0].shape[0]
    units = sum(layer.shape[1] for layer in layers)
    if units != reference.units:
        raise TestprioError(
            f"activations have {units} units but the surprise reference has {reference.units}; "
            "take both from the same layers of the same model."
        )
    classes = _classes(predicted, n, "predicted classes")
    known = set(np.unique(reference.classes).tolist())
    missing = sorted(set(np.unique(classes).tolist()) - known)
    if missing:
        raise TestprioError(
            f"samples are predicted as classes {missing[:10]} that no reference sample is "
            f"predicted as, so {metric} has nothing to compare them with; pass reference data "
            "that covers every class the model predicts."
        )
    out = np.empty(n)
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        x = _rows(layers, start, stop)
        batch_classes = classes[start:stop]
        for cls in np.unique(batch_classes):
            rows = np.flatnonzero(batch_classes == cls)
            out[start + rows] = score_group(int(cls), x[rows])
    return out


def lsa(
    reference: SurpriseReference,
    activations: Activations,
    predicted: np.ndarray,
    *,
    batch_size: int = 4096,
) -> np.ndarray:
    """Likelihood-based surprise ``-log p(x)`` -> ``(N,)`` float64, higher is more surprising.

    ``activations`` ``(N, units)`` (or per-layer list) and ``predicted`` ``(N,)`` classes.
    """

    def score_group(cls: int, x: np.ndarray) -> np.ndarray:
        model = reference.kde[reference._group(cls)]
        if model is None:
            raise TestprioError(
                f"LSA needs at least 2 reference samples predicted as class {cls} (found 1); "
                "pass more reference data or fit with by_class=False."
            )
        return -model.log_density(x)

    return _score("lsa", reference, activations, predicted, batch_size, score_group)


def mdsa(
    reference: SurpriseReference,
    activations: Activations,
    predicted: np.ndarray,
    *,
    batch_size: int = 4096,
) -> np.ndarray:
    """Mahalanobis surprise (squared distance to the class) -> ``(N,)``, higher is worse."""

    def score_group(cls: int, x: np.ndarray) -> np.ndarray:
        return reference.gauss[reference._group(cls)].squared_distance(x)

    return _score("mdsa", reference, activations, predicted, batch_size, score_group)


def dsa(
    reference: SurpriseReference,
    activations: Activations,
    predicted: np.ndarray,
    *,
    batch_size: int = 4096,
    precision: str = "float64",
) -> np.ndarray:
    """Distance-based surprise ``a / b`` -> ``(N,)`` float64, higher is more surprising.

    ``a``: distance to the nearest reference sample of the predicted class; ``b``: distance
    from that neighbour to the nearest reference sample of another class. ``b == 0`` (the
    neighbour coincides with another class's sample) gives ``inf``, or ``0`` when ``a == 0``
    too. ``precision="float32"`` finds neighbours with float32 products (about twice as fast;
    a near tie may pick another neighbour); distances are always recomputed in float64.
    """
    if precision not in _PRECISIONS:
        raise TestprioError(
            f"unknown DSA precision {precision!r}; choose from {sorted(_PRECISIONS)}."
        )
    dtype = _PRECISIONS[precision]

    def score_group(cls: int, x: np.ndarray) -> np.ndarray:
        q = x - reference.centre
        span = [reference.class_range(cls)]
        idx = _nearest(q, reference.activations, reference.ref_sq, reference.centre, span, dtype)
        a = _exact_distance(q, reference.activations, idx, reference.centre)
        b = reference.other_class_distance[idx]
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(b > 0, a / np.where(b > 0, b, 1.0), np.where(a > 0, np.inf, 0.0))

    return _score("dsa", reference, activations, predicted, batch_size, score_group)


SURPRISE_METRICS: dict[str, Callable[..., np.ndarray]] = {
    "lsa": lsa,
    "dsa": dsa,
    "mdsa": mdsa,
}
