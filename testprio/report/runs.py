"""The runs under a root: the runs table (one row per run folder, with its figures), its
search, and the run kinds (a ranking from ``testprio run``, an evaluation from
``testprio evaluate``).
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

from testprio import storage
from testprio.errors import TestprioError
from testprio.evaluation_file import EVALUATION_NAME
from testprio.layout import RUN_ID_PATTERN, RunLayout, record_problem, run_status
from testprio.report.evaluation import SHAPE_ERRORS, as_number, best_by_apfd, best_text
from testprio.report.label_sources import IMPORTED, POOL, recorded_imported_figures
from testprio.report.paths import basename, read_json_or_none, resolve_under_root
from testprio.report.text import format_seconds

RUN_COLUMNS = ("run_id", "kind", "model", "dataset", "metric", "status", "started", "duration")
# Run kinds: ``testprio run`` ranks a pool; ``testprio evaluate`` compares prioritizers and
# records ``"kind": "evaluation"`` in run.json's parameters.
RANKING_KIND = "ranking"
EVALUATION_KIND = "evaluation"


def _parse_time(text: Any) -> datetime | None:
    """An ISO time with its zone, as run.json holds them; None for anything else."""
    if not isinstance(text, str) or not text:
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def run_row(record: dict) -> dict:
    """One line of the runs table from a ``run.json`` record (text in every text column,
    whatever the record holds)."""
    parameters = record.get("parameters")
    parameters = parameters if isinstance(parameters, dict) else {}
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
        "error": str(record.get("error") or ""),
        "failed_stage": str(record.get("failed_stage") or ""),
    }


def run_kind(record: dict) -> str:
    """``evaluation`` for a ``testprio evaluate`` run (its parameters say so), else ``ranking``."""
    parameters = record.get("parameters") or {}
    kind = parameters.get("kind") if isinstance(parameters, dict) else None
    return EVALUATION_KIND if kind == EVALUATION_KIND else RANKING_KIND


def _layout(root: str, name: str) -> RunLayout:
    return RunLayout(storage.join(root, name))


UNREADABLE = "unreadable"


def _read_record(name: str, uri: str | None) -> tuple[Any, str | None]:
    """``(record, None)``; ``(None, sentence)`` for a run.json that is no record testprio
    wrote; ``(None, None)`` where there is none (a folder that is not a run)."""
    if uri is None:
        return None, None
    try:
        record = storage.read_json(uri)
    except TestprioError as exc:  # missing (not a run), or there but unreadable
        return None, (str(exc) if storage.exists(uri) else None)
    except ValueError as exc:
        problem = str(exc)
    else:
        problem = record_problem(record)
    if problem is None:
        return record, None
    return None, (
        f"{name}/run.json is not a run record testprio wrote ({problem}); move the run "
        "folder out of the root or delete it."
    )


def list_runs(root: str) -> list[dict]:
    """Every run under ``root`` (folders holding a ``run.json``), newest first. A run folder
    that links out of the root is listed as ``refused``, one whose run.json cannot be read
    as a run record as ``unreadable``, each with its sentence in ``error``."""
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
        read = list(pool.map(_read_record, names, uris))
        found = [
            (name, record)
            for name, (record, _) in zip(names, read, strict=True)
            if record is not None
        ]
        unreadable = {
            name: problem for name, (_, problem) in zip(names, read, strict=True) if problem
        }
        figures = list(pool.map(lambda item: _run_figures(root, *item), found))
    rows = (
        [
            # A "running" run whose local owner process is gone shows as "unfinished".
            {
                **run_row(record),
                **with_imported_labels(figure, record),
                "run_id": name,
                "status": run_status(_layout(root, name), record),
            }
            for (name, record), figure in zip(found, figures, strict=True)
        ]
        + [
            {**run_row({}), **_NO_FIGURES, "run_id": name, "status": "refused", "error": error}
            for name, error in refused.items()
        ]
        + [
            {**run_row({}), **_NO_FIGURES, "run_id": name, "status": UNREADABLE, "error": error}
            for name, error in unreadable.items()
        ]
    )
    return sorted(rows, key=lambda row: (row["started"], row["run_id"]), reverse=True)


# ``accuracy`` and ``apfd`` are those of the run's labels: the imported ones where a run has
# any, else the pool's; ``labels`` says which, and ``pool_accuracy``/``pool_apfd`` hold the
# pool's where a run has both.
RUN_FIGURE_COLUMNS = (
    "samples",
    "labels",
    "accuracy",
    "apfd",
    "pool_accuracy",
    "pool_apfd",
    "baseline_accuracy",
    "best_prioritizer",
)
_NO_FIGURES = dict.fromkeys(RUN_FIGURE_COLUMNS)
# Figures of finished runs by (run folder, end time): a finished run never changes, so a
# root with hundreds of runs reads each summary.json once per process, not once per look.
_FIGURES_OF_FINISHED: dict[tuple[str, str], dict] = {}
_FIGURES_CACHE_SIZE = 10_000


def _count(value: Any) -> int | None:
    """A count from a JSON file: a whole number of at least 0, else None (unknown)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def _fraction(value: Any) -> float | None:
    """A finite number from a JSON file, to 4 places, else None (unknown)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return round(float(value), 4)


def _field(value: Any, name: str) -> Any:
    """``value[name]`` when ``value`` is a JSON object, else None."""
    return value.get(name) if isinstance(value, dict) else None


def figures_of_summary(summary: Any) -> dict:
    """Samples ranked, accuracy and raw APFD of a ``summary.json`` (None where unknown, also
    where the file holds something else than a number)."""
    labels = _field(summary, "labels")
    accuracy = _fraction(_field(labels, "accuracy"))
    labelled = _count(_field(labels, "labeled"))
    return {
        **_NO_FIGURES,
        "samples": _count(_field(_field(summary, "counts"), "ranked")),
        "labels": _source_text(POOL, labelled) if accuracy is not None else "",
        "accuracy": accuracy,
        "apfd": _fraction(_field(_field(labels, "apfd"), "raw")),
    }


def _source_text(source: str, samples: int | None) -> str:
    """``imported 1,000``; ``pool 1.2M`` (counts from 100,000 in k and M: the column is narrow)."""
    if samples is None:
        return source
    if samples >= 1_000_000:
        count = f"{samples / 1_000_000:.1f}".removesuffix(".0") + "M"
    elif samples >= 100_000:
        count = f"{samples / 1_000:.0f}k"
    else:
        count = f"{samples:,}"
    return f"{source} {count}"


def with_imported_labels(figures: dict, record: dict) -> dict:
    """A ranking run's figures with its imported labels (run.json's ``labelled``) as the
    run's: their accuracy and APFD in ``accuracy`` and ``apfd``, the pool's moved to
    ``pool_accuracy`` and ``pool_apfd``, and ``labels`` naming the sources."""
    imported = recorded_imported_figures(record) if run_kind(record) == RANKING_KIND else None
    if imported is None:
        return figures
    pool = figures["labels"]
    return {
        **figures,
        "labels": ", ".join(
            text for text in (_source_text(IMPORTED, imported["samples"]), pool) if text
        ),
        "accuracy": _fraction(imported["accuracy"]),
        "apfd": _fraction(imported["apfd"]),
        "pool_accuracy": figures["accuracy"] if pool else None,
        "pool_apfd": figures["apfd"] if pool else None,
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
    fields = (*RUN_COLUMNS, "labels", "best_prioritizer", "error")
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
            "samples": _count(evaluation["samples"]["pool"]),
            "accuracy": _fraction(as_number(evaluation["pool"]["accuracy"])),
            "baseline_accuracy": _fraction(as_number(evaluation["baseline_accuracy"])),
            "best_prioritizer": best_text(names, value),
        }
    except (*SHAPE_ERRORS, OverflowError):
        return dict(_NO_FIGURES)


# Which file holds a run kind's figures for the runs table, and how to read them.
FIGURES_BY_KIND = {
    RANKING_KIND: ("summary.json", figures_of_summary),
    EVALUATION_KIND: (EVALUATION_NAME, figures_of_evaluation),
}
