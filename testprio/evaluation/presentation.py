"""The evaluation shown: text tables for the terminal (``format_evaluation``), and what the
pipeline's report task hands the Kubeflow UI (``report_outputs``: metrics, Markdown, one
HTML page with inline SVG charts)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from testprio import storage
from testprio.evaluation_file import (
    CONTROL_TITLES,
    controls_text,
    evaluation_frames,
    read_evaluation,
    verdicts,
)
from testprio.summary import degenerate_note


def _percent(budget: float) -> str:
    return f"{budget:g}%"


def _difference(test: dict | None) -> str:
    """``+0.0123 [-0.002,+0.027] p=0.041*``: a vs_random cell (``*``: significant)."""
    if not test:
        return "-"
    mark = "*" if test["significant"] else " "
    return (
        f"{test['diff_mean']:+.4f} [{test['ci_low']:+.3f},{test['ci_high']:+.3f}] "
        f"p={test['p_holm']:.3f}{mark}"
    )


def degenerate_lines(evaluation: dict) -> list[str]:
    """``"  NAME: constant on this pool: ..."`` for every degenerate prioritizer."""
    return [
        f"  {name}: {note}"
        for name, entry in evaluation["prioritizers"].items()
        if (note := degenerate_note(entry))
    ]


def format_evaluation(evaluation: dict) -> str:
    """The evaluation as text: APFD and faults found, the retrained accuracy beside the
    controls (the ceiling), the paired differences to random, and the verdict per budget."""
    evaluation = read_evaluation(evaluation)
    budgets = evaluation["budgets"]
    names = list(evaluation["prioritizers"])
    width = max(len("prioritizer"), *(len(name) for name in names))
    pool = evaluation["pool"]
    splits = evaluation["splits"]
    lines = [
        f"Pool: {evaluation['samples']['pool']:,} samples, {pool['misclassified']:,g} "
        f"misclassified (accuracy {pool['accuracy']:.4f}). Test split: "
        f"{evaluation['samples']['test']:,} samples, baseline accuracy "
        f"{evaluation['baseline_accuracy']:.4f} (the model as given).",
    ]
    if splits > 1:
        lines.append(
            f"Pooled over {splits} seeded pool/test splits: means over the splits, and "
            "accuracies over every (split, seed); each split's figures are in per_split."
        )
    lines += [
        "",
        "Faults found in the top b% of the pool (of "
        f"{pool['misclassified']:,g}) and APFD (normalized: 1 best, ~0.5 random):",
        f"  {'prioritizer':<{width}} {'APFD':>7} {'norm':>7}"
        + "".join(f" {_percent(b):>7}" for b in budgets),
    ]
    for name in names:
        entry = evaluation["prioritizers"][name]
        score = entry["apfd"] or {}
        raw = f"{score['raw']:.4f}" if score.get("raw") is not None else "-"
        norm = f"{score['normalized']:.4f}" if score.get("normalized") is not None else "-"
        found = "".join(f" {row['found']:>7.4g}" for row in entry["faults"])
        lines.append(f"  {name:<{width}} {raw:>7} {norm:>7}{found}")
    lines += degenerate_lines(evaluation)
    retraining = evaluation["retraining"]
    seeds = len(evaluation["seeds"])
    runs = f"{seeds} seed{'s' if seeds != 1 else ''}" + (
        f" x {splits} splits" if splits > 1 else ""
    )
    lines += [
        "",
        f"Test accuracy after retraining on the training data plus the top b% "
        f"({retraining['method']}, {retraining['epochs']} epoch"
        f"{'s' if retraining['epochs'] != 1 else ''}; mean [95% CI] over {runs}):",
        f"  {'prioritizer':<{width}}" + "".join(f" {_percent(b):>22}" for b in budgets),
    ]
    for name in names:
        cells = "".join(
            f" {row['accuracy_mean']:.4f} [{row['ci_low']:.3f},{row['ci_high']:.3f}]"
            for row in evaluation["prioritizers"][name].get("retrain", [])
        )
        lines.append(f"  {name:<{width}}{cells}")
    for name, figures in (evaluation["controls"] or {}).items():
        lines.append(
            f"  control: {CONTROL_TITLES.get(name, name)}: {figures['accuracy_mean']:.4f} "
            f"[{figures['ci_low']:.3f},{figures['ci_high']:.3f}]"
        )
    compared = [
        name for name in names if any(r.get("vs_random") for r in _retrain(evaluation, name))
    ]
    if compared:
        pairing = evaluation["comparison"]["pairing"]
        lines += [
            "",
            f"Difference to random's accuracy, paired by {pairing} (mean [95% CI], "
            "Holm-adjusted p over the file; * significant at 0.05):",
            f"  {'prioritizer':<{width}}" + "".join(f" {_percent(b):>33}" for b in budgets),
        ]
        for name in compared:
            cells = "".join(
                f" {_difference(row.get('vs_random')):>33}" for row in _retrain(evaluation, name)
            )
            lines.append(f"  {name:<{width}}{cells}")
    lines += ["", "Verdict per budget (retrained accuracy against random; most faults found):"]
    for verdict, row in zip(verdicts(evaluation), evaluation["winners"], strict=True):
        faults = f"{', '.join(row['by_faults'])} ({row['found']:g})" if row["by_faults"] else "-"
        lines.append(f"  {_percent(row['budget']):>5}: {verdict['text']}; most faults: {faults}")
    ceiling = controls_text(evaluation)
    if ceiling:
        lines.append(f"  Beside them: {ceiling}.")
    return "\n".join(line.rstrip() for line in lines) + "\n"


def _retrain(evaluation: dict, name: str) -> list[dict]:
    return evaluation["prioritizers"][name].get("retrain", [])


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
    """Per prioritizer: normalized APFD, faults found, mean retrained accuracy and its mean
    difference to random per budget; plus the baseline accuracy and the controls'."""
    evaluation = read_evaluation(evaluation)
    figures = {"baseline_accuracy": float(evaluation["baseline_accuracy"])}
    for name, control in (evaluation["controls"] or {}).items():
        figures[_metric_name("control", name, "accuracy")] = float(control["accuracy_mean"])
    for name, entry in evaluation["prioritizers"].items():
        if entry["apfd"] and entry["apfd"]["normalized"] is not None:
            figures[_metric_name(name, "apfd_normalized")] = float(entry["apfd"]["normalized"])
        for row in entry["faults"]:
            figures[_metric_name(name, "faults", f"{row['budget']:g}pct")] = float(row["found"])
        for row in entry.get("retrain", []):
            key = _metric_name(name, "accuracy", f"{row['budget']:g}pct")
            figures[key] = float(row["accuracy_mean"])
            if row.get("vs_random"):
                key = _metric_name(name, "vs_random", f"{row['budget']:g}pct")
                figures[key] = float(row["vs_random"]["diff_mean"])
    return figures


