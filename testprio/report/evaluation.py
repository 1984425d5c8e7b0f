"""Evaluation runs (``testprio evaluate``) as the Evaluation page shows them, and the
prioritizer comparisons a ranking run's summary.json carries (every prioritizer's APFD, the
metamorphic attribution).

A file that is not the shape ``testprio evaluate`` writes becomes one TestprioError sentence.
"""

from __future__ import annotations

from typing import Any

from testprio import storage
from testprio.errors import TestprioError
from testprio.evaluation_file import (
    CONTROL_TITLES,
    controls_text,
    evaluation_frames,
    evaluation_uri,
    read_evaluation,
    verdicts,
)
from testprio.layout import RunLayout
from testprio.report.paths import run_file
from testprio.summary import degenerate_note

_TIE = 1e-12  # prioritizers this close to the best share first place (as evaluate.winners)
# What a malformed evaluation.json raises while it is shaped: each becomes one sentence.
SHAPE_ERRORS = (KeyError, TypeError, ValueError, AttributeError, IndexError)


class _Malformed(ValueError):
    """A readable evaluation.json that still cannot be shown; the message says why."""


def as_number(value: Any) -> float | None:
    """``value`` as a float; None stays None; anything else (text, a list) raises TypeError."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{value!r} is not a number")
    return float(value)


def best_by_apfd(prioritizers: dict) -> tuple[list[str], float | None]:
    """The prioritizer(s) with the highest normalized APFD (all that tie) and that value;
    ``([], None)`` when no prioritizer has one (a pool without mistakes)."""
    scores = [
        (name, as_number((entry.get("apfd") or {}).get("normalized")))
        for name, entry in prioritizers.items()
    ]
    scores = [(name, value) for name, value in scores if value is not None]
    if not scores:
        return [], None
    top = max(value for _, value in scores)
    return [name for name, value in scores if value >= top - _TIE], top


def best_text(names: list[str], value: float | None) -> str:
    """``"margin, gini (0.8123)"``: the best prioritizer(s) with their value; '' for none."""
    return f"{', '.join(names)} ({value:.4f})" if names else ""


def attribution_rows(attribution: dict | None) -> list[dict]:
    """Per transform of a metamorphic attribution (``testprio.causal``): violation rate with
    and without it, ATE with its bootstrap interval, Shapley value with its interval."""
    return [
        {
            "transform": str(effect["transform"]),
            "violation_rate": as_number(effect["rate_applied"]),
            "rate_without": as_number(effect["rate_not_applied"]),
            "ate": as_number(effect["ate"]),
            "ate_ci_low": as_number(effect["ate_ci_low"]),
            "ate_ci_high": as_number(effect["ate_ci_high"]),
            "shapley": as_number(effect["shapley"]),
            "shapley_ci_low": as_number(effect.get("shapley_ci_low")),
            "shapley_ci_high": as_number(effect.get("shapley_ci_high")),
        }
        for effect in (attribution or {}).get("effects") or []
    ]


def _attribution_view(entry: dict) -> dict | None:
    """The ``instability`` prioritizer's follow-up settings and attribution, if it ran."""
    metamorphic = entry.get("metamorphic") or {}
    attribution = entry.get("attribution")
    if not metamorphic and attribution is None and not entry.get("attribution_error"):
        return None
    return {
        "rows": attribution_rows(attribution),
        "violation_rate": as_number(metamorphic.get("violation_rate")),
        "transforms": [str(name) for name in metamorphic.get("transforms") or []],
        "followups": metamorphic.get("followups"),
        "tiny_image_ranges": bool(metamorphic.get("tiny_image_ranges")),
        "n_boot": (attribution or {}).get("n_boot"),
        "confidence": as_number((attribution or {}).get("confidence")),
        "error": str(entry.get("attribution_error") or ""),
    }


def ranking_attribution_view(summary: dict | None) -> dict | None:
    """The metamorphic attribution of a ranking made with ``--metamorphic`` (``summary.json``'s
    ``metamorphic``), shaped as the Evaluation page's; None without follow-ups."""
    metamorphic = (summary or {}).get("metamorphic")
    if not isinstance(metamorphic, dict):
        return None
    return _attribution_view(
        {
            "metamorphic": metamorphic,
            "attribution": metamorphic.get("attribution"),
            "attribution_error": metamorphic.get("attribution_error"),
        }
    )


def _curves_view(prioritizers: dict, rows: list[dict]) -> list[dict] | None:
    """``evaluation_frames``' ``curves`` rows (prioritizer, inspected, found), checked; empty
    for a pool without faults (curves null); None for an evaluation.json written before
    curves were kept (no ``curve`` field), which the page draws from its budgets."""
    if not all("curve" in entry for entry in prioritizers.values()):
        return None
    return [
        {
            "prioritizer": row["prioritizer"],
            "inspected": as_number(row["inspected"]),
            "found": as_number(row["found"]),
        }
        for row in rows
    ]


