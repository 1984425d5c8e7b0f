"""The Run page's Ranking tab: the ranking a page at a time, filtered by class, score and
label, with thumbnails; the label column holds the run's labels (imported, else the pool's)
and says which."""

from __future__ import annotations

import streamlit as st

from report_app.cached import imported_labels_of, ranking_page_of
from report_app.widgets import esc
from testprio.report import data as reportdata

PAGE_SIZES = (25, 50, 100, 500)


def ranking_section(root: str, details: reportdata.RunDetails) -> None:
    st.header("Ranking")
    metric = details.metric
    summary = details.summary
    names = reportdata.class_names(details)
    labels = [reportdata.class_label(i, names) for i in range(summary["num_classes"])]
    upper = float(summary["histograms"][metric]["edges"][-1])
    left, middle, right = st.columns([2, 2, 1])
    chosen = left.multiselect("Predicted class", labels, key="rank-classes")
    low, high = middle.slider(
        f"{esc(metric)} range", 0.0, upper, (0.0, upper), step=upper / 100 or 0.01, key="rank-range"
    )
    page_size = right.selectbox("Rows per page", PAGE_SIZES, index=1, key="rank-size")
    true_labels, wrong_only = None, False
    imported = imported_labels_of(root, details.run_id)
    labelled = details.has_labels or imported is not None
    if labelled:
        left, right = st.columns([4, 1])
        chosen_truth = left.multiselect("True label", labels, key="rank-labels")
        true_labels = tuple(labels.index(label) for label in chosen_truth) or None
        wrong_only = right.checkbox("Misclassified only", key="rank-wrong")
    filters = reportdata.RankingFilter(
        classes=tuple(labels.index(label) for label in chosen) if chosen else None,
        score_min=low if low > 0.0 else None,
        score_max=high if high < upper else None,
        labels=true_labels,
        misclassified=wrong_only,
    )
    first = ranking_page_of(root, details.run_id, 0, page_size, filters)
    page = st.number_input(
        f"Page (of {first.pages:,})", min_value=1, max_value=first.pages, value=1, key="rank-page"
    )
    result = (
        first
        if page == 1
        else ranking_page_of(root, details.run_id, int(page) - 1, page_size, filters)
    )
    rows = result.rows.to_pandas()
    if labelled:
        wrong = rows["label"].notna() & (rows["predicted"] != rows["label"])
        rows.insert(1, "wrong", wrong.map({True: "✗", False: ""}))
    st.caption(
        f"{result.total:,} matching samples, most uncertain first. Thumbnails for the first "
        f"{reportdata.THUMBNAIL_ROWS} rows of a page"
        + ("; ✗ marks a prediction that differs from the label" if labelled else "")
        + (
            "; label: the imported label where there is one, else the pool's (label from "
            "says which)."
            if imported is not None
            else "."
        )
    )
    st.dataframe(
        rows,
        hide_index=True,
        column_config={
            "image": st.column_config.ImageColumn("image", width="small"),
            "wrong": st.column_config.TextColumn("wrong", help="✗: predicted ≠ label"),
            "label": st.column_config.NumberColumn("label", help="the run's label"),
            "label_source": st.column_config.TextColumn(
                "label from", help="imported: testprio labels import; pool: the pool's own"
            ),
        },
        placeholder="",
    )
