"""The Run page's Labels section: accuracy, APFD and the fault-detection curve of a pool
with labels, per-class accuracy, and every prioritizer's APFD."""

from __future__ import annotations

import streamlit as st

from report_app.cached import fault_curve_of
from report_app.widgets import APFD_COLUMNS, APFD_TEXT, chart, table_height
from testprio.report import charts
from testprio.report import data as reportdata


def labels_section(root: str, details: reportdata.RunDetails) -> None:
    labels = details.summary["labels"]
    st.header("Labels")
    apfd = labels["apfd"] or {}
    columns = st.columns(4)
    columns[0].metric("accuracy", f"{labels['accuracy']:.4f}")
    columns[1].metric("misclassified", f"{labels['misclassified']:,}")
    columns[2].metric("APFD", f"{apfd['raw']:.4f}" if apfd else "-")
    normalized = apfd.get("normalized")
    columns[3].metric("APFD normalized", f"{normalized:.4f}" if normalized is not None else "-")
    curve = fault_curve_of(root, details.run_id)
    left, right = st.columns(2)
    with left:
        if curve:
            chart(charts.fault_curve(reportdata.fault_curve_rows(curve)))
        else:
            st.write("No misclassified sample: nothing to find.")
    with right:
        st.markdown(APFD_TEXT)
    names = reportdata.class_names(details)
    chart(charts.per_class_accuracy(reportdata.per_class_accuracy(details.summary, names)))
    compared = reportdata.prioritizer_apfd_rows(details.summary)
    if compared:
        st.subheader("APFD of every prioritizer")
        st.caption(
            "The same labelled samples in the order of each prioritizer this run's scores "
            "allow (✓: the order of this ranking)."
        )
        st.dataframe(
            compared,
            hide_index=True,
            height=table_height(len(compared), most=20),
            column_config=APFD_COLUMNS,
        )
