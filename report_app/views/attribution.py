"""The metamorphic attribution of an instability ranking, on the Run and Evaluation pages."""

from __future__ import annotations

import streamlit as st

from report_app.widgets import esc, show_error, table_height


def attribution_section(attribution: dict) -> None:
    """The instability prioritizer's metamorphic follow-ups: which transforms flip classes."""
    st.header("Metamorphic attribution (instability)")
    rate = attribution["violation_rate"]
    st.caption(
        esc(
            f"{attribution['followups']} follow-ups per pool sample from "
            f"{', '.join(attribution['transforms'])}"
            + (" (narrow ranges for tiny images)" if attribution["tiny_image_ranges"] else "")
            + ("" if rate is None else f"; {rate:.1%} of them change the class")
            + ". Violation rate: share of follow-ups applying the transform whose class "
            "changes (without it: rate without). ATE: the difference, with its "
            f"{attribution['confidence'] or 0.95:.0%} cluster-bootstrap interval "
            f"({attribution['n_boot']} replicates). Shapley: the transform's share of the "
            "difference between the violation rates with every transform and with none."
        )
    )
    if attribution["error"]:
        show_error(attribution["error"])
    if attribution["rows"]:
        probability = {
            name: st.column_config.NumberColumn(format="%.4f")
            for name in attribution["rows"][0]
            if name != "transform"
        }
        st.dataframe(
            attribution["rows"],
            hide_index=True,
            height=table_height(len(attribution["rows"])),
            column_config={
                **probability,
                "violation_rate": st.column_config.NumberColumn("violation rate", format="%.4f"),
                "rate_without": st.column_config.NumberColumn("rate without", format="%.4f"),
                "ate": st.column_config.NumberColumn("ATE", format="%+.4f"),
                "ate_ci_low": st.column_config.NumberColumn("ATE CI low", format="%+.4f"),
                "ate_ci_high": st.column_config.NumberColumn("ATE CI high", format="%+.4f"),
                "shapley": st.column_config.NumberColumn("Shapley", format="%+.4f"),
                "shapley_ci_low": st.column_config.NumberColumn("Shapley CI low", format="%+.4f"),
                "shapley_ci_high": st.column_config.NumberColumn("Shapley CI high", format="%+.4f"),
            },
        )
