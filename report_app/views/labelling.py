"""The Downloads page's labelling section: the top k for Label Studio as a zip (blind unless
pre-annotated; its tasks carry the images, or address them under a URL prefix the user
gives), the import of labelled files, and the figures of the labelled samples."""

from __future__ import annotations

from dataclasses import replace

import streamlit as st

from report_app.widgets import esc, show_error
from testprio import labels, storage
from testprio.errors import TestprioError
from testprio.report import data as reportdata
from testprio.report import refresh_report_html


def labelling_section(root: str, details: reportdata.RunDetails) -> None:
    """Export the top k for Label Studio; import labels and show the labelled part's figures."""
    st.subheader("Label in Label Studio")
    st.caption(
        "A zip with labels.csv, label_studio_tasks.json, label_studio_config.xml, the images "
        "and a README. In Label Studio: create a project, paste label_studio_config.xml under "
        "Settings > Labeling Interface > Code, then Import label_studio_tasks.json; its tasks "
        "carry the images, so they show with no storage to set up (or give a URL prefix "
        "where you serve the images). Import the labelled export below. testprio labels push "
        "does the same through Label Studio's API."
    )
    top = max(1, min(details.num_rows, 10_000))
    left, right = st.columns([1, 2])
    k = int(
        left.number_input(
            "Top k to label",
            min_value=1,
            max_value=top,
            value=min(top, int(details.parameters.get("top_k") or 10)),
            key="label-k",
        )
    )
    pre_annotate = left.checkbox(
        "Pre-annotate with the model's class",
        value=False,
        key="label-pre",
        help="Off (blind): the tasks carry no model answer, so a labeller cannot accept the "
        "model's class with one click.",
    )
    prefix = right.text_input(
        "Image URL prefix (empty: the images travel inside the tasks)",
        value="",
        key="label-prefix",
        help="Where you serve the zip's images/ folder, e.g. https://files.example/batch1/; "
        "the tasks then address each image under it instead of carrying it.",
    ).strip()
    layout = details.layout
    right.download_button(
        f"Labelling export of the top {k} (zip)",
        data=lambda: labels.export_zip_bytes(
            layout, top_k=k, url_prefix=prefix, pre_annotate=pre_annotate
        ),
        file_name=f"{details.run_id}-label-top-{k}.zip",
        mime="application/zip",
        on_click="ignore",
    )
    upload = st.file_uploader(
        "Labels to import (Label Studio JSON or JSON-MIN export, or a CSV with sample_id and "
        "label)",
        type=["json", "csv"],
        key="label-upload",
    )
    if upload is not None and st.session_state.get("label-imported") != upload.file_id:
        try:
            result = labels.import_labels(layout, upload.name, data=upload.getvalue())
            result = replace(result, report=refresh_report_html(layout))
        except TestprioError as exc:
            show_error(str(exc))
        else:
            st.session_state["label-imported"] = upload.file_id
            st.success(esc(result.sentence()))
    record = storage.read_json(reportdata.run_file(layout, layout.run_json))
    show_labelled(record.get("labelled"))


def show_labelled(figures: dict | None) -> None:
    if not figures:
        st.caption("No labels imported into this run yet.")
        return
    st.caption(
        esc(
            f"Imported labels ({figures.get('file', '')}): {figures['samples']:,} labelled "
            f"samples, ranks {figures['first_rank']}-{figures['last_rank']}. APFD of the "
            "labelled samples alone, in rank order."
        )
    )
    apfd = figures.get("apfd") or {}
    columns = st.columns(4)
    columns[0].metric("labelled accuracy", f"{figures['accuracy']:.4f}")
    columns[1].metric("labelled misclassified", f"{figures['misclassified']:,}")
    columns[2].metric("labelled APFD", f"{apfd['raw']:.4f}" if apfd else "-")
    normalized = apfd.get("normalized")
    columns[3].metric(
        "labelled APFD normalized", "-" if normalized is None else f"{normalized:.4f}"
    )
