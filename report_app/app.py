"""testprio report: browse the runs under a root (a local folder or gs://bucket/prefix).

Start it with ``testprio report --root ROOT``. Layout only: every table and figure comes from
``testprio.report.data`` and every chart from ``testprio.report.charts``. The root is fixed when the
app starts (``--root`` after ``--`` or ``TESTPRIO_REPORT_ROOT``); URL parameters choose a
page and runs by id, and ``reportdata.resolve_run`` refuses anything but a run id under the
root, and every file of a run is read through ``reportdata.run_file``/``shard_file``, which
refuse real paths outside the root. Text that comes from a run (run ids, metric and class
names, sources, error sentences) goes through ``reportdata.md_escape`` wherever Streamlit
reads it as Markdown (captions, alerts, titles, widget and metric labels). Uncaught
exceptions show no message or traceback in the browser (``client.showErrorDetails``).

This file sets the page up, reads the runs table and calls the page chosen at the top;
each page is a module of ``report_app.views``, the cached reads are ``report_app.cached`` and
what the pages share is ``report_app.widgets``. Streamlit runs this file as a script, so it
imports them as the ``report_app`` package, which testprio installs beside ``testprio``.
"""

from __future__ import annotations

import os
import sys

import streamlit as st

from report_app.cached import runs_of
from report_app.views.compare import compare_page
from report_app.views.evaluation import evaluation_page
from report_app.views.labels import labels_page
from report_app.views.run import run_page
from report_app.views.runs import runs_page
from report_app.widgets import apply_open_request, note_page_shown, show_error, show_errors_of
from testprio import storage
from testprio.errors import TestprioError

ROOT_ENV = "TESTPRIO_REPORT_ROOT"
# Each page (its key in the URL's ``page``): its title in the sidebar and the function that
# lays it out from the root and the runs table.
PAGES = {
    "runs": ("Runs", runs_page),
    "run": ("Run", run_page),
    "evaluation": ("Evaluation", evaluation_page),
    "compare": ("Compare", compare_page),
    "labels": ("Labels", labels_page),
}
# Pages under an older key: links to ``?page=downloads`` open the Labels page.
OLD_PAGE_KEYS = {"downloads": "labels"}
# The toolbar without developer options: no Deploy button, no "Record a screencast".
TOOLBAR_MODE = "viewer"


def report_root() -> str:
    args = sys.argv[1:]
    if "--root" in args and args.index("--root") + 1 < len(args):
        return args[args.index("--root") + 1]
    return os.environ.get(ROOT_ENV, "runs")


st.set_page_config(page_title="testprio report", layout="wide")
# "none", not the legacy false: false still sends the traceback (file paths) to the browser.
st.set_option("client.showErrorDetails", "none")
st.set_option("client.toolbarMode", TOOLBAR_MODE)  # `testprio report` passes it too
ROOT = report_root()
try:
    ROOT = storage.normalize_root(ROOT)
    all_runs = runs_of(ROOT)
except TestprioError as exc:
    show_error(str(exc))
    st.stop()

apply_open_request()
if st.session_state.get("page") not in PAGES:
    requested = st.query_params.get("page", "runs")
    requested = OLD_PAGE_KEYS.get(requested, requested)
    st.session_state["page"] = requested if requested in PAGES else "runs"
# The pages along the top, not in a sidebar: the page keeps the window's whole width (the
# runs table's columns all show at 1280 pixels).
page_key = st.radio(
    "Page",
    list(PAGES),
    format_func=lambda key: PAGES[key][0],
    key="page",
    horizontal=True,
    label_visibility="collapsed",
)
st.query_params["page"] = page_key
note_page_shown(page_key)
show_errors_of(PAGES[page_key][1], ROOT, all_runs)
