"""Statistics over the evaluation's seeds (pure): each prioritizer's retrained accuracy per
budget as a mean with its 95% interval, its paired difference to ``random`` with Holm's
correction (``vs_random``), the controls' summaries, and the winners per budget.

The maths is ``testprio.stats`` (Student t-interval, paired t-test, Holm); how it is applied
is recorded in evaluation.json as ``retraining.interval`` (``INTERVAL``) and ``comparison``
(``comparison_record``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from testprio import stats

RANDOM = "random"  # what every prioritizer is tested against
ALPHA = 0.05  # significant: Holm-adjusted p below this

# What evaluation.json says of each ci_low / ci_high (stats.mean_ci).
INTERVAL = (
    "95% Student t-interval of the mean over seeds: mean +- t(0.975, n-1) * s / sqrt(n); "
    "zero width with one seed"
)


def comparison_record(pairing: str) -> dict:
    """evaluation.json's ``comparison``: how ``vs_random`` and the winners are decided;
    ``pairing`` says what a pair is (``"seed"``, or ``"(split, seed)"``)."""
    return {
        "against": RANDOM,
        "pairing": pairing,
        "effect": "diff_mean: mean over pairs of (accuracy - random's accuracy), with its 95% "
        "Student t-interval (ci_low, ci_high)",
        "test": "paired t-test of the accuracies (two-sided; scipy.stats.ttest_rel)",
        "correction": "Holm over every prioritizer x budget comparison of the file (p_holm)",
        "alpha": ALPHA,
        "significant": f"p_holm < {ALPHA:g}",
        "undefined": "one pair, or differences that are all equal: a zero-width interval "
        "at the difference and p = 1 (no evidence)",
    }


def retrain_summary(accuracies: dict[float, list[float]]) -> list[dict]:
    """``[{budget, accuracy_mean, ci_low, ci_high, accuracies}]`` from per-seed accuracies."""
    return [{"budget": budget, **accuracy_summary(values)} for budget, values in accuracies.items()]


def accuracy_summary(values: Sequence[float]) -> dict:
    """``{accuracy_mean, ci_low, ci_high, accuracies}`` of per-seed accuracies (a control's,
    or one budget's of a prioritizer)."""
    mean, low, high = stats.mean_ci(values)
    return {"accuracy_mean": mean, "ci_low": low, "ci_high": high, "accuracies": list(values)}


def with_vs_random(prioritizers: dict[str, dict], *, alpha: float = ALPHA) -> dict[str, dict]:
    """``prioritizers`` with ``vs_random`` on every retrain row: ``{diff_mean, ci_low,
    ci_high, p, p_holm, significant}``, the paired difference of its accuracies to random's
    at the same budget (pair i: the i-th accuracy of each, the same seed), Holm-adjusted over
    every prioritizer x budget of ``prioritizers``. ``None`` for random itself, and for every
    row when random was not evaluated. The input is not changed."""
    reference = {
        row["budget"]: row["accuracies"] for row in prioritizers.get(RANDOM, {}).get("retrain", [])
    }
    tests: dict[tuple[str, int], dict] = {}
    for name, entry in prioritizers.items():
        for index, row in enumerate(entry.get("retrain", [])):
            if name != RANDOM and row["budget"] in reference:
                found = stats.paired_difference(row["accuracies"], reference[row["budget"]])
                tests[name, index] = found.as_dict()
    adjusted = stats.holm([test["p"] for test in tests.values()])
    for test, p_holm in zip(tests.values(), adjusted, strict=True):
        test.update(p_holm=p_holm, significant=p_holm < alpha)
    return {
        name: {
            **entry,
            "retrain": [
                {**row, "vs_random": tests.get((name, index))}
                for index, row in enumerate(entry["retrain"])
            ],
        }
        if "retrain" in entry
        else entry
        for name, entry in prioritizers.items()
    }


def _best(entries: list[tuple[str, float]]) -> tuple[list[str], float | None]:
    if not entries:
        return [], None
    top = max(value for _, value in entries)
    return [name for name, value in entries if value >= top - 1e-12], top


def winners(prioritizers: dict[str, dict], budgets: Iterable[float]) -> list[dict]:
    """Per budget: ``by_accuracy``, every prioritizer whose retrained accuracy is
    significantly above random's (``vs_random.significant`` with a positive difference),
    largest difference first, with ``accuracy_mean`` the highest of theirs (None when the
    list is empty: no prioritizer beats random there); ``below_random``, those significantly
    below it; ``by_faults``, the prioritizer(s) finding the most faults (every one that ties;
    random competes like the rest), with ``found``."""
    table = []
    for budget in budgets:
        tested = [
            (name, row)
            for name, entry in prioritizers.items()
            for row in entry.get("retrain", [])
            if row["budget"] == budget and (row.get("vs_random") or {}).get("significant")
        ]
        above = sorted(
            ((name, row) for name, row in tested if row["vs_random"]["diff_mean"] > 0),
            key=lambda item: -item[1]["vs_random"]["diff_mean"],
        )
        by_faults = [
            (name, row["found"])
            for name, entry in prioritizers.items()
            for row in entry["faults"]
            if row["budget"] == budget
        ]
        best_faults, found = _best(by_faults)
        table.append(
            {
                "budget": budget,
                "by_accuracy": [name for name, _ in above],
                "accuracy_mean": max((row["accuracy_mean"] for _, row in above), default=None),
                "below_random": [name for name, row in tested if row["vs_random"]["diff_mean"] < 0],
                "by_faults": best_faults,
                "found": found,
            }
        )
    return table
