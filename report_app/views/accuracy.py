"""The Run page's Accuracy and APFD tab: accuracy, misclassified, APFD and the
fault-detection curve of each label source (imported labels first, then the pool's), their
per-class accuracy, and every prioritizer's APFD on the pool's labels."""

from __future__ import annotations

import streamlit as st

from report_app.cached import label_sources_of
from report_app.widgets import APFD_COLUMNS, APFD_TEXT, chart, open_run, table_height
from testprio.report import charts
from testprio.report import data as reportdata

# What each source's figures are taken over, said under its heading.
SOURCE_CAPTIONS = {
    reportdata.IMPORTED: (
        "Labels imported after the run ({samples:,} samples, ranks {first_rank:,} to "
        "{last_rank:,}): the run's labels wherever they exist. Figures of these samples "
        "alone, in rank order (position 1 is the best-ranked labelled sample)."
    ),
    reportdata.POOL: "Labels the pool came with ({samples:,} samples), in rank order.",
}


def source_caption(source: reportdata.LabelSource) -> str:
    figures = {name: value or 0 for name, value in source.figures.items()}
    return SOURCE_CAPTIONS[source.source].format(**figures)


def accuracy_section(root: str, details: reportdata.RunDetails) -> None:
    st.header("Accuracy and APFD")
    sources = label_sources_of(root, details.run_id)
    if not sources:
        st.info(
            "This run has no labels yet: its pool came without any and none were imported. "
            "Export the top of the ranking for labelling on the Labels page, then import the "
            "labels there or with `testprio labels import`."
        )
        st.button("Open the Labels page", on_click=open_run, args=(details.run_id, "labels"))
        return
    for source in sources:
        source_block(source, both=len(sources) > 1)
    st.markdown(APFD_TEXT)
    compared = reportdata.prioritizer_apfd_rows(details.summary)
    if compared:
        st.subheader("APFD of every prioritizer (pool labels)")
        st.caption(
            "The pool's labelled samples in the order of each prioritizer this run's scores "
            "allow (✓: the order of this ranking)."
        )
        st.dataframe(
            compared,
            hide_index=True,
            height=table_height(len(compared), most=20),
            column_config=APFD_COLUMNS,
        )


def source_block(source: reportdata.LabelSource, *, both: bool) -> None:
    """One source's figures, curve and per-class accuracy under a heading naming it."""
    st.subheader(source.text.capitalize())
    st.caption(source_caption(source))
    figures = source.figures
    prefix = f"{source.text}: " if both else ""
    columns = st.columns(4)
    columns[0].metric(f"{prefix}accuracy", _number(figures["accuracy"]))
    misclassified = figures["misclassified"]
    columns[1].metric(
        f"{prefix}misclassified", "-" if misclassified is None else f"{misclassified:,}"
    )
    columns[2].metric(f"{prefix}APFD", _number(figures["apfd"]))
    columns[3].metric(f"{prefix}APFD normalized", _number(figures["apfd_normalized"]))
    left, right = st.columns(2)
    with left:
        if source.curve:
            curve = charts.fault_curve(reportdata.fault_curve_rows(source.curve))
            chart(curve.properties(title=f"Mistakes found vs inputs inspected ({source.text})"))
        else:
            st.write("No misclassified sample: nothing to find.")
    with right:
        if source.per_class:
            accuracy = charts.per_class_accuracy(source.per_class)
            chart(accuracy.properties(title=f"Accuracy per true class ({source.text})"))


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
