"""What a run's labels show: accuracy per true class, the confusion matrix and the
fault-detection curve (share of misclassified inputs found against share inspected).
"""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc

from testprio import storage
from testprio.layout import RunLayout
from testprio.report.paths import run_file
from testprio.report.run import RunDetails, class_label

FAULT_CURVE_POINTS = 200


def per_class_accuracy(summary: dict, names: list[str] | None = None) -> list[dict]:
    """Accuracy of each true class: ``[{"class", "accuracy"}]`` (empty without labels)."""
    labels = summary.get("labels")
    if not labels:
        return []
    return [
        {"class": class_label(cls, names), "class_index": cls, "accuracy": accuracy}
        for cls, accuracy in enumerate(labels["per_class_accuracy"])
        if accuracy is not None
    ]


def fault_curve(misclassified: np.ndarray, *, points: int = FAULT_CURVE_POINTS) -> dict | None:
    """Share of misclassified inputs found against share inspected, in ranking order.

    ``misclassified`` is ``(n,)`` booleans, most uncertain first. Returns up to ``points``
    evenly spaced points (always the first and last) with the ``ranking``, ``random``
    (diagonal) and ``ideal`` (every fault first) curves; None without any fault.
    """
    misclassified = np.asarray(misclassified, dtype=bool)
    n, k = len(misclassified), int(misclassified.sum())
    if not n or not k:
        return None
    positions = np.unique(np.linspace(0, n, min(points, n + 1)).round().astype(np.int64))
    found = np.concatenate([[0], np.cumsum(misclassified)])[positions] / k
    inspected = positions / n
    return {
        "inspected": inspected.round(6).tolist(),
        "ranking": found.round(6).tolist(),
        "random": inspected.round(6).tolist(),
        "ideal": np.minimum(1.0, positions / k).round(6).tolist(),
        "faults": k,
        "samples": n,
    }


def fault_curve_rows(curve: dict) -> list[dict]:
    """Long-form rows (``inspected``, ``found``, ``order``) of a ``fault_curve`` for charts."""
    return [
        {"inspected": x, "found": curve[order][i], "order": order}
        for order in ("ranking", "random", "ideal")
        for i, x in enumerate(curve["inspected"])
    ]


def label_figures(layout: RunLayout, num_classes: int) -> dict | None:
    """Confusion matrix, fault-detection curve and label counts from the ranking's labels."""
    table = storage.read_table(run_file(layout, layout.ranking), columns=["predicted", "label"])
    known = table.filter(pc.is_valid(table.column("label")))
    if not known.num_rows:
        return None
    truth = known.column("label").to_numpy().astype(np.int64)
    guess = known.column("predicted").to_numpy().astype(np.int64)
    classes = max(num_classes, int(truth.max()) + 1, int(guess.max()) + 1)
    matrix = np.bincount(truth * classes + guess, minlength=classes * classes)
    return {
        "confusion": matrix.reshape(classes, classes).tolist(),
        "fault_curve": fault_curve(truth != guess),
        "label_counts": np.bincount(truth, minlength=classes).tolist(),
    }


def run_fault_curve(details: RunDetails) -> dict | None:
    """The run's fault-detection curve (from report.json, else from the ranking's labels)."""
    if not details.has_labels:
        return None
    report_labels = (details.report or {}).get("labels")
    if report_labels:
        return report_labels["fault_curve"]
    figures = label_figures(details.layout, details.summary["num_classes"])
    return figures["fault_curve"] if figures else None
