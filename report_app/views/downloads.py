"""The Downloads page: a run's ranking, its top k with images, the labelling round trip and
export.zip."""

from __future__ import annotations

import streamlit as st

from report_app.cached import details_of
from report_app.views.labelling import labelling_section
from report_app.widgets import pick_run
from testprio import storage
from testprio.report import data as reportdata


def downloads_page(root: str, rows: list[dict]) -> None:
    st.title("Downloads")
    run_id = pick_run(root, "Run", "run", [row["run_id"] for row in rows])
    if run_id is None:
        return
    details = details_of(root, run_id)
    if not details.has_ranking:
        st.info("This run has no ranking to download.")
        return
    layout = details.layout
    st.subheader("Ranking")
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
    st.subheader("Top-k for labeling")
    k = int(
        st.number_input(
            "k", min_value=1, max_value=max(1, min(details.num_rows, 10_000)), value=100
        )
    )
    left, right = st.columns(2)
    left.download_button(
        f"Top {k} as CSV (sample ids and sources)",
        data=lambda: reportdata.rows_to_csv(reportdata.top_k_rows(details, k)),
        file_name=f"{run_id}-top-{k}.csv",
        mime="text/csv",
        on_click="ignore",
    )
    right.download_button(
        f"Top {k} images (zip of PNGs and the CSV)",
        data=lambda: reportdata.top_k_images_zip(details, k),
        file_name=f"{run_id}-top-{k}-images.zip",
        mime="application/zip",
        on_click="ignore",
    )
    labelling_section(root, details)
    st.subheader("Everything")
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