def evaluation_markdown(evaluation: dict) -> str:
    """The retrained accuracy and faults-found tables, the controls, the differences to
    random and the verdict per budget, in Markdown."""
    evaluation = read_evaluation(evaluation)
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
            cells.append(f"{fault['found']:.4g}/{fault['of']:.4g}")
        lines.append("| " + " | ".join(cells) + " |")
    notes = degenerate_lines(evaluation)
    if notes:
        lines += ["", *(f"- {line.strip()}" for line in notes)]
    if evaluation["controls"]:
        lines += ["", f"Controls, the same fine-tuning and seeds: {controls_text(evaluation)}."]
    differences = [
        (name, entry["retrain"])
        for name, entry in evaluation["prioritizers"].items()
        if any(row.get("vs_random") for row in entry.get("retrain", []))
    ]
    if differences:
        lines += [
            "",
            f"Difference to random's accuracy, paired by {evaluation['comparison']['pairing']} "
            "(mean [95% CI], Holm-adjusted p; **bold**: significant at 0.05):",
            "",
            "| prioritizer | " + " | ".join(f"{b:g}%" for b in budgets) + " |",
            "|---|" + "---|" * len(budgets),
        ]
        for name, rows in differences:
            cells = [_difference(row.get("vs_random")).rstrip("* ") for row in rows]
            cells = [
                f"**{cell}**" if (row.get("vs_random") or {}).get("significant") else cell
                for cell, row in zip(cells, rows, strict=True)
            ]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "| budget | verdict (retrained accuracy) | most faults found |", "|---|---|---|"]
    for verdict, row in zip(verdicts(evaluation), evaluation["winners"], strict=True):
        lines.append(f"| {row['budget']:g}% | {verdict['text']} | {', '.join(row['by_faults'])} |")
    return "\n".join(lines) + "\n"


def evaluation_html(evaluation: dict) -> str:
    """A self-contained page (no scripts, inline SVG charts) for the Kubeflow UI: the verdict
    per budget with the controls (the ceiling) and the degenerate prioritizers' notes, the
    text tables, then retrained accuracy, faults found per budget, the fault-detection
    curves (when the evaluation has them) and normalized APFD."""
    import html

    from testprio.report import charts

    evaluation = read_evaluation(evaluation)
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
    items = "".join(f"<li>{html.escape(row['text'])}</li>" for row in verdicts(evaluation))
    beside = controls_text(evaluation)
    notes = "".join(
        f"<li>{html.escape(line.strip())}</li>" for line in degenerate_lines(evaluation)
    )
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>Evaluation {html.escape(evaluation['run_id'])}</title></head><body>"
        f"<h1>Evaluation {html.escape(evaluation['run_id'])}</h1>"
        f"<h2>Verdict per budget</h2><ul>{items}</ul>"
        + (f"<p>Beside them: {html.escape(beside)}.</p>" if beside else "")
        + (f"<ul>{notes}</ul>" if notes else "")
        + f"<pre>{html.escape(format_evaluation(evaluation))}</pre>{svgs}</body></html>"
    )


def report_outputs(evaluation_json_uri: str) -> EvaluationReport:
    """The report task's outputs for the evaluation at ``evaluation_json_uri``."""
    evaluation = storage.read_json(evaluation_json_uri)
    return EvaluationReport(
        metrics=evaluation_metrics(evaluation),
        markdown=evaluation_markdown(evaluation),
        html=evaluation_html(evaluation),
    )
