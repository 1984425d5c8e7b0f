"""The Run page's Sample tab: one sample by rank (rank 1 to start with) or id, its image,
probabilities, label and its rank under every metric."""

from __future__ import annotations

import streamlit as st

from report_app.cached import sample_of
from report_app.widgets import chart, esc, table_height
from testprio.report import charts
from testprio.report import data as reportdata


def sample_section(root: str, details: reportdata.RunDetails) -> None:
    """One sample: its image, probabilities, and its rank under every metric."""
    st.header("Sample")
    left, right = st.columns([1, 2])
    by = left.radio("Find by", ["rank", "sample id"], horizontal=True, key="sample-by")
    # Rank 1 to start with: only this tab reads the run's score columns (the ranks under
    # every metric), and only once it is open.
    if by == "rank":
        number = right.number_input(
            "Rank", min_value=1, max_value=max(1, details.num_rows), value=1, key="sample-rank"
        )
        chosen = (int(number), None) if number is not None else None
    else:
        number = right.number_input("Sample id", min_value=0, value=None, key="sample-id")
        chosen = (None, int(number)) if number is not None else None
    if chosen is None:
        st.caption("Enter a rank or a sample id to see that sample.")
        return
    detail = sample_of(root, details.run_id, *chosen)
    left, middle, right = st.columns([1, 2, 2])
    with left:
        st.image(detail["image"], width=192)
        st.caption(
            esc(
                ("original file " if detail["original"] else "preprocessed tensor ")
                + detail["source"]
            )
        )
    with middle:
        facts = [
            ("rank", f"{detail['rank']:,}"),
            ("sample id", str(detail["sample_id"])),
            ("predicted", detail["predicted"]),
            ("confidence", f"{detail['confidence']:.4f}"),
            ("label", detail["label"] or "unknown"),
        ]
        if detail["label_source"] is not None:
            facts.append(("label from", reportdata.SOURCE_TEXT[detail["label_source"]]))
        if detail["wrong"] is not None:
            facts.append(("misclassified", "yes" if detail["wrong"] else "no"))
        st.dataframe(
            [{"fact": name, "value": value} for name, value in facts],
            hide_index=True,
            height=table_height(len(facts)),
        )
        ranks = [
            {
                "metric": metric,
                "score": round(detail["scores"][metric], 6),
                "rank": rank,
                "of": details.num_rows,
            }
            for metric, rank in detail["ranks"].items()
        ]
        st.dataframe(ranks, hide_index=True, height=table_height(len(ranks)))
    with right:
        if detail["probabilities"]:
            chart(charts.probabilities(detail["probabilities"]))
