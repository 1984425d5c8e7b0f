"""The runs under a root: the runs table (one row per run folder, with its figures), its
search, and the run kinds (a ranking from ``testprio run``, an evaluation from
``testprio evaluate``).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

from testprio import storage
from testprio.errors import TestprioError
from testprio.evaluation_file import EVALUATION_NAME
from testprio.layout import RUN_ID_PATTERN, RunLayout, run_status
from testprio.report.evaluation import SHAPE_ERRORS, as_number, best_by_apfd, best_text
from testprio.report.paths import basename, read_json_or_none, resolve_under_root
from testprio.report.text import format_seconds

RUN_COLUMNS = ("run_id", "kind", "model", "dataset", "metric", "status", "started", "duration")
# Run kinds: ``testprio run`` ranks a pool; ``testprio evaluate`` compares prioritizers and
# records ``"kind": "evaluation"`` in run.json's parameters.
RANKING_KIND = "ranking"
EVALUATION_KIND = "evaluation"


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def run_row(record: dict) -> dict:
    """One line of the runs table from a ``run.json`` record."""
    parameters = record.get("parameters") or {}
    started, ended = _parse_time(record.get("started")), _parse_time(record.get("ended"))
    duration = (ended - started).total_seconds() if started and ended else None
    return {
        "run_id": str(record.get("run_id", "")),
        "kind": run_kind(record),
        "model": basename(parameters.get("model")),
        "dataset": basename(parameters.get("data")),
        "metric": str(parameters.get("metric", "")),
        "status": str(record.get("status", "unknown")),
        "started": started.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        if started
        else "",
        "duration": format_seconds(duration),
        "duration_s": duration,
        "error": record.get("error") or "",
        "failed_stage": record.get("failed_stage") or "",
    }


def run_kind(record: dict) -> str:
    """``evaluation`` for a ``testprio evaluate`` run (its parameters say so), else ``ranking``."""
    parameters = record.get("parameters") or {}
    kind = parameters.get("kind") if isinstance(parameters, dict) else None
    return EVALUATION_KIND if kind == EVALUATION_KIND else RANKING_KIND


def _layout(root: str, name: str) -> RunLayout:
    return RunLayout(storage.join(root, name))


def list_runs(root: str) -> list[dict]:
    """Every run under ``root`` (folders holding a ``run.json``), newest first."""
    root = storage.normalize_root(root)
    names = [name for name in storage.list_folders(root) if RUN_ID_PATTERN.match(name)]
    uris, refused = [], {}
    for name in names:
        try:
            uris.append(resolve_under_root(root, f"{name}/run.json"))
        except TestprioError as exc:  # a run folder or run.json that links out of the root
            uris.append(None)
            refused[name] = str(exc)
    with ThreadPoolExecutor(max_workers=8) as pool:  # one request per run on GCS
        records = list(pool.map(read_json_or_none, uris))
        found = [
            (name, record)
            for name, record in zip(names, records, strict=True)
            if isinstance(record, dict)
        ]
        figures = list(pool.map(lambda item: _run_figures(root, *item), found))
    rows = [
        # A "running" run whose local owner process is gone shows as "unfinished".
        {
            **run_row(record),
            **figure,
            "run_id": name,
            "status": run_status(_layout(root, name), record),
        }
        for (name, record), figure in zip(found, figures, strict=True)
    ] + [
        {**run_row({}), **_NO_FIGURES, "run_id": name, "status": "refused", "error": error}
        for name, error in refused.items()
    ]
    return sorted(rows, key=lambda row: (row["started"], row["run_id"]), reverse=True)


RUN_FIGURE_COLUMNS = ("samples", "accuracy", "apfd", "baseline_accuracy", "best_prioritizer")
_NO_FIGURES = dict.fromkeys(RUN_FIGURE_COLUMNS)
# Figures of finished runs by (run folder, end time): a finished run never changes, so a
# root with hundreds of runs reads each summary.json once per process, not once per look.
_FIGURES_OF_FINISHED: dict[tuple[str, str], dict] = {}
_FIGURES_CACHE_SIZE = 10_000


def figures_of_summary(summary: dict | None) -> dict:
    """Samples ranked, accuracy and raw APFD of a ``summary.json`` (None where unknown)."""
    if not isinstance(summary, dict):
        return dict(_NO_FIGURES)
    labels = summary.get("labels") or {}
    apfd = labels.get("apfd") or {}
    return {
        **_NO_FIGURES,
        "samples": (summary.get("counts") or {}).get("ranked"),
        "accuracy": None if labels.get("accuracy") is None else round(labels["accuracy"], 4),
        "apfd": None if apfd.get("raw") is None else round(apfd["raw"], 4),
    }


def _run_figures(root: str, name: str, record: dict) -> dict:
    if record.get("status") not in ("succeeded", "running", "failed"):
        return dict(_NO_FIGURES)
    file_name, figures_of = FIGURES_BY_KIND[run_kind(record)]
    try:
        uri = resolve_under_root(root, f"{name}/{file_name}")
    except TestprioError:  # linked out of the root: the run's row says so elsewhere
        return dict(_NO_FIGURES)
    key = (uri, str(record.get("ended") or ""))
    if record.get("status") == "succeeded" and key in _FIGURES_OF_FINISHED:
        return _FIGURES_OF_FINISHED[key]
    figures = figures_of(read_json_or_none(uri))
    if record.get("status") == "succeeded":
        if len(_FIGURES_OF_FINISHED) >= _FIGURES_CACHE_SIZE:
            _FIGURES_OF_FINISHED.clear()
        _FIGURES_OF_FINISHED[key] = figures
    return figures


def filter_runs(rows: list[dict], query: str) -> list[dict]:
    """Rows where any shown field contains ``query`` (case-insensitive); all for an empty one."""
    needle = query.strip().lower()
    if not needle:
        return list(rows)
    fields = (*RUN_COLUMNS, "best_prioritizer", "error")
    return [row for row in rows if any(needle in str(row.get(f, "")).lower() for f in fields)]


def figures_of_evaluation(evaluation: Any) -> dict:
    """The runs table's figures of an ``evaluation.json``: pool size, the model's accuracy on
    the pool, baseline accuracy (test split, model as given) and the best prioritizer(s) by
    normalized APFD with that value. All None for an unreadable file: the Evaluation page
    says what is wrong with it."""
    try:
        names, value = best_by_apfd(evaluation["prioritizers"])
        return {
            **_NO_FIGURES,
            "samples": int(evaluation["samples"]["pool"]),
            "accuracy": round(as_number(evaluation["pool"]["accuracy"]), 4),
            "baseline_accuracy": round(as_number(evaluation["baseline_accuracy"]), 4),
            "best_prioritizer": best_text(names, value),
        }
    except SHAPE_ERRORS:
        return dict(_NO_FIGURES)


# Which file holds a run kind's figures for the runs table, and how to read them.
FIGURES_BY_KIND = {
    RANKING_KIND: ("summary.json", figures_of_summary),
    EVALUATION_KIND: (EVALUATION_NAME, figures_of_evaluation),
}
