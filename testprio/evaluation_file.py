"""``evaluation.json``, what ``testprio evaluate`` writes in its run folder: its name and
version, where it is in a run (``evaluation_uri``), and its content as tables
(``evaluation_frames``, with the reference curves a fault-detection curve is read against).

The evaluation (``testprio.evaluation``) writes it; the report (``testprio.report.data``: the
runs table and the Evaluation page) reads it. Both import this module, which loads neither
the evaluation stack (ONNX, the prioritizer families) nor the report.
"""

from __future__ import annotations

from testprio import storage
from testprio.layout import RunLayout

EVALUATION_NAME = "evaluation.json"
EVALUATION_VERSION = 1


def evaluation_uri(layout: RunLayout) -> str:
    return storage.join(layout.uri, EVALUATION_NAME)


def reference_curves(samples: int, faults: int) -> list[dict]:
    """The curves a prioritizer's is read against, as rows (order, inspected, found): what a
    random order finds on average (the diagonal) and the ideal order (every fault first:
    all found once ``faults / samples`` of the pool is inspected). Empty without faults."""
    if not samples or not faults:
        return []
    knee = min(1.0, faults / samples)
    points = {"random": [(0.0, 0.0), (1.0, 1.0)], "ideal": [(0.0, 0.0), (knee, 1.0), (1.0, 1.0)]}
    return [
        {"order": order, "inspected": x, "found": y}
        for order, line in points.items()
        for x, y in line
    ]


def evaluation_frames(evaluation: dict) -> dict[str, list[dict]]:
    """The evaluation as tables (lists of row dicts) for the report app and the charts.

    - ``apfd``: prioritizer, apfd, apfd_normalized
    - ``faults``: prioritizer, budget, found, of, share (found / of)
    - ``retrain``: prioritizer, budget, accuracy_mean, ci_low, ci_high, gain (over baseline)
    - ``baseline``: one row, accuracy (the model as given, on the test split)
    - ``winners``: budget, by_accuracy, accuracy_mean, by_faults, found (names joined)
    - ``curves``: prioritizer, inspected, found (shares; each prioritizer's fault-detection
      curve; none for a pool without faults or a file written before curves were kept)
    - ``curve_references``: order (``random``, ``ideal``), inspected, found
    """
    baseline = evaluation["baseline_accuracy"]
    frames: dict[str, list[dict]] = {
        "apfd": [],
        "faults": [],
        "retrain": [],
        "baseline": [{"accuracy": baseline}],
        "winners": [],
        "curves": [],
        "curve_references": reference_curves(
            evaluation["samples"]["pool"], evaluation["pool"]["misclassified"]
        ),
    }
    for name, entry in evaluation["prioritizers"].items():
        score = entry["apfd"] or {}
        frames["apfd"].append(
            {
                "prioritizer": name,
                "apfd": score.get("raw"),
                "apfd_normalized": score.get("normalized"),
            }
        )
        for row in entry["faults"]:
            share = row["found"] / row["of"] if row["of"] else None
            frames["faults"].append(
                {
                    "prioritizer": name,
                    "budget": row["budget"],
                    "found": row["found"],
                    "of": row["of"],
                    "share": share,
                }
            )
        for inspected, found in entry.get("curve") or []:
            frames["curves"].append({"prioritizer": name, "inspected": inspected, "found": found})
        for row in entry.get("retrain", []):
            frames["retrain"].append(
                {
                    "prioritizer": name,
                    "budget": row["budget"],
                    "accuracy_mean": row["accuracy_mean"],
                    "ci_low": row["ci_low"],
                    "ci_high": row["ci_high"],
                    "gain": row["accuracy_mean"] - baseline,
                }
            )
    for row in evaluation["winners"]:
        frames["winners"].append(
            {
                **row,
                "by_accuracy": ", ".join(row["by_accuracy"]),
                "by_faults": ", ".join(row["by_faults"]),
            }
        )
    return frames