def _faults_table(faults: list[dict]) -> list[dict]:
    """Faults found per prioritizer (rows) and budget (columns ``1%``, ``5%``, ...)."""
    table: dict[str, dict] = {}
    for row in faults:
        line = table.setdefault(row["prioritizer"], {"prioritizer": row["prioritizer"]})
        line[f"{as_number(row['budget']):g}%"] = as_number(row["found"])
    return list(table.values())


def _vs_random_rows(frames: dict) -> list[dict]:
    """``evaluation_frames``' ``vs_random`` rows, checked (none for a version 1 file)."""
    return [
        {
            "prioritizer": str(row["prioritizer"]),
            "budget": as_number(row["budget"]),
            **{
                key: as_number(row[key])
                for key in ("diff_mean", "ci_low", "ci_high", "p", "p_holm")
            },
            "significant": bool(row["significant"]),
        }
        for row in frames["vs_random"]
    ]


def _controls_rows(frames: dict) -> list[dict]:
    """The controls (no selection, the whole pool: the ceiling) as rows, checked."""
    return [
        {
            "control": CONTROL_TITLES.get(row["control"], str(row["control"])),
            **{key: as_number(row[key]) for key in ("accuracy_mean", "ci_low", "ci_high", "gain")},
        }
        for row in frames["controls"]
    ]


def _evaluation_view(evaluation: dict, run_id: str) -> dict:
    if not isinstance(evaluation, dict):
        raise _Malformed("it is not a JSON object")
    evaluation = read_evaluation(evaluation)  # a newer version: its own sentence
    frames = evaluation_frames(evaluation)
    baseline = as_number(evaluation["baseline_accuracy"])
    prioritizers = evaluation["prioritizers"]
    if not prioritizers:
        raise _Malformed("it lists no prioritizer")
    names, value = best_by_apfd(prioritizers)
    retrain_rows = []
    for row in frames["retrain"]:
        low, high = as_number(row["ci_low"]), as_number(row["ci_high"])
        mean = as_number(row["accuracy_mean"])
        retrain_rows.append(
            {
                "prioritizer": row["prioritizer"],
                "budget": as_number(row["budget"]),
                "accuracy_mean": mean,
                "ci_low": low,
                "ci_high": high,
                "gain": mean - baseline,
                "gain_low": low - baseline,
                "gain_high": high - baseline,
            }
        )
    retraining = evaluation["retraining"]
    model, samples, pool = evaluation["model"], evaluation["samples"], evaluation["pool"]
    layers = evaluation.get("layers") or {}
    return {
        "run_id": run_id,
        "model": {key: str(model.get(key, "")) for key in ("name", "framework", "format")}
        | {"classes": int(model["classes"])},
        "samples": {part: int(samples[part]) for part in ("pool", "train", "test")},
        "test_split": str(evaluation.get("test_split") or ""),
        "misclassified": as_number(pool["misclassified"]),
        "pool_accuracy": as_number(pool["accuracy"]),
        "baseline_accuracy": baseline,
        "budgets": [as_number(budget) for budget in evaluation["budgets"]],
        "seeds": len(evaluation["seeds"]),
        "splits": int(evaluation["splits"]),
        "tested": evaluation["comparison"] is not None,
        "pairing": str((evaluation["comparison"] or {}).get("pairing") or ""),
        "retraining": {
            "method": str(retraining["method"]),
            "description": str(retraining["description"]),
            "epochs": int(retraining["epochs"]),
            "batch_size": retraining.get("batch_size"),
            "learning_rate": retraining.get("learning_rate"),
            "interval": str(retraining.get("interval") or ""),
        },
        "prioritizers": [
            {
                "prioritizer": name,
                "description": str(entry.get("description") or ""),
                "apfd": as_number((entry["apfd"] or {}).get("raw")),
                "apfd_normalized": as_number((entry["apfd"] or {}).get("normalized")),
                "seconds": as_number(entry.get("order_seconds")),
                "note": degenerate_note(entry),
            }
            for name, entry in prioritizers.items()
        ],
        "best": {"names": names, "apfd_normalized": value, "text": best_text(names, value)},
        "apfd": [row for row in frames["apfd"] if row["apfd_normalized"] is not None],
        "faults": [
            {
                **row,
                "budget": as_number(row["budget"]),
                "selected": int(entry["selected"]),
                "share": as_number(row["share"]),
            }
            # evaluation_frames lists the faults in this order; it leaves out "selected".
            for row, entry in zip(
                frames["faults"],
                [entry for item in prioritizers.values() for entry in item["faults"]],
                strict=True,
            )
        ],
        "curves": _curves_view(prioritizers, frames["curves"]),
        "curve_references": [
            {
                "order": str(row["order"]),
                "inspected": as_number(row["inspected"]),
                "found": as_number(row["found"]),
            }
            for row in frames["curve_references"]
        ],
        "faults_table": _faults_table(frames["faults"]),
        "retrain": retrain_rows,
        "vs_random": _vs_random_rows(frames),
        "controls": _controls_rows(frames),
        "controls_text": controls_text(evaluation),
        "winners": [
            {
                "budget": as_number(row["budget"]),
                "verdict": verdict["text"],
                "by_accuracy": str(row["by_accuracy"]),
                "accuracy_mean": as_number(row["accuracy_mean"]),
                "by_faults": str(row["by_faults"]),
                "found": as_number(row["found"]),
            }
            for row, verdict in zip(frames["winners"], verdicts(evaluation), strict=True)
        ],
        "attribution": _attribution_view(prioritizers["instability"])
        if "instability" in prioritizers
        else None,
        "layers": {
            "coverage": [str(name) for name in layers.get("coverage") or []],
            "surprise": str(layers.get("surprise") or ""),
            "chosen": str(layers.get("chosen") or ""),
        }
        if layers
        else None,
        "timings": {str(k): as_number(v) for k, v in (evaluation.get("timings") or {}).items()},
    }


