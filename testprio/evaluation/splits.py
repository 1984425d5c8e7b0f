"""Several seeded pool/test splits (``--splits N``): the evaluations of the N splits pooled
into evaluation.json's top level (pure).

What "pooled" means, field by field:

- ``retrain[i]``: the accuracies of every (split, seed), split by split (N x seeds values),
  with their mean and t-interval; ``vs_random`` pairs them by (split, seed) (random's
  selection, the pool and the test split are the same within a pair), Holm-adjusted again
  over the pooled comparisons; ``controls`` likewise;
- ``apfd``, ``faults[i].found`` and ``of``, ``curve``, ``pool`` and ``baseline_accuracy``:
  the mean over the splits (APFD over the splits whose pool has a fault); every split's
  pool and test split have the same sizes (``samples``), so the curves share their points;
- ``degenerate``: in any split (``distinct_values`` the fewest, ``modal_share`` the
  largest of any split);
- the rest of a prioritizer's entry (description, the instability settings and
  attribution): split 0's.

``per_split`` keeps each split's own figures, with its own Holm family.
"""

from __future__ import annotations

import numpy as np

from testprio.evaluation.statistics import (
    accuracy_summary,
    retrain_summary,
    winners,
    with_vs_random,
)

# A split's own figures, as per_split keeps them.
SPLIT_FIELDS = ("samples", "pool", "baseline_accuracy", "prioritizers", "controls", "winners")


def _mean(values: list) -> float:
    return float(np.mean(values))


def _pooled_apfd(scores: list[dict | None]) -> dict | None:
    present = [score for score in scores if score is not None]
    if not present:
        return None
    normalized = [score["normalized"] for score in present]
    return {
        "raw": _mean([score["raw"] for score in present]),
        "normalized": None if None in normalized else _mean(normalized),
    }


def _pooled_curve(curves: list[list | None]) -> list | None:
    if any(curve is None for curve in curves):
        return None
    points = np.asarray(curves, dtype=np.float64)  # (splits, points, 2): the same x in each
    return [[round(x, 6), round(y, 6)] for x, y in points.mean(axis=0).tolist()]


def _pooled_prioritizer(entries: list[dict]) -> dict:
    """One prioritizer's pooled entry from its entry in each split (see the module)."""
    first = entries[0]
    faults = [
        {
            "budget": row["budget"],
            "selected": row["selected"],
            "found": _mean([entry["faults"][i]["found"] for entry in entries]),
            "of": _mean([entry["faults"][i]["of"] for entry in entries]),
            "found_per_split": [entry["faults"][i]["found"] for entry in entries],
        }
        for i, row in enumerate(first["faults"])
    ]
    spreads = [
        entry["distinct_values"] for entry in entries if entry["distinct_values"] is not None
    ]
    shares = [entry["modal_share"] for entry in entries if entry["modal_share"] is not None]
    pooled = {
        **first,
        "apfd": _pooled_apfd([entry["apfd"] for entry in entries]),
        "faults": faults,
        "curve": _pooled_curve([entry["curve"] for entry in entries]),
        "degenerate": any(entry["degenerate"] for entry in entries),
        "distinct_values": min(spreads) if spreads else None,
        "modal_share": max(shares) if shares else None,
        "order_seconds": round(sum(entry["order_seconds"] for entry in entries), 3),
    }
    if "retrain" in first:
        pooled["retrain"] = retrain_summary(
            {
                row["budget"]: [
                    value for entry in entries for value in entry["retrain"][i]["accuracies"]
                ]
                for i, row in enumerate(first["retrain"])
            }
        )
    return pooled


def pool_splits(evaluations: list[dict]) -> dict:
    """evaluation.json's content from the evaluations of N splits (each as
    ``experiment._evaluate`` returns it, in split order): the pooled figures at the top
    level, each split's in ``per_split`` (``{split, samples, pool, baseline_accuracy,
    prioritizers, controls, winners}``)."""
    first = evaluations[0]
    prioritizers = with_vs_random(
        {
            name: _pooled_prioritizer(
                [evaluation["prioritizers"][name] for evaluation in evaluations]
            )
            for name in first["prioritizers"]
        }
    )
    return {
        **first,
        "pool": {
            key: _mean([evaluation["pool"][key] for evaluation in evaluations])
            for key in ("misclassified", "accuracy")
        },
        "baseline_accuracy": _mean([evaluation["baseline_accuracy"] for evaluation in evaluations]),
        "prioritizers": prioritizers,
        "controls": {
            name: accuracy_summary(
                [
                    value
                    for evaluation in evaluations
                    for value in evaluation["controls"][name]["accuracies"]
                ]
            )
            for name in first["controls"]
        },
        "winners": winners(prioritizers, first["budgets"]),
        "per_split": [
            {"split": k, **{field: evaluation[field] for field in SPLIT_FIELDS}}
            for k, evaluation in enumerate(evaluations)
        ],
    }
