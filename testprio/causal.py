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
        return cls(names, bits, regressors, pairs, low, high, weight_by_size[size[low]])

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


def _statistics(basis: _Basis, cell_n: Array, cell_v: Array) -> tuple[Array, int]:
    """Flat vector of every statistic (see ``_Basis.layout``) and the regression's rank."""
    bits, count = basis.bits, basis.count
    applied_n, applied_v = bits.T @ cell_n, bits.T @ cell_v
    rest_n, rest_v = cell_n.sum() - applied_n, cell_v.sum() - applied_v
    rate_applied, rate_not = _ratio(applied_v, applied_n), _ratio(rest_v, rest_n)

    # Weighted least squares on the cells is the row-level OLS: rows of a cell share regressors.
    observed = cell_n > 0
    root = np.sqrt(cell_n[observed])
    coef, _, rank, _ = np.linalg.lstsq(
        basis.regressors[observed] * root[:, None], cell_v[observed] / root, rcond=None
    )
    main, interaction = coef[1 : count + 1], coef[count + 1 :]
    pair_matrix = np.zeros((count, count))
    for (i, j), value in zip(basis.pairs, interaction, strict=True):
        pair_matrix[i, j] = pair_matrix[j, i] = value
    share_applied = applied_n / cell_n.sum()
    regression_ate = main + pair_matrix @ share_applied

    value = np.where(observed, _ratio(cell_v, cell_n), basis.regressors @ coef)
    gains = value[basis.shapley_high] - value[basis.shapley_low]
    shapley = (basis.shapley_weight * gains).sum(axis=1)
    vector = np.concatenate(
        [
            rate_applied,
            rate_not,
            rate_applied - rate_not,
            main,
            regression_ate,
            shapley,
            interaction,
            [coef[0], value[0], value[-1], cell_v.sum() / cell_n.sum()],
        ]
    )
    return vector, int(rank)


def _intervals(replicates: Array, columns: int, confidence: float) -> tuple[Array, Array]:
    """Percentile interval per column; NaN where every replicate is NaN (or none were run)."""
    if len(replicates) == 0:
        return np.full(columns, np.nan), np.full(columns, np.nan)
    tail = (1 - confidence) / 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns give NaN, as meant
        low, high = np.nanquantile(replicates, [tail, 1 - tail], axis=0)
    return low, high


def _json_float(value: float) -> float | None:
    value = float(value)
    return None if math.isnan(value) or math.isinf(value) else value


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
    point, rank = _statistics(basis, cell_n, cell_v)

    clusters_count = len(cluster_ids)
    replicates = []
    for _ in range(n_boot):
        drawn = rng.integers(0, clusters_count, clusters_count)
        weight = np.bincount(drawn, minlength=clusters_count)[pair_cluster]
        replicates.append(
            _statistics(
                basis,
                np.bincount(pair_cell, weights=weight * pair_n, minlength=size),
                np.bincount(pair_cell, weights=weight * pair_v, minlength=size),
            )[0]
        )
    low, high = _intervals(np.array(replicates), len(point), confidence)
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
