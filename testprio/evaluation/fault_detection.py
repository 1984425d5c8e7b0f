"""How well an order finds the faults (the pool's misclassified samples), pure: APFD, faults
found in the top b% of the pool, and the fault-detection curve. Higher is better for each.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from testprio.summary import apfd

# Points of each prioritizer's fault-detection curve in evaluation.json: every 1% of the
# pool (ranks 0, N/100, ..., N), enough for a smooth line at about 2 KB a prioritizer.
CURVE_POINTS = 101


def budget_size(n: int, budget: float) -> int:
    """Samples in the top ``budget`` percent of ``n``: ``ceil(budget * n / 100)``, at least 1."""
    # The small slack keeps 10% of 100 at 10 despite float round-off.
    return min(n, max(1, math.ceil(budget * n / 100 - 1e-9)))


def curve_ranks(n: int, *, points: int = CURVE_POINTS) -> np.ndarray:
    """Up to ``points`` evenly spaced numbers of samples inspected, from 0 to ``n`` (both
    always included), rounded to whole ranks: ``(P,)`` int64, ascending, unique."""
    return np.unique(np.linspace(0, n, min(points, n + 1)).round().astype(np.int64))


def fault_curve(
    orders: list[np.ndarray], misclassified: np.ndarray, *, points: int = CURVE_POINTS
) -> list[list[float]] | None:
    """The fault-detection curve of ``orders`` (one per seed, pool positions, most
    interesting first) over ``misclassified`` ``(N,)`` bool: ``[[share of the pool
    inspected, share of the faults found], ...]`` at :func:`curve_ranks` (the first point is
    ``[0, 0]``, the last ``[1, 1]``), exact at those ranks; with several orders the share
    found is their mean at each rank. None when the pool has no fault. Higher is better.
    """
    misclassified = np.asarray(misclassified, dtype=bool)
    n, faults = len(misclassified), int(misclassified.sum())
    if not n or not faults:
        return None
    ranks = curve_ranks(n, points=points)
    found = np.mean(
        [np.concatenate([[0], np.cumsum(misclassified[order])])[ranks] for order in orders],
        axis=0,
    )
    # Six decimals: far below a pixel, and short numbers in the file.
    return [
        [round(float(x), 6), round(float(y), 6)]
        for x, y in zip(ranks / n, found / faults, strict=True)
    ]


def evaluate_orders(
    orders: list[np.ndarray], misclassified: np.ndarray, budgets: Iterable[float]
) -> dict:
    """APFD, faults found and the fault-detection curve of one prioritizer's ``orders`` (one
    per seed, positions into the pool, most interesting first) over ``misclassified``
    ``(N,)`` bool.

    Returns ``{"apfd": {"raw", "normalized"} (means over the orders; None without faults),
    "faults": [{"budget", "selected", "found", "of"}], "curve": fault_curve(...)}``; with
    several orders each also carries ``per_seed`` lists.
    """
    misclassified = np.asarray(misclassified, dtype=bool)
    n, faults = len(misclassified), int(misclassified.sum())
    per_order = [apfd(misclassified[order]) for order in orders]
    result: dict[str, Any] = {"apfd": None, "faults": []}
    if per_order[0] is not None:
        raw = [float(a["raw"]) for a in per_order]
        normalized = [a["normalized"] for a in per_order]
        result["apfd"] = {
            "raw": float(np.mean(raw)),
            "normalized": None if None in normalized else float(np.mean(normalized)),
        }
        if len(orders) > 1:
            result["apfd"].update(raw_per_seed=raw, normalized_per_seed=normalized)
    for budget in budgets:
        size = budget_size(n, budget)
        found = [int(misclassified[order[:size]].sum()) for order in orders]
        entry = {
            "budget": budget,
            "selected": size,
            "found": float(np.mean(found)) if len(found) > 1 else found[0],
            "of": faults,
        }
        if len(orders) > 1:
            entry["found_per_seed"] = found
        result["faults"].append(entry)
    result["curve"] = fault_curve(orders, misclassified)
    return result
