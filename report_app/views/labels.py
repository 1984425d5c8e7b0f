"""The Labels page: a run's labels in and out. The top k for labelling (one export: the
labelling zip, with labels.csv, the images and the Label Studio tasks), the import of the
labelled file, the figures of each label source, and the run's ranking and export.zip."""

from __future__ import annotations

import streamlit as st

from report_app.cached import details_of, forget_labels, label_sources_of
from report_app.views.labelling import labelling_section
from report_app.views.run import ACCURACY
from report_app.widgets import LABEL_FIGURE_COLUMNS, open_run, pick_run, table_height
from testprio import storage
from testprio.report import data as reportdata

# Session key the labelling section sets to the last imported upload's id.
IMPORTED_KEY = "label-imported"


def labels_page(root: str, rows: list[dict]) -> None:
    st.title("Labels")
    run_id = pick_run(root, "Run", "run", [row["run_id"] for row in rows])
    if run_id is None:
        return
    details = details_of(root, run_id)
    if not details.has_ranking:
        st.info("This run has no ranking yet, so there is nothing to label or download.")
        return
    before = st.session_state.get(IMPORTED_KEY)
    labelling_section(root, details)
    if st.session_state.get(IMPORTED_KEY) != before:
        forget_labels()  # the Run page, Runs and Compare now read the imported labels
    sources_section(root, details)
    downloads_section(details)


def sources_section(root: str, details: reportdata.RunDetails) -> None:
    """The figures of each label source (read again after an import above)."""
    sources = label_sources_of(root, details.run_id)
    if not sources:
        return
    st.subheader("The run's labels")
    st.caption(
        "Imported labels are the run's labels wherever they exist, on every page: the Run "
        "page's figures and ranking, Runs and Compare. Where the pool came with labels too, "
        "both are shown, each named by its source."
    )
    rows = reportdata.label_figure_rows(details, sources)
    st.dataframe(
        rows,
        hide_index=True,
        height=table_height(len(rows)),
        column_order=["labels", "samples", "accuracy", "misclassified", "apfd", "apfd_normalized"],
        column_config=LABEL_FIGURE_COLUMNS,
        placeholder="",
    )
    st.button(
        "Open the run's Accuracy and APFD",
        on_click=open_run,
        args=(details.run_id, "run", ACCURACY),
        key="labels-open-run",
    )


def downloads_section(details: reportdata.RunDetails) -> None:
    """The whole ranking (CSV, Parquet) and the report stage's export.zip."""
    run_id, layout = details.run_id, details.layout
    st.subheader("The whole ranking")
    left, right = st.columns(2)
    left.download_button(
        "Ranking as CSV",
        data=lambda: reportdata.ranking_csv(layout),
        file_name=f"{run_id}-ranking.csv",
        mime="text/csv",
        on_click="ignore",
    )
    right.download_button(
        "Ranking as Parquet",
        data=lambda: reportdata.ranking_parquet(details),
        file_name=f"{run_id}-ranking.parquet",
        mime="application/octet-stream",
        on_click="ignore",
    )
    export = reportdata.export_zip_file(details)  # refused here if it links out of the root
    if export is not None:
        st.download_button(
            "export.zip (ranking, scores and probabilities, report.html, run.json, model.json)",
            data=lambda: storage.read_bytes(export),
            file_name=f"{run_id}-export.zip",
            mime="application/zip",
            on_click="ignore",
        )
    else:
        st.write("This run has no report/export.zip (its report stage has not run).")
