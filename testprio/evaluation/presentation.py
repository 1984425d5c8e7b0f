"""The evaluation shown: text tables for the terminal (``format_evaluation``), and what the
pipeline's report task hands the Kubeflow UI (``report_outputs``: metrics, Markdown, one
HTML page with inline SVG charts)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from testprio import storage
from testprio.evaluation_file import evaluation_frames


def _percent(budget: float) -> str:
    return f"{budget:g}%"


def format_evaluation(evaluation: dict) -> str:
    """The evaluation as text tables: APFD and faults found, then retrained accuracy."""
    budgets = evaluation["budgets"]
    names = list(evaluation["prioritizers"])
    width = max(len("prioritizer"), *(len(name) for name in names))
    pool = evaluation["pool"]
    lines = [
        f"Pool: {evaluation['samples']['pool']:,} samples, {pool['misclassified']:,} "
        f"misclassified (accuracy {pool['accuracy']:.4f}). Test split: "
        f"{evaluation['samples']['test']:,} samples, baseline accuracy "
        f"{evaluation['baseline_accuracy']:.4f} (the model as given).",
        "",
        "Faults found in the top b% of the pool (of "
        f"{pool['misclassified']:,}) and APFD (normalized: 1 best, ~0.5 random):",
        f"  {'prioritizer':<{width}} {'APFD':>7} {'norm':>7}"
        + "".join(f" {_percent(b):>7}" for b in budgets),
    ]
    for name in names:
        entry = evaluation["prioritizers"][name]
        score = entry["apfd"] or {}
        raw = f"{score['raw']:.4f}" if score.get("raw") is not None else "-"
        norm = f"{score['normalized']:.4f}" if score.get("normalized") is not None else "-"
        found = "".join(f" {row['found']:>7g}" for row in entry["faults"])
        lines.append(f"  {name:<{width}} {raw:>7} {norm:>7}{found}")
    retraining = evaluation["retraining"]
    seeds = len(evaluation["seeds"])
    lines += [
        "",
        f"Test accuracy after retraining on the training data plus the top b% "
        f"({retraining['method']}, {retraining['epochs']} epoch"
        f"{'s' if retraining['epochs'] != 1 else ''}; mean [95% CI] over "
        f"{seeds} seed{'s' if seeds != 1 else ''}):",
        f"  {'prioritizer':<{width}}" + "".join(f" {_percent(b):>22}" for b in budgets),
    ]
    for name in names:
        cells = "".join(
            f" {row['accuracy_mean']:.4f} [{row['ci_low']:.3f},{row['ci_high']:.3f}]"
            for row in evaluation["prioritizers"][name].get("retrain", [])
        )
        lines.append(f"  {name:<{width}}{cells}")
    lines += ["", "Best per budget (by retrained accuracy; by faults found):"]
    for row in evaluation["winners"]:
        accuracy = (
            f"{', '.join(row['by_accuracy'])} ({row['accuracy_mean']:.4f})"
            if row["by_accuracy"]
            else "-"
        )
        faults = f"{', '.join(row['by_faults'])} ({row['found']:g})" if row["by_faults"] else "-"
        lines.append(f"  {_percent(row['budget']):>5}: {accuracy}; {faults}")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class EvaluationReport:
    """What the report task hands the Kubeflow UI: figures, Markdown and one HTML page."""

    metrics: dict[str, float]
    markdown: str
    html: str


def _metric_name(*parts: Any) -> str:
    """KFP metric names: letters, digits and underscores (``gini_accuracy_5pct``)."""
    text = "_".join(str(part) for part in parts)
    return "".join(char if char.isalnum() else "_" for char in text)


def evaluation_metrics(evaluation: dict) -> dict[str, float]:
    """Per prioritizer: normalized APFD, faults found and mean retrained accuracy per budget;
    plus the baseline accuracy."""
    figures = {"baseline_accuracy": float(evaluation["baseline_accuracy"])}
    for name, entry in evaluation["prioritizers"].items():
        if entry["apfd"] and entry["apfd"]["normalized"] is not None:
            figures[_metric_name(name, "apfd_normalized")] = float(entry["apfd"]["normalized"])
        for row in entry["faults"]:
            figures[_metric_name(name, "faults", f"{row['budget']:g}pct")] = float(row["found"])
        for row in entry.get("retrain", []):
            key = _metric_name(name, "accuracy", f"{row['budget']:g}pct")
            figures[key] = float(row["accuracy_mean"])
    return figures


def evaluation_markdown(evaluation: dict) -> str:
    """The retrained accuracy and faults-found tables, and the winners, in Markdown."""
    budgets = evaluation["budgets"]
    header = "| prioritizer | APFD (norm.) | " + " | ".join(
        f"acc. {b:g}% [95% CI] | faults {b:g}%" for b in budgets
    )
    lines = [
        f"# Evaluation {evaluation['run_id']}",
        "",
        f"Baseline test accuracy (no retraining): **{evaluation['baseline_accuracy']:.4f}**. "
        f"Pool: {evaluation['samples']['pool']} samples, "
        f"{evaluation['pool']['misclassified']} misclassified. Retraining: "
        f"{evaluation['retraining']['description']}; {len(evaluation['seeds'])} seed(s).",
        "",
        header + " |",
        "|" + "---|" * (2 + 2 * len(budgets)),
    ]
    for name, entry in evaluation["prioritizers"].items():
        score = (entry["apfd"] or {}).get("normalized")
        cells = [name, "-" if score is None else f"{score:.4f}"]
        for acc, fault in zip(entry.get("retrain", []), entry["faults"], strict=False):
            cells.append(f"{acc['accuracy_mean']:.4f} [{acc['ci_low']:.3f}, {acc['ci_high']:.3f}]")
            cells.append(f"{fault['found']:g}/{fault['of']}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| budget | best by accuracy | best by faults found |", "|---|---|---|"]
    for row in evaluation["winners"]:
        lines.append(
            f"| {row['budget']:g}% | {', '.join(row['by_accuracy'])} | "
            f"{', '.join(row['by_faults'])} |"
        )
    return "\n".join(lines) + "\n"


def evaluation_html(evaluation: dict) -> str:
    """A self-contained page (no scripts, inline SVG charts) for the Kubeflow UI: retrained
    accuracy, faults found per budget, the fault-detection curves (when the evaluation has
    them) and normalized APFD."""
    import html

    from testprio.report import charts

    frames = evaluation_frames(evaluation)
    figures = [
        charts.retrained_accuracy(frames["retrain"], evaluation["baseline_accuracy"]),
        charts.faults_found(frames["faults"]),
        charts.apfd_bars(frames["apfd"]),
    ]
    if frames["curves"]:  # evaluations written before curves were kept have none
        figures.insert(
            2, charts.fault_detection_curves(frames["curves"], frames["curve_references"])
        )
    svgs = "\n".join(f"<div>{charts.to_svg(figure)}</div>" for figure in figures)
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>Evaluation {html.escape(evaluation['run_id'])}</title></head><body>"
        f"<h1>Evaluation {html.escape(evaluation['run_id'])}</h1>"
        f"<pre>{html.escape(format_evaluation(evaluation))}</pre>{svgs}</body></html>"
    )


def report_outputs(evaluation_json_uri: str) -> EvaluationReport:
    """The report task's outputs for the evaluation at ``evaluation_json_uri``."""
    evaluation = storage.read_json(evaluation_json_uri)
    return EvaluationReport(
        metrics=evaluation_metrics(evaluation),
        markdown=evaluation_markdown(evaluation),
        html=evaluation_html(evaluation),
    )
