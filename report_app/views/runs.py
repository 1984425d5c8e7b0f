"""The Runs page: every run under the root in one table, searched, sorted and paged; click a
run to open it, tick two to compare them."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from report_app.widgets import (
    arrived,
    esc,
    open_page,
    request_open,
    show_error,
    table_height,
)
from testprio.report import data as reportdata

TABLE_KEY = "runs-table"
# What the table's selection means once the rows under it changed (search, sort, page).
VIEW_KEY = "runs-view"
NO_SELECTION = {"selection": {"rows": [], "columns": [], "cells": []}}


# Pixel widths of the key columns: with the row ticks they fit the 1,120 pixels the page
# has at a window 1,280 wide, so none of them scrolls out of view.
KEY_WIDTHS = {
    "run_id": 130,
    "status": 85,
    "model": 105,
    "dataset": 105,
    "metric": 70,
    "samples": 75,
    "labels": 160,
    "accuracy": 70,
    "apfd": 65,
    "started": 125,
    "duration": 70,
}


def column_config() -> dict:
    number = st.column_config.NumberColumn
    text = st.column_config.TextColumn
    width = KEY_WIDTHS
    return {
        "run_id": text("run", width=width["run_id"], help="click a run to open it"),
        "status": text("status", width=width["status"]),
        "kind": text("kind", width=80, help="ranking (testprio run) or evaluation"),
        "model": text("model", width=width["model"]),
        "dataset": text("pool", width=width["dataset"]),
        "metric": text("metric", width=width["metric"]),
        "samples": number("samples", format="localized", width=width["samples"]),
        "labels": text(
            "labels",
            width=width["labels"],
            help="where the run's labels come from, with how many samples each labels: "
            "imported (testprio labels import, the Labels page) and the pool's own",
        ),
        "accuracy": number(
            "accuracy",
            format="%.4f",
            width=width["accuracy"],
            help="on the run's labels: the imported ones where it has any, else the pool's",
        ),
        "apfd": number("APFD", format="%.4f", width=width["apfd"], help="on the run's labels"),
        "started": text("started (UTC)", width=width["started"]),
        "duration": text("duration", width=width["duration"]),
        "pool_accuracy": number(
            "pool accuracy",
            format="%.4f",
            width=95,
            help="on the pool's own labels, where the run has imported labels too",
        ),
        "pool_apfd": number("pool APFD", format="%.4f", width=85),
        "baseline_accuracy": number(
            "baseline",
            format="%.4f",
            width=75,
            help="evaluations: the model as given, on the test split",
        ),
        "best_prioritizer": text("best prioritizer", help="evaluations: highest normalized APFD"),
        "error": text("error", width="large"),
    }


def runs_page(root: str, rows: list[dict]) -> None:
    st.title("testprio runs")
    st.caption(esc(f"Root: {root}"))
    search, sort, paging = st.columns([3, 1, 1])
    query = search.text_input(
        "Search runs",
        placeholder="name, model, pool, metric, labels, status, start time, duration",
        key="runs-search",
    )
    order = sort.selectbox("Sort by", list(reportdata.RUN_SORTS), key="runs-sort")
    matching = reportdata.runs_page(rows, query=query, sort=order, page=0)
    page_number = 1
    if matching.pages > 1:
        page_number = int(
            paging.number_input(
                f"Page (of {matching.pages})",
                min_value=1,
                max_value=matching.pages,
                value=1,
                key="runs-page",
            )
        )
    view = reportdata.runs_page(rows, query=query, sort=order, page=page_number - 1)
    shown = f"{view.total} of {len(rows)} runs"
    if query.strip():
        shown += f" match “{esc(query.strip())}”"
    if view.pages > 1:
        first = view.page * reportdata.RUNS_PER_PAGE
        shown += f"; {first + 1}-{first + len(view.rows)} on this page"
    st.write(shown + ". Click a run to open it; tick two runs to compare them.")
    signature = (query, order, view.page)
    if st.session_state.get(VIEW_KEY) != signature or arrived():
        # Selections are row positions: the same position is another run after a change.
        # Coming back from another page, the browser may still send the click that opened
        # a run (it forgets a table's selection only when a script run finishes).
        st.session_state[VIEW_KEY] = signature
        st.session_state[TABLE_KEY] = NO_SELECTION
    event = st.dataframe(
        pd.DataFrame(view.rows, columns=list(reportdata.RUNS_TABLE_COLUMNS)),
        hide_index=True,
        height=table_height(len(view.rows), most=20),
        column_order=view.columns,
        column_config=column_config(),
        key=TABLE_KEY,
        on_select="rerun",
        selection_mode=["multi-row", "single-cell"],
        placeholder="",
    )
    cells = event.selection.get("cells") or []
    if cells:
        run = view.runs[int(cells[0][0])]
        request_open(reportdata.PAGE_OF_KIND[run["kind"]], run=run["run_id"])
    ticked = [view.runs[int(row)] for row in event.selection.get("rows") or []]
    compare_ticked(ticked)
    for row in view.runs:
        if row["status"] == "failed":
            show_error(f"{row['run_id']} failed in {row['failed_stage']}: {row['error']}")
        elif row["status"] == "refused":
            show_error(row["error"])


def compare_ticked(ticked: list[dict]) -> None:
    """A Compare button for two ticked runs, or what is missing for one."""
    if not ticked:
        return
    names = " and ".join(row["run_id"] for row in ticked)
    if len(ticked) == 1:
        st.caption(esc(f"Ticked: {names}. Tick a second run to compare the two."))
    elif len(ticked) > 2:
        st.caption(f"{len(ticked)} runs ticked; Compare takes two.")
    elif not all(reportdata.comparable(row) for row in ticked):
        st.caption(esc(f"Ticked: {names}. Compare takes two finished ranking runs (testprio run)."))
    else:
        a, b = (row["run_id"] for row in ticked)
        st.button(
            esc(f"Compare {a} and {b}"),
            on_click=open_page,
            args=("compare",),
            kwargs={"a": a, "b": b},
            type="primary",
            key="runs-compare",
        )