def _shape_problem(exc: Exception) -> str:
    if isinstance(exc, KeyError):
        return f"it has no {exc.args[0]!r}"
    if isinstance(exc, _Malformed):
        return str(exc)
    return "a field holds a value of the wrong kind"


def evaluation_view(evaluation: Any, run_id: str) -> dict:
    """Everything the Evaluation page shows of an ``evaluation.json`` (its parsed content, any
    version ``read_evaluation`` reads): facts, the per-prioritizer table (with the
    degenerate note), chart rows (fault-detection curves with their random and ideal
    references, faults per budget, retraining gain with its interval, normalized APFD), the
    faults found per budget, the verdict and winners per budget, the paired differences to
    random (``vs_random``), the controls (``controls``, ``controls_text``: the ceiling), the
    instability attribution. ``tested`` is False for a version 1 file (its winners are the
    best means, untested).

    ``curves`` is None for a file written before evaluations kept curves: the page then
    draws the faults at the budgets instead.

    A file that is not the shape ``testprio evaluate`` writes raises one TestprioError
    sentence, so that the page shows that sentence instead of half a page.
    """
    try:
        return _evaluation_view(evaluation, run_id)
    except SHAPE_ERRORS as exc:
        raise TestprioError(
            f"evaluation.json of run {run_id} is not an evaluation testprio wrote "
            f"({_shape_problem(exc)}); it was changed after `testprio evaluate` wrote it: "
            "evaluate again under a new --run-id."
        ) from None


def load_evaluation(layout: RunLayout) -> dict:
    """The ``evaluation_view`` of the run at ``layout`` (read through ``run_file``)."""
    uri = run_file(layout, evaluation_uri(layout))
    if not storage.exists(uri):
        raise TestprioError(
            f"run {layout.run_id} holds no evaluation.json; it is not a finished "
            "`testprio evaluate` run."
        )
    try:
        evaluation = storage.read_json(uri)
    except ValueError:
        raise TestprioError(
            f"evaluation.json of run {layout.run_id} is not JSON; it was cut short or changed "
            "after `testprio evaluate` wrote it: evaluate again under a new --run-id."
        ) from None
    return evaluation_view(evaluation, layout.run_id)


def prioritizer_apfd_rows(summary: dict | None) -> list[dict]:
    """The per-prioritizer APFD table of a ranking run's ``summary.json`` (``prioritizers``:
    every prioritizer the run's scores allow, APFD over the labelled samples), if it has one;
    ``note`` says when a prioritizer's scores are constant on the pool
    (:func:`degenerate_note`)."""
    table = (summary or {}).get("prioritizers")
    if not isinstance(table, dict):
        return []
    rows = []
    for name, entry in table.items():
        apfd = (entry or {}).get("apfd") or {}
        rows.append(
            {
                "prioritizer": str(name),
                "order": str((entry or {}).get("order") or ""),
                "ranking": "✓" if name == summary.get("prioritizer", summary.get("metric")) else "",
                "apfd": as_number(apfd.get("raw")),
                "apfd_normalized": as_number(apfd.get("normalized")),
                "note": degenerate_note(entry or {}),
            }
        )
    return rows
