"""The runs list as the Runs page shows it: searched, sorted over every run (not only the
rows on screen) and cut into pages, each row with text in every text column."""

from __future__ import annotations

import math
from dataclasses import dataclass

from testprio.errors import TestprioError
from testprio.report.runs import EVALUATION_KIND, RANKING_KIND, filter_runs

RUNS_PER_PAGE = 50
# Each sort the Runs page offers: the row field it orders by and whether the largest (or
# latest) comes first. Rows without a value come last either way.
RUN_SORTS = {
    "newest first": ("started", True),
    "oldest first": ("started", False),
    "name": ("run_id", False),
    "status": ("status", False),
    "model": ("model", False),
    "pool": ("dataset", False),
    "samples": ("samples", True),
    "accuracy": ("accuracy", True),
    "APFD": ("apfd", True),
    "longest first": ("duration_s", True),
}
# The columns of the table, in order: the key columns first, then those only some runs have
# (``kind`` where a row on the page is an evaluation; ``RUNS_OPTIONAL_COLUMNS`` where a row
# has a value).
RUNS_TABLE_COLUMNS = (
    "run_id",
    "status",
    "model",
    "dataset",
    "metric",
    "samples",
    "labels",
    "accuracy",
    "apfd",
    "started",
    "duration",
    "kind",
    "pool_accuracy",
    "pool_apfd",
    "baseline_accuracy",
    "best_prioritizer",
    "error",
)
RUNS_OPTIONAL_COLUMNS = (
    "pool_accuracy",
    "pool_apfd",
    "baseline_accuracy",
    "best_prioritizer",
    "error",
)
RUNS_NUMBER_COLUMNS = (
    "samples",
    "accuracy",
    "apfd",
    "pool_accuracy",
    "pool_apfd",
    "baseline_accuracy",
)


@dataclass
class RunsPage:
    """One page of the runs list: ``rows`` (table rows, ``RUNS_TABLE_COLUMNS``), ``runs`` (the
    runs table's rows behind them, in the same order), the ``total`` matching runs, this
    ``page`` (0-based) of ``pages`` and the ``columns`` to show."""

    rows: list[dict]
    runs: list[dict]
    total: int
    page: int
    pages: int
    columns: list[str]


def sort_runs(rows: list[dict], sort: str) -> list[dict]:
    """``rows`` ordered by one of ``RUN_SORTS`` (ties by run id); missing values last."""
    if sort not in RUN_SORTS:
        raise TestprioError(
            f"'{sort}' is not a way to sort runs; use one of {', '.join(RUN_SORTS)}."
        )
    field, descending = RUN_SORTS[sort]
    known = [row for row in rows if row.get(field) not in (None, "")]
    unknown = [row for row in rows if row.get(field) in (None, "")]
    known.sort(key=lambda row: row["run_id"])
    known.sort(key=lambda row: _sort_key(row[field]), reverse=descending)
    return known + sorted(unknown, key=lambda row: row["run_id"])


def _sort_key(value):
    return value.lower() if isinstance(value, str) else value


def runs_table_row(row: dict) -> dict:
    """A runs-table row as the table shows it: text ("" where unknown) in text columns,
    numbers or None in number columns; ``started`` to the minute (the column says UTC)."""
    shown = {
        name: row.get(name) if name in RUNS_NUMBER_COLUMNS else _text(row.get(name))
        for name in RUNS_TABLE_COLUMNS
    }
    shown["started"] = shown["started"].removesuffix(" UTC")[:16]
    return shown


def _text(value) -> str:
    return "" if value is None else str(value)


def runs_page(
    rows: list[dict],
    *,
    query: str = "",
    sort: str = "newest first",
    page: int = 0,
    page_size: int = RUNS_PER_PAGE,
) -> RunsPage:
    """Page ``page`` (0-based, clamped) of the runs matching ``query``, sorted by ``sort``."""
    if page_size <= 0:
        raise TestprioError(f"page size {page_size} must be a positive number of runs.")
    matching = sort_runs(filter_runs(rows, query), sort)
    pages = max(1, math.ceil(len(matching) / page_size))
    page = min(max(int(page), 0), pages - 1)
    shown = matching[page * page_size : (page + 1) * page_size]
    table = [runs_table_row(row) for row in shown]
    evaluations = any(row["kind"] == EVALUATION_KIND for row in shown)
    columns = [
        name
        for name in RUNS_TABLE_COLUMNS
        if (name != "kind" or evaluations)
        and (name not in RUNS_OPTIONAL_COLUMNS or any(row[name] not in (None, "") for row in table))
    ]
    return RunsPage(table, shown, len(matching), page, pages, columns)


def comparable(row: dict) -> bool:
    """Whether Compare takes this run: a finished ranking (an evaluation has no ranking)."""
    return row.get("kind") == RANKING_KIND and row.get("status") == "succeeded"


# The page that opens a run of each kind (run.json's parameters.kind).
PAGE_OF_KIND = {RANKING_KIND: "run", EVALUATION_KIND: "evaluation"}
