"""The Runs page: every run under the root, searchable, with a link to open each."""

from __future__ import annotations

import streamlit as st

from report_app.widgets import esc, open_run, show_error
from testprio.report import data as reportdata

# The page that opens a run of each kind (run.json's parameters.kind).
PAGE_OF_KIND = {reportdata.RANKING_KIND: "run", reportdata.EVALUATION_KIND: "evaluation"}


def runs_page(root: str, rows: list[dict]) -> None:
    st.title("testprio runs")
    st.caption(esc(f"Root: {root}"))
    query = st.text_input(
        "Search runs", placeholder="name, model, dataset, metric, status, start time, duration"
    )
    shown = reportdata.filter_runs(rows, query)
    st.write(f"{len(shown)} of {len(rows)} runs")
    table = [
        {
            **{name: row[name] for name in reportdata.RUN_COLUMNS},
            **{name: row.get(name) for name in reportdata.RUN_FIGURE_COLUMNS},
            "open": f"?page={PAGE_OF_KIND[row['kind']]}&run={row['run_id']}",
            "error": row["error"],
        }
        for row in shown
    ]
    st.dataframe(
        table,
        hide_index=True,
        column_config={
            "run_id": st.column_config.TextColumn("name"),
            "samples": st.column_config.NumberColumn("samples", format="localized"),
            "accuracy": st.column_config.NumberColumn("accuracy", format="%.4f"),
            "apfd": st.column_config.NumberColumn("APFD", format="%.4f"),
            "baseline_accuracy": st.column_config.NumberColumn(
                "baseline accuracy", format="%.4f", help="evaluations: the model as given"
            ),
            "best_prioritizer": st.column_config.TextColumn(
                "best prioritizer", help="evaluations: highest normalized APFD"
            ),
            "open": st.column_config.LinkColumn("open", display_text="open"),
        },
    )
    for row in shown:
        if row["status"] == "failed":
            show_error(f"{row['run_id']} failed in {row['failed_stage']}: {row['error']}")
        elif row["status"] == "refused":
            show_error(row["error"])
    if shown:
        run_id = st.selectbox("Run", [row["run_id"] for row in shown], key="runs-open")
        kind = next(row["kind"] for row in shown if row["run_id"] == run_id)
        st.button("Open run", on_click=open_run, args=(run_id, PAGE_OF_KIND[kind]))
