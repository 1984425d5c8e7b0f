"""What every page lays out the same way: errors, the run picker, links between pages,
tables, charts, and the APFD explanation and columns."""

from __future__ import annotations

import streamlit as st

from testprio.errors import TestprioError
from testprio.report import data as reportdata

# Text from a run, as Markdown that shows it literally (captions, alerts, titles, labels).
esc = reportdata.md_escape

# Said beside every fault-detection curve.
APFD_TEXT = """
APFD (Average Percentage of Faults Detected) says how early the ranking puts the
misclassified inputs (the faults). With n ranked inputs, k of them misclassified at
1-based ranks r₁ … rₖ:

APFD = 1 − (r₁ + … + rₖ) / (k · n) + 1 / (2n)

It is the area under the curve of mistakes found against inputs inspected. Raw APFD can
only lie between the worst order (every fault last: k / 2n) and the best (every fault first:
1 − k / 2n), so it depends on how many faults there are. Normalized APFD maps that range
onto 0..1: 1 is the best possible order, 0 the worst. 0.5 is what a random order scores on
average (raw and normalized alike): a ranking is useful when it scores clearly above 0.5.
"""
APFD_COLUMNS = {
    "apfd": st.column_config.NumberColumn("APFD", format="%.4f"),
    "apfd_normalized": st.column_config.NumberColumn("APFD normalized", format="%.4f"),
}
# A table of ``reportdata.label_figure_rows`` (Compare, Labels).
LABEL_FIGURE_COLUMNS = {
    "samples": st.column_config.NumberColumn("labelled samples", format="localized"),
    "accuracy": st.column_config.NumberColumn(format="%.4f"),
    **APFD_COLUMNS,
}


def show_errors_of(page, *args) -> None:
    """Run a page; a refused or unreadable file stops it with its one sentence."""
    try:
        page(*args)
    except TestprioError as exc:
        show_error(str(exc))


def show_error(text: str) -> None:
    """``text`` (which may come from a run) as an error box."""
    st.error(esc(text))


def query_run(root: str, name: str, run_ids: list[str]) -> str | None:
    """The run id in URL parameter ``name`` if it names one of ``run_ids``, else None."""
    value = st.query_params.get(name)
    if value is None:
        return None
    try:
        reportdata.resolve_run(root, value)
    except TestprioError as exc:
        show_error(str(exc))
        return None
    if value not in run_ids:
        show_error(f"there is no run '{value}' under {root}; pick one from the list.")
        return None
    return value


def pick_run(
    root: str, label: str, param: str, run_ids: list[str], *, default: int = 0
) -> str | None:
    """A select box of ``run_ids`` that starts at the run in URL parameter ``param`` (else
    the ``default``-th) and writes the choice back to the URL."""
    if not run_ids:
        st.info(f"No runs under {esc(root)} yet; start one with `testprio run`.")
        return None
    chosen = query_run(root, param, run_ids)
    key = f"pick-{param}"
    if st.session_state.get(key) not in run_ids:
        st.session_state[key] = chosen or run_ids[min(default, len(run_ids) - 1)]
    run_id = st.selectbox(label, run_ids, key=key)
    st.query_params[param] = run_id
    return run_id


# Session key of a page asked for from inside a page (``request_open``).
OPEN_REQUEST = "open-request"


def open_page(page: str, **runs: str) -> None:
    """Show ``page`` with these runs (URL parameter -> run id: ``run``, ``a``, ``b``). A
    callback, or ``apply_open_request`` before the sidebar: it sets the sidebar's page."""
    st.session_state["page"] = page
    for param, run_id in runs.items():
        st.session_state[f"pick-{param}"] = run_id
    st.query_params.update(page=page, **runs)


# The URL parameter (and session key) of the Run page's open tab: a link opens any tab.
SECTION_KEY = "section"


def open_run(run_id: str, page: str = "run", section: str | None = None) -> None:
    """Button callback: show ``run_id`` on ``page`` (runs before the next script run), on the
    Run page's tab ``section`` if given."""
    open_page(page, run=run_id)
    if section is not None:
        st.session_state[SECTION_KEY] = section


def request_open(page: str, **runs: str) -> None:
    """Open ``page`` from the middle of a page (a table's selection): the sidebar is drawn
    already, so the script runs again and ``apply_open_request`` opens it first."""
    st.session_state[OPEN_REQUEST] = (page, runs)
    st.rerun()


def apply_open_request() -> None:
    """Open the page ``request_open`` asked for, if any; app.py calls it before the sidebar."""
    request = st.session_state.pop(OPEN_REQUEST, None)
    if request is not None:
        open_page(request[0], **request[1])


# The page the latest script run began to draw, and whether that run came from another page.
SHOWN_PAGE_KEY = "shown-page"
ARRIVED_KEY = "arrived"


def note_page_shown(page: str) -> None:
    """Record that this script run draws ``page``; app.py calls it before the page."""
    st.session_state[ARRIVED_KEY] = st.session_state.get(SHOWN_PAGE_KEY) != page
    st.session_state[SHOWN_PAGE_KEY] = page


def arrived() -> bool:
    """Whether this script run came to its page from another page (or is the first)."""
    return st.session_state.get(ARRIVED_KEY, True)


def table_height(rows: int, *, most: int = 12) -> int:
    """Pixels that show ``rows`` rows (at most ``most``) of an ``st.dataframe`` unscrolled."""
    return 38 + 35 * max(1, min(rows, most))


# The view size Altair's default theme adds to every specification; Streamlit sizes charts.
ALTAIR_DEFAULT_VIEW = {"continuousWidth": 300, "continuousHeight": 300}


def chart(spec) -> None:
    """An Altair chart as wide as its column.

    Converted here without Altair's check against the Vega-Lite schema, which
    ``st.altair_chart`` runs on every script run (about 0.2 s a chart on a busy 2-core
    machine: most of a tab's time); tests/test_app.py checks every chart the pages send.
    The charts carry their data inline, so no data transformer is involved."""
    vega = spec.to_dict(validate=False)
    config = vega.get("config") or {}
    if config.get("view") == ALTAIR_DEFAULT_VIEW:
        del config["view"]
        if not config:
            vega.pop("config")
    st.vega_lite_chart(vega, width="stretch")
