"""The Compare page: two ranking runs of the same pool side by side."""

from __future__ import annotations

import streamlit as st

from report_app.cached import comparison_of, details_of, label_sources_of
from report_app.widgets import APFD_TEXT, LABEL_FIGURE_COLUMNS, chart, esc, pick_run, show_error
from testprio.report import charts
from testprio.report import data as reportdata


def compare_page(root: str, rows: list[dict]) -> None:
    st.title("Compare two runs")
    ranked = [
        row["run_id"]
        for row in rows
        if row["status"] == "succeeded" and row["kind"] == reportdata.RANKING_KIND
    ]
    if len(ranked) < 2:
        st.info("Comparing needs two finished runs on the same data.")
        return
    left, right = st.columns(2)
    with left:
        a = pick_run(root, "Run A", "a", ranked, default=0)
    with right:
        other = next(index for index, run_id in enumerate(ranked) if run_id != a)
        b = pick_run(root, "Run B", "b", ranked, default=other)
    if a == b:
        st.info("Pick two different runs.")
        return
    first, second = details_of(root, a), details_of(root, b)
    pool = reportdata.pool_identity(first, second)
    if not pool["same"]:
        # One sentence, and nothing that pairs the samples of the two pools.
        show_error(
            f"Runs {a} and {b} ranked different pools (compared: {pool['compared']}), so "
            "their samples are not compared; pick two runs of the same pool."
        )
        return
    st.caption(esc(f"Same pool; compared: {pool['compared']}."))
    st.subheader("Accuracy and APFD")
    sources = {
        details.run_id: label_sources_of(root, details.run_id) for details in (first, second)
    }
    figures = [
        row
        for details in (first, second)
        for row in reportdata.label_figure_rows(details, sources[details.run_id])
    ]
    if figures:
        st.caption(
            "Each run on its own labels: imported ones (the run's labels, over the imported "
            "samples alone) and the pool's, each named in the labels column."
        )
        st.dataframe(
            figures,
            hide_index=True,
            column_config=LABEL_FIGURE_COLUMNS,
            placeholder="",
        )
    curves = reportdata.fault_curves_by_run(sources)
    if any(curves.values()):
        left, right = st.columns(2)
        with left:
            chart(charts.fault_curves(reportdata.fault_curves_rows(curves)))
        with right:
            st.markdown(APFD_TEXT)
    else:
        st.write("Neither run has misclassified labelled samples: no fault-detection curve.")
    result = comparison_of(root, a, b)
    st.subheader("Rankings")
    for warning in result["warnings"]:
        st.warning(esc(warning))
    columns = st.columns(3)
    spearman = result["spearman"]
    columns[0].metric("Spearman rank correlation", "-" if spearman is None else f"{spearman:.4f}")
    columns[1].metric("shared samples", f"{result['shared']:,}")
    columns[2].metric("metrics", " vs ".join(result["metrics"]))
    st.caption(esc(f"models: {result['models'][0]} vs {result['models'][1]}"))
    left, right = st.columns(2)
    with left:
        st.subheader("Top-k overlap")
        st.dataframe(result["overlaps"], hide_index=True)
        chart(charts.top_k_overlap(result["overlaps"]))
    with right:
        chart(charts.rank_scatter(result["scatter"], a, b))
    st.subheader("Samples that moved most")
    st.dataframe(result["moved"], hide_index=True)
