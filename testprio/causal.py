"""Causal attribution of metamorphic violations in a randomised 2^T factorial design.

Every follow-up row applies a subset of T transforms (indicators ``(R, T)`` 0/1, each drawn
independently with probability 1/2) and has a binary outcome (violated). Because the
assignment is randomised, the difference in mean outcome between rows with and without a
transform estimates its average treatment effect (ATE) on the violation probability, with no
model assumptions.

Everything here is a function of the cell table: for each of the 2^T cells (which subset was
applied), how many rows fell in it and how many violated. Rows of one source sample are
correlated (same image, same source prediction), so intervals come from a cluster bootstrap:
source samples are resampled with replacement and every statistic is recomputed on the
reweighted cell table; the interval is the percentile interval of the replicates.

Statistics per transform t:
- ``rate_applied`` / ``rate_not_applied``: violation rate of rows with / without t;
  ``ate`` = their difference.
- Regression of violated on the indicators and all pairwise products (OLS, i.e. a linear
  probability model): ``regression_main`` is t's coefficient (effect of t when no other
  transform is applied); ``regression_ate`` = main + sum_j interaction(t, j) * mean(z_j), the
  ATE the fitted model implies when averaging over the other transforms' assignment.
- Shapley value with v(S) = violation probability when exactly the transforms in S are
  applied (the cell mean; for a cell with no rows, the regression's prediction). Shapley
  values add up to v(all) - v(empty). With at most pairwise interactions and assignment
  probability 1/2 the Shapley value equals the ATE; they differ when three or more transforms
  interact (Shapley splits a k-way interaction equally, 1/k each; the ATE gives each
  transform 1/2^(k-1) of it).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import combinations

import numpy as np

Array = np.ndarray


@dataclass(frozen=True)
class _Basis:
    """Everything about the 2^T cells that does not depend on the data."""

    names: list[str]
    bits: Array  # (2^T, T) 0/1: which transforms a cell applies
    regressors: Array  # (2^T, p): 1, indicators, pairwise products
    outer: Array  # (2^T, p * p): each cell's regressors' outer product, for X' diag(n) X
    pairs: list[tuple[int, int]]
    shapley_low: Array  # (T, 2^(T-1)) cells without t
    shapley_high: Array  # (T, 2^(T-1)) the same cells with t added
    shapley_weight: Array  # (T, 2^(T-1)) |S|! (T - |S| - 1)! / T!

    @classmethod
    def build(cls, names: list[str]) -> _Basis:
        count = len(names)
        cells = np.arange(2**count)
        bits = ((cells[:, None] >> np.arange(count)) & 1).astype(np.float64)
        pairs = list(combinations(range(count), 2))
        products = [bits[:, i] * bits[:, j] for i, j in pairs]
        regressors = np.column_stack([np.ones(len(cells)), bits, *products])
        size = bits.sum(axis=1).astype(int)
        weight_by_size = np.array(
            [
                math.factorial(s) * math.factorial(count - s - 1) / math.factorial(count)
                for s in range(count)
            ]
        )
        low = np.stack([cells[(cells >> t) & 1 == 0] for t in range(count)])
        high = low | (1 << np.arange(count))[:, None]
        outer = (regressors[:, :, None] * regressors[:, None, :]).reshape(len(cells), -1)
        return cls(names, bits, regressors, outer, pairs, low, high, weight_by_size[size[low]])

    @property
    def count(self) -> int:
        return len(self.names)

    def layout(self) -> dict[str, slice]:
        """Where each statistic sits in the flat vector ``_statistics`` returns."""
        t, k = self.count, len(self.pairs)
        sizes = {
            "rate_applied": t,
            "rate_not_applied": t,
            "ate": t,
            "regression_main": t,
            "regression_ate": t,
            "shapley": t,
            "interaction": k,
            "intercept": 1,
            "v_empty": 1,
            "v_all": 1,
            "violation_rate": 1,
        }
        slices, start = {}, 0
        for key, size in sizes.items():
            slices[key] = slice(start, start + size)
            start += size
        return slices


def _ratio(numerator: Array, denominator: Array) -> Array:
    out = np.full(np.shape(numerator), np.nan)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def _statistics(basis: _Basis, cell_n: Array, cell_v: Array) -> Array:
    """Every statistic (see ``_Basis.layout``) for B cell tables ``(B, 2^T)`` -> ``(B, K)``."""
    bits, count, regressors = basis.bits, basis.count, basis.regressors
    total_n, total_v = cell_n.sum(axis=1, keepdims=True), cell_v.sum(axis=1, keepdims=True)
    applied_n, applied_v = cell_n @ bits, cell_v @ bits
    rate_applied = _ratio(applied_v, applied_n)
    rate_not = _ratio(total_v - applied_v, total_n - applied_n)

    # Rows of a cell share their regressors, so the row-level OLS is least squares on the
    # cells weighted by their counts: normal equations G coef = X' v, with G = X' diag(n) X.
    size = regressors.shape[1]
    gram = (cell_n @ basis.outer).reshape(len(cell_n), size, size)
    moments = (cell_v @ regressors)[:, :, None]
    try:
        coef = np.linalg.solve(gram, moments)[:, :, 0]
    except np.linalg.LinAlgError:
        # Some table misses cells: the pseudo-inverse gives lstsq's minimum-norm answer.
        coef = (np.linalg.pinv(gram, rtol=1e-10) @ moments)[:, :, 0]
    main, interaction = coef[:, 1 : count + 1], coef[:, count + 1 :]
    pair_matrix = np.zeros((len(coef), count, count))
    first, second = np.array(basis.pairs, dtype=np.int64).reshape(-1, 2).T
    pair_matrix[:, first, second] = interaction
    pair_matrix[:, second, first] = interaction
    share_applied = _ratio(applied_n, total_n)
    regression_ate = main + (pair_matrix @ share_applied[:, :, None])[:, :, 0]

    value = np.where(cell_n > 0, _ratio(cell_v, cell_n), coef @ regressors.T)
    gains = value[:, basis.shapley_high] - value[:, basis.shapley_low]  # (B, T, 2^(T-1))
    shapley = (basis.shapley_weight[None] * gains).sum(axis=2)
    return np.concatenate(
        [
            rate_applied,
            rate_not,
            rate_applied - rate_not,
            main,
            regression_ate,
            shapley,
            interaction,
            coef[:, :1],
            value[:, :1],
            value[:, -1:],
            _ratio(total_v, total_n),
        ],
        axis=1,
    )


def _regression_rank(basis: _Basis, cell_n: Array) -> int:
    """Rank of the row-level regressors: full (``n_params``) when every term is identified."""
    return int(np.linalg.matrix_rank(basis.regressors[cell_n > 0]))


def _intervals(replicates: Array, confidence: float) -> tuple[Array, Array]:
    """Percentile interval per column; NaN where every replicate is NaN (or none were run)."""
    if len(replicates) == 0:
        return np.full(replicates.shape[1], np.nan), np.full(replicates.shape[1], np.nan)
    tail = (1 - confidence) / 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns give NaN, as meant
        low, high = np.nanquantile(replicates, [tail, 1 - tail], axis=0)
    return low, high


def _json_float(value: float) -> float | None:
    value = float(value)
    return None if math.isnan(value) or math.isinf(value) else value


def _bootstrap_tables(
    pair_cluster: Array,
    pair_cell: Array,
    pair_n: Array,
    pair_v: Array,
    clusters: int,
    size: int,
    rng: np.random.Generator,
    n_boot: int,
) -> Iterator[tuple[Array, Array]]:
    """Cell tables ``(B, 2^T)`` (counts, violations) of cluster-bootstrap replicates, in blocks.

    A replicate draws ``clusters`` source samples with replacement; its cell table is the
    multiplicity-weighted sum of the per-cluster tables, a matrix product. Blocks keep the
    weights ``(B, clusters)`` and dense per-cluster tables ``(clusters', 2^T)`` near 32 MB.
    """
    replicate_block = max(1, 2**22 // clusters)
    cluster_block = max(1, 2**22 // size)
    for begin in range(0, n_boot, replicate_block):
        count = min(replicate_block, n_boot - begin)
        weights = np.stack(
            [
                np.bincount(rng.integers(0, clusters, clusters), minlength=clusters)
                for _ in range(count)
            ]
        ).astype(np.float64)
        tables_n, tables_v = np.zeros((count, size)), np.zeros((count, size))
        for first in range(0, clusters, cluster_block):
            last = min(first + cluster_block, clusters)
            inside = (pair_cluster >= first) & (pair_cluster < last)
            slot = (pair_cluster[inside] - first) * size + pair_cell[inside]
            shape = (last - first, size)
            dense_n = np.bincount(slot, pair_n[inside], shape[0] * size).reshape(shape)
            dense_v = np.bincount(slot, pair_v[inside], shape[0] * size).reshape(shape)
            tables_n += weights[:, first:last] @ dense_n
            tables_v += weights[:, first:last] @ dense_v
        yield tables_n, tables_v


def _analyse(
    basis: _Basis,
    cells: Array,
    outcome: Array,
    clusters: Array,
    rng: np.random.Generator,
    n_boot: int,
    confidence: float,
) -> dict:
    size = 2**basis.count
    cluster_ids, cluster_index = np.unique(clusters, return_inverse=True)
    # Compress rows to (cluster, cell) pairs: a replicate only reweights these.
    keys, pair_index = np.unique(cluster_index * size + cells, return_inverse=True)
    pair_n = np.bincount(pair_index).astype(np.float64)
    pair_v = np.bincount(pair_index, weights=outcome)
    pair_cluster, pair_cell = keys // size, keys % size
    cell_n = np.bincount(pair_cell, weights=pair_n, minlength=size)
    cell_v = np.bincount(pair_cell, weights=pair_v, minlength=size)
    point = _statistics(basis, cell_n[None], cell_v[None])[0]
    rank = _regression_rank(basis, cell_n)

    clusters_count = len(cluster_ids)
    replicates = [
        _statistics(basis, *tables)
        for tables in _bootstrap_tables(
            pair_cluster, pair_cell, pair_n, pair_v, clusters_count, size, rng, n_boot
        )
    ]
    low, high = _intervals(
        np.concatenate(replicates) if replicates else np.empty((0, len(point))), confidence
    )
    at = basis.layout()

    def stat(key: str, index: int = 0) -> dict:
        position = at[key].start + index
        return {
            "value": _json_float(point[position]),
            "ci_low": _json_float(low[position]),
            "ci_high": _json_float(high[position]),
        }

    effects = []
    applied_n = basis.bits.T @ cell_n
    for index, name in enumerate(basis.names):
        record = {
            "transform": name,
            "n_applied": int(applied_n[index]),
            "n_not_applied": int(cell_n.sum() - applied_n[index]),
            "rate_applied": _json_float(point[at["rate_applied"].start + index]),
            "rate_not_applied": _json_float(point[at["rate_not_applied"].start + index]),
        }
        for key in ("ate", "regression_main", "regression_ate", "shapley"):
            found = stat(key, index)
            record[key] = found["value"]
            record[f"{key}_ci_low"] = found["ci_low"]
            record[f"{key}_ci_high"] = found["ci_high"]
        effects.append(record)
    interactions = []
    for index, (i, j) in enumerate(basis.pairs):
        found = stat("interaction", index)
        interactions.append(
            {
                "a": basis.names[i],
                "b": basis.names[j],
                "coef": found["value"],
                "ci_low": found["ci_low"],
                "ci_high": found["ci_high"],
            }
        )
    parameters = basis.regressors.shape[1]
    shapley = point[at["shapley"]]
    return {
        "n_samples": int(clusters_count),
        "n_rows": int(cell_n.sum()),
        "violation_rate": _json_float(point[at["violation_rate"].start]),
        "effects": effects,
        "interactions": interactions,
        "regression": {
            "terms": ["intercept", *basis.names]
            + [f"{basis.names[i]}:{basis.names[j]}" for i, j in basis.pairs],
            "intercept": stat("intercept")["value"],
            "n_params": parameters,
            "rank": rank,
            "identified": rank == parameters,
        },
        "shapley_values": {
            "v_empty": stat("v_empty")["value"],
            "v_all": stat("v_all")["value"],
            "sum": _json_float(shapley.sum()),
            "cells_observed": int((cell_n > 0).sum()),
            "cells_total": size,
        },
    }


def factorial_attribution(
    applied: Array,
    outcome: Array,
    clusters: Array,
    *,
    names: list[str],
    groups: Array | None = None,
    seed: int = 0,
    n_boot: int = 1000,
    confidence: float = 0.95,
) -> dict:
    """Attribute a binary outcome to T randomised binary factors (see the module docstring).

    ``applied (R, T)`` 0/1 per row and factor (named by ``names``), ``outcome (R,)`` 0/1
    (1 = worse: violated), ``clusters (R,)`` the source sample of each row (resampled by the
    bootstrap), ``groups (R,)`` optional non-negative integer group per row (source predicted
    class) for a per-group analysis of the same kind. The caller validates the arrays. Returns
    a JSON-serialisable dict (NaN -> None): n_samples, n_rows, violation_rate, effects,
    interactions, regression, shapley_values, confidence, n_boot, seed and, with groups,
    ``per_class`` (records with ``class`` and the same keys).
    """
    basis = _Basis.build(list(names))
    cells = (np.asarray(applied, dtype=np.int64) << np.arange(basis.count)).sum(axis=1)
    outcome = np.asarray(outcome, dtype=np.float64)
    result = {
        "transforms": list(names),
        "confidence": confidence,
        "n_boot": n_boot,
        "seed": seed,
        **_analyse(
            basis, cells, outcome, clusters, np.random.default_rng([seed, 0]), n_boot, confidence
        ),
    }
    if groups is not None:
        result["per_class"] = [
            {
                "class": int(group),
                **_analyse(
                    basis,
                    cells[groups == group],
                    outcome[groups == group],
                    clusters[groups == group],
                    np.random.default_rng([seed, 1, int(group)]),
                    n_boot,
                    confidence,
                ),
            }
            for group in np.unique(groups)
        ]
    return result
