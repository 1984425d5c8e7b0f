"""Statistics over the evaluation's seeds: each prioritizer's retrained accuracy per budget
as a mean with its 95% interval, and the best prioritizer(s) per budget.

The interval itself is ``testprio.stats.mean_ci`` (a Student t-interval); how it is
computed is recorded in evaluation.json as ``retraining.interval`` (``INTERVAL``).
Comparisons between prioritizers over the seeds (paired tests, their multiple-testing
correction, effect sizes) belong here too.
"""

from __future__ import annotations

from collections.abc import Iterable

from testprio import stats

# What evaluation.json says of each ci_low / ci_high (stats.mean_ci).
INTERVAL = (
    "95% Student t-interval of the mean over seeds: mean +- t(0.975, n-1) * s / sqrt(n); "
    "zero width with one seed"
)


def retrain_summary(accuracies: dict[float, list[float]]) -> list[dict]:
    """``[{budget, accuracy_mean, ci_low, ci_high, accuracies}]`` from per-seed accuracies."""
    rows = []
    for budget, values in accuracies.items():
        mean, low, high = stats.mean_ci(values)
        rows.append(
            {
                "budget": budget,
                "accuracy_mean": mean,
                "ci_low": low,
                "ci_high": high,
                "accuracies": list(values),
            }
        )
    return rows


def _best(entries: list[tuple[str, float]]) -> tuple[list[str], float | None]:
    if not entries:
        return [], None
    top = max(value for _, value in entries)
    return [name for name, value in entries if value >= top - 1e-12], top


def winners(prioritizers: dict[str, dict], budgets: Iterable[float]) -> list[dict]:
    """Per budget, the best prioritizer(s) by mean retrained accuracy and by faults found
    (every one that ties for best is listed; ``random`` competes like the rest)."""
    table = []
    for budget in budgets:
        by_accuracy = [
            (name, row["accuracy_mean"])
            for name, entry in prioritizers.items()
            for row in entry.get("retrain", [])
            if row["budget"] == budget
        ]
        by_faults = [
            (name, row["found"])
            for name, entry in prioritizers.items()
            for row in entry["faults"]
            if row["budget"] == budget
        ]
        best_accuracy, accuracy = _best(by_accuracy)
        best_faults, found = _best(by_faults)
        table.append(
            {
                "budget": budget,
                "by_accuracy": best_accuracy,
                "accuracy_mean": accuracy,
                "by_faults": best_faults,
                "found": found,
            }
        )
    return table
