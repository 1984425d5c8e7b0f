"""The Streamlit report app, page by page, through ``streamlit.testing.v1.AppTest`` on fixture
runs under a local root and under an emulator gs:// root."""

from __future__ import annotations

import json
import re
import shutil
import uuid
from pathlib import Path

import numpy as np
import pytest
from markdown_it import MarkdownIt
from streamlit.testing.v1 import AppTest

from testprio import storage
from testprio.report import data as reportdata
from tests.reportkit import RUN_IDS, make_runs

APP = Path(__file__).resolve().parent.parent / "report_app" / "app.py"
# The Run page's tabs and the headers each lays out.
RUN_TABS = {
    "Overview": ["Model", "Data", "Stages"],
    "Scores": ["Scores", "Most and least uncertain"],
    "Ranking": ["Ranking"],
    "Sample": ["Sample"],
    "Accuracy and APFD": ["Accuracy and APFD"],
}


@pytest.fixture(scope="module")
def local_runs(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("app")
    make_runs(str(folder / "runs"), folder / "inputs")
    return str(folder / "runs")


@pytest.fixture(scope="module")
def gcs_runs(tmp_path_factory, gcs_emulator) -> str:
    from tests.conftest import BUCKET

    root = f"gs://{BUCKET}/app-{uuid.uuid4().hex[:8]}"
    make_runs(root, tmp_path_factory.mktemp("app-gcs"))
    return root


@pytest.fixture(params=["local", "gcs"])
def runs_root(request) -> str:
    return request.getfixturevalue(f"{request.param}_runs")


def open_app(monkeypatch, root: str, **query: str) -> AppTest:
    import streamlit as st

    st.cache_data.clear()
    monkeypatch.setenv("TESTPRIO_REPORT_ROOT", root)
    app = AppTest.from_file(str(APP), default_timeout=60)
    for key, value in query.items():
        app.query_params[key] = value
    app.run()
    assert not app.exception, [e.value for e in app.exception]
    return app


def open_tab(app: AppTest, name: str) -> AppTest:
    """Open the Run page's tab ``name`` (as a click on it does) and run the page again."""
    app.session_state["section"] = name
    app.run()
    assert not app.exception, [e.value for e in app.exception]
    return app


def tab_names(app: AppTest) -> list[str]:
    return [tab.label for tab in app.tabs]


def chart_rows(chart) -> list[dict]:
    """Every data row of a chart element: Streamlit sends a single chart's data as Arrow IPC
    and leaves a layered chart's data inline in each layer."""
    import pyarrow as pa

    spec = json.loads(chart.proto.spec)
    inline = [part.get("data", {}).get("values", []) for part in [spec, *spec.get("layer", [])]]
    blobs = [chart.proto.data.data] + [dataset.data.data for dataset in chart.proto.datasets]
    arrow = [pa.ipc.open_stream(blob).read_all().to_pylist() for blob in blobs if blob]
    return [row for rows in inline + arrow for row in rows]


def shown(markdown: str) -> str:
    """What a CommonMark renderer shows for ``markdown`` (backslash escapes and the
    invisible word joiners that break autolinks removed)."""
    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", markdown).replace(reportdata.WORD_JOINER, "")


def texts(app: AppTest) -> list[str]:
    """Every Markdown-rendered text of the page (titles, headers, captions, markdown, alerts)."""
    kinds = (app.title, app.header, app.subheader, app.caption, app.markdown, app.error)
    return [element.value for kind in kinds for element in kind] + [
        element.value for element in app.warning
    ]


def test_runs_page_lists_every_run_and_shows_failures(monkeypatch, runs_root):
    app = open_app(monkeypatch, runs_root)
    assert app.title[0].value == "testprio runs"
    table = app.dataframe[0].value
    assert set(table["run_id"]) == set(RUN_IDS)
    assert {"model", "dataset", "metric", "status", "started", "duration"} <= set(table.columns)
    assert len(app.error) == 1
    assert shown(app.error[0].value).startswith("failed failed in convert: model input")
    app.text_input[0].input("entropy").run()
    assert list(app.dataframe[0].value["run_id"]) == ["entropy"]


def test_runs_page_shows_samples_accuracy_and_apfd(monkeypatch, local_runs):
    app = open_app(monkeypatch, local_runs)
    table = app.dataframe[0].value.set_index("run_id")
    summary = reportdata.load_run(reportdata.resolve_run(local_runs, "labeled")).summary
    assert table.loc["labeled", "samples"] == 118
    assert table.loc["labeled", "accuracy"] == round(summary["labels"]["accuracy"], 4)
    assert table.loc["labeled", "apfd"] == round(summary["labels"]["apfd"]["raw"], 4)
    assert np.isnan(table.loc["rgb", "apfd"]) and table.loc["rgb", "samples"] == 30


def test_an_interrupted_run_shows_as_unfinished_on_both_pages(monkeypatch, own_root):
    import socket
    import subprocess
    import sys

    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    run = own_root / "labeled"
    record = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**record, "status": "running"}))
    owner = {"host": socket.gethostname(), "pid": int(gone.stdout), "pid_started": 0.0}
    (run / "owner.json").write_text(json.dumps(owner))
    app = open_app(monkeypatch, str(own_root))
    assert list(app.dataframe[0].value["status"]) == ["unfinished"]
    app = open_app(monkeypatch, str(own_root), page="run", run="labeled")
    assert shown(app.caption[0].value).startswith("unfinished · model digits.onnx")


@pytest.mark.parametrize(
    "data",
    [b"[1]", b'{"counts": [2]}', b'{"counts": {"samples": 1, "ranked": 1, "quarantined": 0}}'],
)
def test_a_malformed_summary_is_one_sentence_on_the_run_page(monkeypatch, own_root, data):
    (own_root / "labeled" / "summary.json").write_bytes(data)
    app = open_app(monkeypatch, str(own_root), page="run", run="labeled")  # no exception
    assert any(
        "summary.json is not a summary the report can show" in shown(error.value)
        for error in app.error
    ), [error.value for error in app.error]


def test_the_toolbar_has_no_deploy_button(monkeypatch, local_runs):
    import streamlit as st

    st.set_option("client.toolbarMode", "auto")
    open_app(monkeypatch, local_runs)
    assert st.get_option("client.toolbarMode") == "viewer"  # viewer: no Deploy button
    from testprio import cli

    command = cli.report_server_command(str(local_runs), 8600, "127.0.0.1")
    at = command.index("--client.toolbarMode")
    assert command[at + 1] == "viewer" and at < command.index("--")


def test_stage_timeline_of_1000_shards_is_one_bar_per_stage(monkeypatch, own_root):
    run = own_root / "labeled"
    record = json.loads((run / "run.json").read_text())
    rng = np.random.default_rng(3)
    stages = [{"stage": "ingest", "start": 0.0, "end": 2.0, "seconds": 2.0}]
    for index in range(1000):
        seconds = float(rng.uniform(0.1, 2.0))
        start = 2.0 + index * 0.05
        stages.append(
            {"stage": f"score-shard-{index:05d}", "start": start, "end": start + seconds}
            | {"seconds": seconds, "rows": 10}
        )
    stages.append({"stage": "rank", "start": 60.0, "end": 61.0, "seconds": 1.0})
    (run / "run.json").write_text(json.dumps({**record, "stages": stages}))
    app = open_app(monkeypatch, str(own_root), page="run", run="labeled")
    (timeline,) = [c for c in app.get("vega_lite_chart") if "Stage timeline" in c.proto.spec]
    bars = chart_rows(timeline)
    assert [bar["stage"] for bar in bars] == ["ingest", "score (1,000 shards)", "rank"]
    assert bars[1]["detail"].startswith("1,000 shards; seconds per shard: min ")


def test_labelling_export_and_the_labelled_figures(monkeypatch, own_root):
    from testprio import labels

    app = open_app(monkeypatch, str(own_root), page="downloads", run="labeled")
    buttons = [button.label for button in app.download_button]
    assert "Labelling export of the top 5 (zip)" in buttons  # the run's --top-k
    assert any(caption.value == "No labels imported into this run yet." for caption in app.caption)
    layout = reportdata.resolve_run(str(own_root), "labeled")
    ranking = storage.read_table(layout.ranking).to_pylist()[:20]
    csv_text = "sample_id,label\n" + "".join(f"{r['sample_id']},{r['label']}\n" for r in ranking)
    result = labels.import_labels(layout, "batch.csv", data=csv_text.encode())
    app = open_app(monkeypatch, str(own_root), page="downloads", run="labeled")
    metrics = {metric.label: metric.value for metric in app.metric}
    figures = result.labelled
    assert metrics["labelled accuracy"] == f"{figures['accuracy']:.4f}"
    assert metrics["labelled misclassified"] == str(figures["misclassified"])
    assert metrics["labelled APFD"] == f"{figures['apfd']['raw']:.4f}"
    assert metrics["labelled APFD normalized"] == f"{figures['apfd']['normalized']:.4f}"
    assert any("20 labelled samples, ranks 1-20." in shown(c.value) for c in app.caption)


def param(app: AppTest, name: str) -> str:
    """The URL parameter ``name`` of the app (one value)."""
    value = app.query_params[name]
    return value[0] if isinstance(value, list) else value


def select_runs(app: AppTest, *, rows=(), cell: int | None = None) -> AppTest:
    """Tick ``rows`` of the runs table, or click the run in row ``cell``, as in a browser."""
    cells = [[cell, "run_id"]] if cell is not None else []
    app.session_state["runs-table"] = {"selection": {"rows": list(rows), "cells": cells}}
    app.run()
    assert not app.exception, [e.value for e in app.exception]
    return app


def vega_lite_problems(app: AppTest) -> list[str]:
    """What is wrong, against the Vega-Lite schema, with each chart the page sent (the app
    converts charts without Altair's check, so this is where they are checked)."""
    import jsonschema
    from altair.vegalite.v6.schema.core import load_schema  # the schema Altair carries

    validator = jsonschema.Draft7Validator(load_schema())
    problems = []
    for element in app.get("vega_lite_chart"):
        spec = json.loads(element.proto.spec)
        spec.setdefault("data", {"name": "sent apart"})  # Streamlit sends the data as Arrow
        error = jsonschema.exceptions.best_match(validator.iter_errors(spec))
        if error is not None:
            problems.append(f"{spec.get('title')}: {error.message} at {list(error.path)}")
    return problems


def test_every_chart_the_pages_send_is_valid_vega_lite(monkeypatch, local_runs, eval_runs):
    checked = 0
    app = open_app(monkeypatch, local_runs, page="run", run="labeled")
    for name in RUN_TABS:
        open_tab(app, name)
        assert vega_lite_problems(app) == [], name
        checked += len(app.get("vega_lite_chart"))
    for root, query in [
        (local_runs, {"page": "compare", "a": "labeled", "b": "entropy"}),
        (eval_runs, {"page": "evaluation", "run": "evaluation"}),
    ]:
        app = open_app(monkeypatch, root, **query)
        assert vega_lite_problems(app) == [], query
        checked += len(app.get("vega_lite_chart"))
    assert checked >= 13


def test_clicking_a_run_in_the_table_opens_it(monkeypatch, local_runs):
    app = open_app(monkeypatch, local_runs)
    row = list(app.dataframe[0].value["run_id"]).index("rgb")
    select_runs(app, cell=row)
    assert app.title[0].value == "Run rgb"
    assert param(app, "run") == "rgb"
    app.radio(key="page").set_value("runs").run()  # back: the click is not taken again
    assert app.title[0].value == "testprio runs"


def test_back_to_runs_before_the_run_page_finished_does_not_reopen_the_run(monkeypatch, local_runs):
    app = open_app(monkeypatch, local_runs)
    row = list(app.dataframe[0].value["run_id"]).index("rgb")
    select_runs(app, cell=row)
    assert app.title[0].value == "Run rgb"
    # "Runs" clicked while the Run page is still drawn: the browser forgets the table's
    # selection only when a script run finishes, so it sends the click on the run again.
    app.session_state["runs-table"] = {"selection": {"rows": [], "cells": [[row, "run_id"]]}}
    app.radio(key="page").set_value("runs").run()
    assert not app.exception, [e.value for e in app.exception]
    assert app.title[0].value == "testprio runs"
    assert param(app, "page") == "runs"


def test_ticking_two_runs_compares_them(monkeypatch, local_runs):
    app = open_app(monkeypatch, local_runs)
    ids = list(app.dataframe[0].value["run_id"])
    select_runs(app, rows=[ids.index("labeled")])
    assert any("Tick a second run to compare" in shown(c.value) for c in app.caption)
    assert not [button for button in app.button if button.key == "runs-compare"]
    select_runs(app, rows=[ids.index("labeled"), ids.index("failed")])
    assert any("Compare takes two finished ranking runs" in shown(c.value) for c in app.caption)
    first, second = sorted([ids.index("labeled"), ids.index("entropy")])
    select_runs(app, rows=[first, second])
    app.button(key="runs-compare").click().run()
    assert app.title[0].value == "Compare two runs"
    assert {param(app, "a"), param(app, "b")} == {"labeled", "entropy"}
    assert app.metric[0].label == "Spearman rank correlation"


def make_many_runs(root: Path, count: int) -> None:
    """``count`` finished runs of run.json and summary.json alone (what the runs list reads),
    started a minute apart: ``run-000`` first; accuracy cycles through 0.05 ... 0.95."""
    from datetime import datetime, timedelta, timezone

    for index in range(count):
        run = root / f"run-{index:03d}"
        run.mkdir(parents=True)
        started = datetime(2026, 1, 1, tzinfo=timezone.utc) + timedelta(minutes=index)
        record = {
            "run_id": run.name,
            "status": "succeeded",
            "started": started.isoformat(),
            "ended": (started + timedelta(seconds=index)).isoformat(),
            "parameters": {"model": "m.onnx", "data": f"pool-{index % 7}.npz", "metric": "gini"},
        }
        (run / "run.json").write_text(json.dumps(record))
        labels = {"labeled": 100, "accuracy": (index % 10) / 10 + 0.05, "apfd": {"raw": 0.5}}
        summary = {
            "metric": "gini",
            "counts": {"ranked": 100 + index, "quarantined": 0},
            "histograms": {"gini": {"mean": 0.5}},
            "labels": labels,
        }
        (run / "summary.json").write_text(json.dumps(summary))


def test_runs_table_pages_searches_and_sorts_past_50_runs(monkeypatch, tmp_path, local_runs):
    make_many_runs(tmp_path / "runs", 120)
    app = open_app(monkeypatch, str(tmp_path / "runs"))
    table = app.dataframe[0].value
    assert list(table["run_id"]) == [f"run-{index:03d}" for index in range(119, 69, -1)]
    assert any(text.value.startswith("120 of 120 runs; 1-50 on this page") for text in app.markdown)
    assert app.dataframe[0].proto.placeholder == ""  # an unknown value shows as nothing
    app.number_input(key="runs-page").set_value(3).run()
    assert list(app.dataframe[0].value["run_id"]) == [f"run-{i:03d}" for i in range(19, -1, -1)]
    app.selectbox(key="runs-sort").select("accuracy").run()  # sorts every run, then pages
    app.number_input(key="runs-page").set_value(1).run()
    accuracy = list(app.dataframe[0].value["accuracy"])
    assert accuracy == sorted(accuracy, reverse=True) and accuracy[0] == 0.95
    app.text_input(key="runs-search").input("pool-3").run()
    found = sorted(app.dataframe[0].value["run_id"])
    assert found == [f"run-{index:03d}" for index in range(120) if index % 7 == 3]
    assert not [widget for widget in app.number_input if widget.key == "runs-page"]  # 17 runs
    # A click takes the run from the rows shown now, not from those before the search.
    shutil.copytree(Path(local_runs) / "labeled", tmp_path / "runs" / "real")
    import streamlit as st

    st.cache_data.clear()  # the runs list is read again after 15 s; a new run shows now
    app.text_input(key="runs-search").input("digits").run()
    assert list(app.dataframe[0].value["run_id"]) == ["real"]
    assert any(text.value.startswith("1 of 121 runs match “digits”.") for text in app.markdown)
    select_runs(app, cell=0)
    assert app.title[0].value == "Run real"


def test_run_page_has_every_tab_chart_and_gallery(monkeypatch, runs_root):
    app = open_app(monkeypatch, runs_root, page="run", run="labeled")
    assert app.title[0].value == "Run labeled"
    assert tab_names(app) == list(RUN_TABS)
    metrics = {metric.label: metric.value for metric in app.metric}
    summary = reportdata.load_run(reportdata.resolve_run(runs_root, "labeled")).summary
    assert metrics["accuracy"] == f"{summary['labels']['accuracy']:.4f}"
    assert metrics["quarantined"] == "2"
    # Only the open tab is laid out: the overview first.
    assert [header.value for header in app.header] == RUN_TABS["Overview"]
    assert len(app.image) == 16  # random samples
    charts = len(app.get("vega_lite_chart"))  # the stage timeline
    assert charts == 1
    for name, headers in RUN_TABS.items():
        open_tab(app, name)
        assert [header.value for header in app.header] == headers, name
        charts += len(app.get("vega_lite_chart")) if name != "Overview" else 0
        if name == "Scores":
            assert len(app.image) == 10 + 10  # top and bottom galleries
            assert any(
                "zoom" in c.proto.spec or "interval" in c.proto.spec
                for c in app.get("vega_lite_chart")
            )
        if name == "Ranking":
            ranking = ranking_table(app)
            assert list(ranking["rank"]) == list(range(1, 51))
            assert ranking["source"].iloc[0].startswith("digits.npz[")
        if name == "Sample":
            assert facts(app)["rank"] == "1"  # rank 1 without asking
    # timeline, histogram, class means, heatmap, probabilities, fault curve, per-class accuracy
    assert charts == 7


def test_ranking_filters_and_pages(monkeypatch, local_runs):
    app = open_app(monkeypatch, local_runs, page="run", run="labeled", section="Ranking")
    details = reportdata.load_run(reportdata.resolve_run(local_runs, "labeled"))
    ranking = storage.read_table(details.layout.ranking).to_pylist()
    app.multiselect(key="rank-classes").select("9").run()
    expected = [row["sample_id"] for row in ranking if row["predicted"] == 9]
    assert list(ranking_table(app)["sample_id"]) == expected[:50]
    assert any(f"{len(expected):,} matching samples" in caption.value for caption in app.caption)
    app.multiselect(key="rank-classes").unselect("9").run()
    app.selectbox(key="rank-size").select(25).run()
    app.number_input(key="rank-page").set_value(3).run()
    assert list(ranking_table(app)["rank"]) == list(range(51, 76))


def ranking_table(app: AppTest):
    """The ranking's page: the table with a ``rank`` and a ``source`` column."""
    (table,) = [
        frame.value for frame in app.dataframe if {"rank", "source"} <= set(frame.value.columns)
    ]
    return table


def test_ranking_has_thumbnails_marks_mistakes_and_filters_by_label(monkeypatch, local_runs):
    app = open_app(monkeypatch, local_runs, page="run", run="labeled", section="Ranking")
    details = reportdata.load_run(reportdata.resolve_run(local_runs, "labeled"))
    ranking = storage.read_table(details.layout.ranking).to_pylist()
    table = ranking_table(app)
    assert list(table.columns[:2]) == ["image", "wrong"]
    assert all(uri.startswith("data:image/png;base64,") for uri in table["image"])
    wrong = [row["predicted"] != row["label"] for row in ranking[:50]]
    assert list(table["wrong"] == "✗") == wrong
    app.checkbox(key="rank-wrong").check().run()
    misclassified = [row["sample_id"] for row in ranking if row["predicted"] != row["label"]]
    assert len(misclassified) == details.summary["labels"]["misclassified"]
    assert list(ranking_table(app)["sample_id"]) == misclassified[:50]
    assert set(ranking_table(app)["wrong"]) == {"✗"}
    app.multiselect(key="rank-labels").select("4").run()
    expected = [row["sample_id"] for row in ranking if row["label"] == 4 != row["predicted"]]
    assert expected and list(ranking_table(app)["sample_id"]) == expected


def test_ranking_thumbnails_are_bounded_to_the_first_rows_of_a_page(monkeypatch, local_runs):
    app = open_app(monkeypatch, local_runs, page="run", run="labeled", section="Ranking")
    app.selectbox(key="rank-size").select(500).run()
    images = ranking_table(app)["image"]
    assert len(images) == 118
    assert images.notna().sum() == reportdata.THUMBNAIL_ROWS


def facts(app: AppTest) -> dict[str, str]:
    (table,) = [
        frame.value
        for frame in app.dataframe
        if list(frame.value.columns) == ["fact", "value"]
        and "confidence" in set(frame.value["fact"])
    ]
    return dict(zip(table["fact"], table["value"], strict=True))


def test_sample_drill_down_by_rank_and_by_id(monkeypatch, local_runs):
    app = open_app(monkeypatch, local_runs, page="run", run="labeled", section="Sample")
    root = storage.normalize_root(local_runs)
    ranking = storage.read_table(reportdata.resolve_run(root, "labeled").ranking).to_pylist()
    entropy = storage.read_table(reportdata.resolve_run(root, "entropy").ranking).to_pylist()
    entropy_rank = {row["sample_id"]: row["rank"] for row in entropy}
    app.number_input(key="sample-rank").set_value(4).run()
    row = ranking[3]
    shown_facts = facts(app)
    assert shown_facts["rank"] == "4" and shown_facts["sample id"] == str(row["sample_id"])
    assert shown_facts["predicted"] == str(row["predicted"])
    assert shown_facts["confidence"] == f"{row['confidence']:.4f}"
    assert shown_facts["label"] == str(row["label"])
    (ranks,) = [frame.value for frame in app.dataframe if "metric" in frame.value.columns]
    by_metric = dict(zip(ranks["metric"], ranks["rank"], strict=True))
    assert set(by_metric) == {"gini", "entropy", "margin", "least_confidence"}
    assert by_metric["gini"] == 4 and by_metric["entropy"] == entropy_rank[row["sample_id"]]
    probabilities = [
        chart for chart in app.get("vega_lite_chart") if "Class probabilities" in chart.proto.spec
    ]
    assert len(probabilities) == 1
    assert any(
        shown(caption.value) == f"preprocessed tensor digits.npz[{row['sample_id']}]"
        for caption in app.caption
    )
    app.radio(key="sample-by").set_value("sample id").run()
    app.number_input(key="sample-id").set_value(ranking[10]["sample_id"]).run()
    assert facts(app)["rank"] == "11"
    app.number_input(key="sample-id").set_value(7).run()  # quarantined
    assert [shown(error.value) for error in app.error] == [
        "sample 7 is not among the 118 ranked samples of this run (a quarantined sample is not "
        "ranked); give a sample id from the ranking."
    ]
    assert [header.value for header in app.header] == ["Sample"]


def import_some_labels(root: Path, run_id: str = "labeled", count: int = 20):
    """Import labels for the top ``count`` samples of a run; every other one differs from
    the pool's label, so that the two sources give different figures."""
    from testprio import labels

    layout = reportdata.resolve_run(str(root), run_id)
    top = storage.read_table(layout.ranking).to_pylist()[:count]
    given = {
        row["sample_id"]: (row["label"] + 1) % 10 if index % 2 else row["label"]
        for index, row in enumerate(top)
    }
    text = "sample_id,label\n" + "".join(f"{i},{label}\n" for i, label in given.items())
    return labels.import_labels(layout, "batch.csv", data=text.encode()), given


def test_imported_labels_are_the_run_labels_on_every_page(monkeypatch, own_root):
    copy_run(own_root, "again")  # the same pool, without imported labels: for Compare
    result, given = import_some_labels(own_root)
    figures = result.labelled
    details = reportdata.load_run(reportdata.resolve_run(str(own_root), "labeled"))
    pool = details.summary["labels"]
    ranking = storage.read_table(details.layout.ranking).to_pylist()
    run_label = {row["sample_id"]: given.get(row["sample_id"], row["label"]) for row in ranking}

    app = open_app(monkeypatch, str(own_root))  # Runs: the imported figures, the pool's beside
    table = app.dataframe[0].value.set_index("run_id")
    assert table.loc["labeled", "labels"] == "imported 20, pool 118"
    assert table.loc["labeled", "accuracy"] == round(figures["accuracy"], 4)
    assert table.loc["labeled", "apfd"] == round(figures["apfd"]["raw"], 4)
    assert table.loc["labeled", "pool_accuracy"] == round(pool["accuracy"], 4)
    assert table.loc["labeled", "pool_apfd"] == round(pool["apfd"]["raw"], 4)
    assert table.loc["again", "labels"] == "pool 118"
    assert table.loc["again", "accuracy"] == round(pool["accuracy"], 4)
    assert np.isnan(table.loc["again", "pool_accuracy"])

    app = open_app(monkeypatch, str(own_root), page="run", run="labeled")
    metrics = {metric.label: metric.value for metric in app.metric}
    assert metrics["accuracy (imported labels)"] == f"{figures['accuracy']:.4f}"
    assert metrics["APFD (imported labels)"] == f"{figures['apfd']['raw']:.4f}"
    assert metrics["accuracy (pool labels)"] == f"{pool['accuracy']:.4f}"
    assert "accuracy" not in metrics

    open_tab(app, "Accuracy and APFD")
    metrics = {metric.label: metric.value for metric in app.metric}
    assert metrics["imported labels: misclassified"] == str(figures["misclassified"])
    assert metrics["imported labels: APFD normalized"] == f"{figures['apfd']['normalized']:.4f}"
    assert metrics["pool labels: misclassified"] == str(pool["misclassified"])
    assert [s.value for s in app.subheader][:2] == ["Imported labels", "Pool labels"]
    titles = {json.loads(c.proto.spec).get("title") for c in app.get("vega_lite_chart")}
    assert "Mistakes found vs inputs inspected (imported labels)" in titles

    open_tab(app, "Ranking")
    table = ranking_table(app)
    assert list(table["label"]) == [run_label[i] for i in table["sample_id"]]
    assert list(table["label_source"]) == ["imported"] * 20 + ["pool"] * 30
    assert list(table["wrong"] == "✗") == [
        run_label[row["sample_id"]] != row["predicted"] for row in ranking[:50]
    ]
    app.checkbox(key="rank-wrong").check().run()
    wrong = [row["sample_id"] for row in ranking if run_label[row["sample_id"]] != row["predicted"]]
    assert list(ranking_table(app)["sample_id"]) == wrong[:50]
    # Filtered by true label: a sample whose imported label differs from the pool's is
    # found under the imported one.
    pool_label = {row["sample_id"]: row["label"] for row in ranking}
    relabelled = next(i for i, label in given.items() if label != pool_label[i])
    app.checkbox(key="rank-wrong").uncheck().run()
    app.multiselect(key="rank-labels").select(str(given[relabelled])).run()
    expected = [i for i in run_label if run_label[i] == given[relabelled]]
    assert relabelled in expected
    assert list(ranking_table(app)["sample_id"]) == expected[:50]

    open_tab(app, "Sample")
    first = ranking[0]["sample_id"]
    assert facts(app)["label"] == str(given[first])
    assert facts(app)["label from"] == "imported labels"

    app = open_app(monkeypatch, str(own_root), page="compare", a="labeled", b="again")
    table = app.dataframe[0].value
    assert list(zip(table["run"], table["labels"], strict=True)) == [
        ("labeled", "imported labels"),
        ("labeled", "pool labels"),
        ("again", "pool labels"),
    ]
    assert list(table["accuracy"]) == [figures["accuracy"], pool["accuracy"], pool["accuracy"]]
    (curves,) = [c for c in app.get("vega_lite_chart") if "ranking inspected" in c.proto.spec]
    assert {row.get("run") for row in chart_rows(curves)} == {
        None,
        "labeled · imported labels",
        "labeled · pool labels",
        "again · pool labels",
    }


def make_image_run(folder: Path) -> Path:
    """An image-folder run (8x8 digit PNGs in class folders): its samples have originals."""
    from PIL import Image

    from tests.conftest import linear_classifier
    from tests.reportkit import digits
    from tests.stagekit import run_stages

    x, y = digits(30)
    for i in range(30):
        (folder / "pool" / f"d{y[i]}").mkdir(parents=True, exist_ok=True)
        pixels = np.round(x[i, 0] * 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / "pool" / f"d{y[i]}" / f"{i:03d}.png")
    model = linear_classifier(folder / "m.onnx", seed=1)
    ops = '[{"op": "scale", "divide": 255}, {"op": "layout", "to": "NCHW"}]'
    run_stages(model, folder / "pool", str(folder / "runs"), "img", ops=ops, shard_size=10)
    return folder / "runs"


def test_sample_of_an_image_folder_shows_the_original_file(monkeypatch, tmp_path):
    from PIL import Image

    from testprio import labels

    root = make_image_run(tmp_path)
    app = open_app(monkeypatch, str(root), page="run", run="img", section="Sample")
    assert facts(app)["rank"] == "1"  # rank 1 without asking
    details = reportdata.load_run(reportdata.resolve_run(str(root), "img"))
    first = reportdata.sample_detail(details, reportdata.score_columns(details), rank=1)
    assert any(
        shown(caption.value) == f"original file {first['source']}" for caption in app.caption
    )
    original = labels.original_image(details, first["sample_id"], first["source"])
    expected = np.asarray(Image.open(tmp_path / "pool" / first["source"]))
    assert np.array_equal(original, expected)
    # A file under the pool that is not an image is never shown; nor one outside it.
    (tmp_path / "pool" / first["source"]).write_text("a secret, not an image")
    assert labels.original_image(details, first["sample_id"], first["source"]) is None
    assert labels.original_image(details, first["sample_id"], "../runs/img/run.json") is None
    (tmp_path / "pool" / first["source"]).unlink()
    app = open_app(monkeypatch, str(root), page="run", run="img", section="Sample")
    assert facts(app)["rank"] == "1"  # rank 1 without asking
    assert any(
        shown(caption.value) == f"preprocessed tensor {first['source']}" for caption in app.caption
    )


def test_apfd_is_explained_next_to_the_fault_curve(monkeypatch, local_runs):
    app = open_app(monkeypatch, local_runs, page="run", run="labeled", section="Accuracy and APFD")
    (text,) = [" ".join(b.value.split()) for b in app.markdown if "APFD = 1 − " in b.value]
    assert "APFD = 1 − (r₁ + … + rₖ) / (k · n) + 1 / (2n)" in text
    assert "Raw APFD can only lie between the worst order" in text
    assert "Normalized APFD maps that range onto 0..1" in text
    assert "0.5 is what a random order scores on average" in text


def test_run_page_and_report_show_the_metamorphic_attribution(monkeypatch, tmp_path):
    from tests.conftest import linear_classifier, write_pool
    from tests.reportkit import digits
    from tests.stagekit import run_stages

    x, y = digits(90)
    model = linear_classifier(tmp_path / "m.onnx", seed=1)
    root = str(tmp_path / "runs")
    layout = run_stages(
        model,
        write_pool(tmp_path / "digits.npz", x, y),
        root,
        "meta",
        shard_size=45,
        metric="margin",
        metamorphic="brightness,contrast",
        followups=4,
    )
    summary = storage.read_json(layout.summary)
    app = open_app(monkeypatch, root, page="run", run="meta")
    assert tab_names(app) == [*RUN_TABS, "Attribution"]
    open_tab(app, "Accuracy and APFD")
    table = next(frame.value for frame in app.dataframe if "apfd_normalized" in frame.value)
    assert {"gini", "margin", "instability"} <= set(table["prioritizer"])
    open_tab(app, "Attribution")
    assert [header.value for header in app.header] == ["Metamorphic attribution (instability)"]

    effects = next(frame.value for frame in app.dataframe if "shapley" in frame.value)
    assert list(effects["transform"]) == ["brightness", "contrast"]
    attribution = summary["metamorphic"]["attribution"]["effects"]
    assert list(effects["ate"]) == pytest.approx([effect["ate"] for effect in attribution])

    html = (tmp_path / "runs" / "meta" / "report" / "report.html").read_text()
    assert "Every prioritizer on the same labels" in html
    assert "Metamorphic attribution (instability)" in html
    ate = f"{attribution[0]['ate']:.4f}"
    assert f'<td class="num">{ate}</td>' in html
    markdown = (tmp_path / "runs" / "meta" / "report" / "report.md").read_text()
    assert "| margin (this ranking) |" in markdown


def test_rgb_run_page_without_labels(monkeypatch, local_runs):
    app = open_app(monkeypatch, local_runs, page="run", run="rgb")
    assert tab_names(app) == list(RUN_TABS)
    assert [header.value for header in app.header] == RUN_TABS["Overview"]
    assert app.image[0].proto.imgs  # RGB samples are shown
    assert "accuracy" not in {metric.label for metric in app.metric}
    open_tab(app, "Accuracy and APFD")
    assert app.info[0].value.startswith("This run has no labels yet")


def test_failed_run_page_shows_the_error_sentence(monkeypatch, runs_root):
    app = open_app(monkeypatch, runs_root, page="run", run="failed")
    assert app.title[0].value == "Run failed"
    assert "convert failed: model input" in shown(app.error[0].value)
    assert [header.value for header in app.header] == ["Model", "Data", "Stages"]
    assert any("no ranking yet" in info.value for info in app.info)


def test_compare_page_shows_correlation_overlap_and_movers(monkeypatch, runs_root):
    app = open_app(monkeypatch, runs_root, page="compare", a="labeled", b="entropy")
    assert app.title[0].value == "Compare two runs"
    root = storage.normalize_root(runs_root)
    result = reportdata.compare_runs(
        reportdata.load_run(reportdata.resolve_run(root, "labeled")),
        reportdata.load_run(reportdata.resolve_run(root, "entropy")),
    )
    metrics = {metric.label: metric.value for metric in app.metric}
    assert metrics["Spearman rank correlation"] == f"{result['spearman']:.4f}"
    assert any(
        shown(caption.value).startswith("Same pool; compared: the data URI, pool name")
        for caption in app.caption
    )
    assert len(app.dataframe[-1].value) == 25  # samples that moved most
    # fault curves of both runs, top-k overlap, rank scatter
    assert len(app.get("vega_lite_chart")) == 3


def test_compare_page_shows_apfd_side_by_side_and_overlaid_fault_curves(monkeypatch, local_runs):
    app = open_app(monkeypatch, local_runs, page="compare", a="labeled", b="entropy")
    root = storage.normalize_root(local_runs)
    table = app.dataframe[0].value
    assert list(table["run"]) == ["labeled", "entropy"]
    for run_id, accuracy, apfd in zip(table["run"], table["accuracy"], table["apfd"], strict=True):
        labels = reportdata.load_run(reportdata.resolve_run(root, run_id)).summary["labels"]
        assert accuracy == labels["accuracy"] and apfd == labels["apfd"]["raw"]
    (curves,) = [c for c in app.get("vega_lite_chart") if "ranking inspected" in c.proto.spec]
    runs = {row.get("run") for row in chart_rows(curves)}
    assert runs == {None, "labeled", "entropy"}  # None: the random diagonal
    assert any("APFD = 1 − " in block.value for block in app.markdown)


def test_compare_page_refuses_runs_of_different_pools_in_one_sentence(monkeypatch, local_runs):
    app = open_app(monkeypatch, local_runs, page="compare", a="labeled", b="rgb")
    assert [shown(error.value) for error in app.error] == [
        "Runs labeled and rgb ranked different pools (compared: the data URI, pool name and "
        "sample count (the data manifests carry no content hash)), so their samples are not "
        "compared; pick two runs of the same pool."
    ]
    assert not app.dataframe and not app.metric and not app.get("vega_lite_chart")


def test_labels_page_offers_one_top_k_export_and_every_download(monkeypatch, runs_root):
    app = open_app(monkeypatch, runs_root, page="labels", run="labeled")
    assert app.title[0].value == "Labels"
    assert [option for option in app.radio(key="page").options] == [
        "Runs",
        "Run",
        "Evaluation",
        "Compare",
        "Labels",
    ]
    labels = [button.label for button in app.download_button]
    assert labels[0] == "Labelling export of the top 5 (zip)"  # the one top-k export
    assert labels[1:3] == ["Ranking as CSV", "Ranking as Parquet"]
    assert labels[3].startswith("export.zip") and len(labels) == 4
    old = open_app(monkeypatch, runs_root, page="downloads", run="labeled")  # an older link
    assert old.title[0].value == "Labels"


@pytest.mark.parametrize(
    "run_id", ["../../etc", "/etc/passwd", "..", "labeled/../../x", "gs://elsewhere/run"]
)
def test_url_parameters_cannot_leave_the_root(monkeypatch, local_runs, run_id):
    app = open_app(monkeypatch, local_runs, page="run", run=run_id)
    assert "is not a run id" in shown(app.error[0].value)
    assert app.title[0].value.startswith("Run ")  # falls back to a run under the root


def test_unknown_run_and_page_fall_back(monkeypatch, local_runs):
    app = open_app(monkeypatch, local_runs, page="nowhere", run="missing")
    assert app.title[0].value == "testprio runs"
    app = open_app(monkeypatch, local_runs, page="run", run="missing")
    assert "there is no run 'missing'" in shown(app.error[0].value)


def test_hostile_names_are_escaped_in_the_app(monkeypatch, local_runs):
    app = open_app(monkeypatch, local_runs, page="run", run="hostile")
    rendered = "\n".join(texts(app))
    assert "onerror" in rendered and "alert" in rendered  # the names are shown ...
    assert not re.search(r"(?<!\\)[<>]", rendered)  # ... with every angle bracket escaped
    app = open_app(monkeypatch, local_runs, page="runs")
    assert not re.search(r"(?<!\\)[<>]", "\n".join(texts(app)))


def test_an_empty_or_missing_root(monkeypatch, tmp_path):
    app = open_app(monkeypatch, str(tmp_path), page="run")
    assert any("No runs under" in info.value for info in app.info)
    app = open_app(monkeypatch, "ftp://host/runs")
    assert "unsupported scheme 'ftp:" in shown(app.error[0].value)


def test_report_command_refuses_a_missing_root(tmp_path, capsys):
    from testprio import cli

    assert cli.main(["report", "--root", str(tmp_path / "nowhere")]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (
        f"testprio: error: --root {tmp_path / 'nowhere'} is not a folder; give the folder that "
        "holds your runs (the --root of testprio run)."
    )


def test_report_command_runs_the_packaged_app(tmp_path):
    from testprio import cli

    command = cli.report_server_command(str(tmp_path), 8600, "127.0.0.1")
    assert command[1:4] == ["-m", "streamlit", "run"]
    assert command[4] == str(APP)
    assert command[-3:] == ["--", "--root", str(tmp_path)]
    assert "--server.port" in command and "8600" in command


# --- files confined to the root, run data shown as text, no error details ---------------

# What remark-gfm (mdast-util-gfm-autolink-literal) turns into links in parsed text.
GFM_AUTOLINK = r"(?i)https?://|www(?=\.)|[-.\w+]@[-\w]"
HOSTILE_NAMES = [
    "[x](http://evil.example/a)",
    "<script>alert(1)</script>",
    "http://evil.example",
    "www.evil.example",
    "mail@evil.example",
    ":red[loud] $x^2$ **bold**",
]


@pytest.fixture
def own_root(local_runs, tmp_path) -> Path:
    """A fresh root holding a copy of the ``labeled`` run, for tests that alter a run."""
    root = tmp_path / "runs"
    shutil.copytree(Path(local_runs) / "labeled", root / "labeled")
    return root


def copy_run(root: Path, name: str) -> Path:
    shutil.copytree(root / "labeled", root / name)
    return root / name


def markdown_texts(app: AppTest) -> list[str]:
    """Every string Streamlit renders as Markdown: texts, alerts, widget and metric labels."""
    labels = [
        widget.label
        for kind in ("selectbox", "multiselect", "slider", "number_input", "metric", "button")
        for widget in app.get(kind)
    ]
    return texts(app) + [info.value for info in app.info] + labels


def test_run_data_in_markdown_never_becomes_a_link_or_markup(monkeypatch, own_root):
    run = copy_run(own_root, "www.evil.example")  # a valid run id that GFM would autolink
    model = json.loads((run / "model" / "model.json").read_text())
    model["class_names"] = HOSTILE_NAMES + [f"digit {i}" for i in range(6, 10)]
    (run / "model" / "model.json").write_text(json.dumps(model))
    summary = json.loads((run / "summary.json").read_text())
    app = open_app(monkeypatch, str(own_root), page="run", run="www.evil.example")
    assert shown(app.title[0].value) == "Run www.evil.example"
    rendered = markdown_texts(app)
    for name in RUN_TABS:  # class names show in the galleries, the ranking, the sample
        rendered += markdown_texts(open_tab(app, name))
    assert any("evil" in text for text in rendered)  # the hostile names are on the page ...
    renderer = MarkdownIt("commonmark")
    for text in rendered:
        html = renderer.renderInline(text)
        assert "<a" not in html and "<script" not in html and "<strong" not in html, text
        # ... and remark-gfm, which looks for autolinks in the text after escapes are
        # resolved, finds none of its patterns (http://, www., e-mail) there.
        assert not re.search(GFM_AUTOLINK, renderer.renderInline(text)), text
        assert not re.search(r"(?<!\\)(:red\[|\$)", text), text  # Streamlit color, math
    assert summary["metric"] in {shown(metric.label).split()[-1] for metric in app.metric}


def test_symlinked_export_zip_outside_the_root_is_refused(monkeypatch, own_root, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the report")
    export = own_root / "labeled" / "report" / "export.zip"
    export.unlink()
    export.symlink_to(secret)
    app = open_app(monkeypatch, str(own_root), page="downloads", run="labeled")
    assert len(app.error) == 1
    assert shown(app.error[0].value) == (
        f"'labeled/report/export.zip' leads outside the report's root {own_root}."
    )
    assert not any(button.label.startswith("export.zip") for button in app.download_button)


@pytest.mark.parametrize(
    "name", ["../../outside/shard-00000.parquet", "/etc/passwd", "shard-00000.parquet/.."]
)
def test_crafted_shard_names_in_the_manifest_are_refused(monkeypatch, own_root, name):
    manifest_path = own_root / "labeled" / "data" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["shards"][0]["name"] = name
    manifest_path.write_text(json.dumps(manifest))
    app = open_app(monkeypatch, str(own_root), page="run", run="labeled")
    assert [shown(error.value) for error in app.error] == [
        f"data/manifest.json of run labeled lists the shard '{name}', which is not a "
        "shard-NNNNN.parquet file name; the run folder was changed after ingest wrote it."
    ]
    assert not app.header  # nothing of the run is shown


@pytest.mark.parametrize("relative", ["data/shard-00001.parquet", "summary.json", "data"])
def test_files_linked_out_of_the_root_are_refused(monkeypatch, own_root, tmp_path, relative):
    outside = tmp_path / "outside"
    outside.mkdir()
    target = own_root / "labeled" / relative
    moved = outside / target.name
    shutil.move(target, moved)  # the same content, reached through a link
    target.symlink_to(moved)
    app = open_app(monkeypatch, str(own_root), page="run", run="labeled")
    errors = [shown(error.value) for error in app.error]
    assert len(errors) == 1 and "leads outside the report's root" in errors[0], errors


def test_a_run_folder_linked_out_of_the_root_is_listed_as_refused(monkeypatch, own_root, tmp_path):
    shutil.move(own_root / "labeled", tmp_path / "elsewhere")
    (own_root / "linked").symlink_to(tmp_path / "elsewhere")
    app = open_app(monkeypatch, str(own_root))
    assert list(app.dataframe[0].value["status"]) == ["refused"]
    assert shown(app.error[0].value) == (
        f"'linked/run.json' leads outside the report's root {own_root}."
    )


def test_uncaught_errors_show_no_details(monkeypatch, own_root):
    from testprio.report import data as reportdata

    def broken(layout):  # a bug of ours, as the page would meet it
        raise KeyError("counts")

    monkeypatch.setattr(reportdata, "load_run", broken)
    import streamlit as st

    st.cache_data.clear()
    monkeypatch.setenv("TESTPRIO_REPORT_ROOT", str(own_root))
    app = AppTest.from_file(str(APP), default_timeout=60)
    app.query_params.update(page="run", run="labeled")
    app.run()
    assert len(app.exception) == 1
    assert "KeyError" not in str(app.exception[0].proto)
    assert app.exception[0].message.startswith("This app has encountered an error.")
    assert not app.exception[0].stack_trace


def test_report_command_hides_error_details(tmp_path):
    from testprio import cli

    command = cli.report_server_command(str(tmp_path), 8600, "127.0.0.1")
    at = command.index("--client.showErrorDetails")
    assert command[at + 1] == "none" and at < command.index("--")


# --- evaluation runs (testprio evaluate) -------------------------------------------------


@pytest.fixture(scope="module")
def eval_runs(tmp_path_factory, local_runs) -> str:
    """A root with a real evaluation run (ONNX MLP: head retraining) and a ranking run."""
    from tests.evalrunkit import make_evaluation

    folder = tmp_path_factory.mktemp("app-eval")
    shutil.copytree(Path(local_runs) / "labeled", folder / "runs" / "labeled")
    make_evaluation(str(folder / "runs"), folder)
    return str(folder / "runs")


@pytest.fixture
def own_eval_root(eval_runs, tmp_path) -> Path:
    """A fresh copy of ``eval_runs``, for tests that alter the evaluation."""
    shutil.copytree(eval_runs, tmp_path / "runs")
    return tmp_path / "runs"


def evaluation_json(root) -> dict:
    return json.loads((Path(root) / "evaluation" / "evaluation.json").read_text())


def best_reference(evaluation: dict) -> tuple[list[str], float]:
    scores = {n: e["apfd"]["normalized"] for n, e in evaluation["prioritizers"].items()}
    top = max(scores.values())
    return [name for name, value in scores.items() if value == top], top


def test_runs_page_lists_evaluation_runs(monkeypatch, eval_runs):
    evaluation = evaluation_json(eval_runs)
    app = open_app(monkeypatch, eval_runs)
    table = app.dataframe[0].value.set_index("run_id")
    row = table.loc["evaluation"]
    names, top = best_reference(evaluation)
    assert row["kind"] == "evaluation" and table.loc["labeled", "kind"] == "ranking"
    assert row["model"] == "eval-mlp.onnx" and row["status"] == "succeeded"
    assert row["samples"] == 400
    assert row["baseline_accuracy"] == round(evaluation["baseline_accuracy"], 4)
    assert row["best_prioritizer"] == f"{', '.join(names)} ({top:.4f})"
    select_runs(app, cell=list(app.dataframe[0].value["run_id"]).index("evaluation"))
    assert app.title[0].value == "Evaluation evaluation"


def vega_charts(app: AppTest) -> dict[str, list[dict]]:
    """Each chart's data rows, keyed by the chart's title."""
    found = {}
    for element in app.get("vega_lite_chart"):
        spec = json.loads(element.proto.spec)
        title = spec.get("title") or spec["layer"][0].get("title")
        found[title["text"] if isinstance(title, dict) else title] = chart_rows(element)
    return found


def test_evaluation_page_shows_winners_charts_retraining_and_attribution(monkeypatch, eval_runs):
    from tests.evalrunkit import PRIORITIZERS

    evaluation = evaluation_json(eval_runs)
    app = open_app(monkeypatch, eval_runs, page="evaluation", run="evaluation")
    assert not app.error
    assert [header.value for header in app.header] == [
        "Best per budget",
        "Fault detection",
        "Retraining",
        "Prioritizers",
        "Metamorphic attribution (instability)",
    ]
    winners = app.dataframe[0].value
    assert winners.to_dict("records") == [
        {
            "budget": row["budget"],
            "verdict": f"no prioritizer beats random at {row['budget']:g}%",  # one seed
            "by_accuracy": ", ".join(row["by_accuracy"]),
            "accuracy_mean": row["accuracy_mean"],
            "by_faults": ", ".join(row["by_faults"]),
            "found": row["found"],
        }
        for row in evaluation["winners"]
    ]
    metrics = {metric.label: metric.value for metric in app.metric}
    assert metrics["baseline accuracy"] == f"{evaluation['baseline_accuracy']:.4f}"
    assert metrics["best normalized APFD"] == f"{best_reference(evaluation)[1]:.4f}"
    # One series per prioritizer in each chart, with the file's figures.
    charts = vega_charts(app)
    assert "Faults found at each budget" not in charts  # the curves replace the budget points
    curves = charts["Fault-detection curves"]
    gains = charts["Accuracy gain after retraining"]
    bars = charts["APFD (normalized)"]
    for rows in (curves, gains, bars):
        assert {row["prioritizer"] for row in rows if "prioritizer" in row} == set(PRIORITIZERS)
    assert [
        (row["prioritizer"], [row["inspected"], row["found"]])
        for row in curves
        if "prioritizer" in row
    ] == [
        (name, point)
        for name, prioritizer in evaluation["prioritizers"].items()
        for point in prioritizer["curve"]
    ]
    assert {row["order"] for row in curves if "order" in row} == {"random", "ideal"}
    faults = app.dataframe[1].value  # the faults found per budget stay as a table
    assert list(faults.columns) == ["prioritizer", "1%", "5%", "10%"]
    assert {
        (name, budget, found)
        for name, row in faults.set_index("prioritizer").iterrows()
        for budget, found in row.items()
    } == {
        (name, f"{entry['budget']:g}%", entry["found"])
        for name, prioritizer in evaluation["prioritizers"].items()
        for entry in prioritizer["faults"]
    }
    baseline = evaluation["baseline_accuracy"]
    for row in (row for row in gains if "prioritizer" in row):
        retrained = evaluation["prioritizers"][row["prioritizer"]]["retrain"]
        (entry,) = [entry for entry in retrained if entry["budget"] == row["budget"]]
        assert row["gain"] == pytest.approx(entry["accuracy_mean"] - baseline)
        assert row["gain_low"] == pytest.approx(entry["ci_low"] - baseline)
    captions = [shown(caption.value) for caption in app.caption]
    assert CURVES_CAPTION in captions
    assert not any("it is not the full fault-detection curve" in text for text in captions)
    # Beside the verdicts, the controls: the ceiling and no selection.
    ceiling, info = [shown(info.value) for info in app.info]
    assert ceiling.startswith("Beside them: whole pool labelled (the ceiling) ")
    # ONNX: the page says itself that only the head was retrained.
    assert evaluation["retraining"]["method"] == "onnx"
    assert (
        "Head-only retraining: only the classifier head (the ONNX model's last linear layer)"
        in (info)
    )
    assert any(
        shown(caption.value).startswith(
            f"Retraining method onnx: {evaluation['retraining']['description']}. 1 epoch, "
        )
        for caption in app.caption
    )
    effects = evaluation["prioritizers"]["instability"]["attribution"]["effects"]
    attribution = app.dataframe[-1].value
    assert list(attribution["transform"]) == [effect["transform"] for effect in effects]
    assert list(attribution["ate"]) == [effect["ate"] for effect in effects]
    assert list(attribution["violation_rate"]) == [effect["rate_applied"] for effect in effects]
    assert list(attribution["shapley"]) == [effect["shapley"] for effect in effects]


CURVES_CAPTION = (
    "Each line: the share of the pool's misclassified samples found while inspecting the "
    "pool in that prioritizer's order (random: the mean over seeds). Dashed: what a random "
    "order finds on average (the diagonal) and the ideal order (every fault first)."
)
BUDGET_POINTS_CAPTION = (
    "Dashed: what a random order finds on average. This evaluation.json was written before "
    "evaluations kept each prioritizer's curve: it holds the faults found at each budget "
    "only, so this chart joins the evaluated budgets by straight lines; it is not the full "
    "fault-detection curve (evaluate again to get the curves). APFD (right) does cover each "
    "whole order."
)


def test_nine_prioritizers_get_a_retraining_panel_each_with_random_in_every_one(
    monkeypatch, own_eval_root
):
    path = own_eval_root / "evaluation" / "evaluation.json"
    evaluation = json.loads(path.read_text())
    for copy in range(5):  # nine prioritizers in all, random among them
        evaluation["prioritizers"][f"gini-{copy}"] = evaluation["prioritizers"]["gini"]
    path.write_text(json.dumps(evaluation))
    app = open_app(monkeypatch, str(own_eval_root), page="evaluation", run="evaluation")
    assert not app.error
    charts = vega_charts(app)
    assert "Accuracy gain after retraining" not in charts
    rows = charts["Accuracy gain after retraining, one panel per prioritizer"]
    names = [name for name in evaluation["prioritizers"] if name != "random"]
    assert {row["panel"] for row in rows} == set(names)
    for name in names:  # its own line, and random's to compare with
        panel = [row for row in rows if row["panel"] == name]
        assert {row["prioritizer"] for row in panel} == {name, "random"}
        assert {row["line"] for row in panel} == {"this prioritizer", "random (in every panel)"}
    significant = {
        (name, row["budget"]): row["vs_random"]["significant"]
        for name, entry in evaluation["prioritizers"].items()
        if name != "random"
        for row in entry["retrain"]
    }
    for row in rows:
        if row["line"] == "this prioritizer":
            beats = row["verdict"] == "beats random (Holm p < 0.05)"
            assert beats == significant[(row["prioritizer"], row["budget"])]
    assert vega_lite_problems(app) == []
    # Every legend names random: the prioritizer's line and the dashed reference apart.
    spec = next(
        json.loads(c.proto.spec)
        for c in app.get("vega_lite_chart")
        if "Fault-detection curves" in c.proto.spec
    )
    assert "random order, expected" in json.dumps(spec)


def test_an_evaluation_written_before_curves_shows_the_budget_points(monkeypatch, own_eval_root):
    path = own_eval_root / "evaluation" / "evaluation.json"
    evaluation = json.loads(path.read_text())
    for entry in evaluation["prioritizers"].values():
        del entry["curve"]
    path.write_text(json.dumps(evaluation))
    app = open_app(monkeypatch, str(own_eval_root), page="evaluation", run="evaluation")
    assert not app.error
    charts = vega_charts(app)
    assert "Fault-detection curves" not in charts
    faults = charts["Faults found at each budget"]
    assert {
        (row["prioritizer"], row["budget"], row["found"]) for row in faults if "prioritizer" in row
    } == {
        (name, entry["budget"], entry["found"])
        for name, prioritizer in evaluation["prioritizers"].items()
        for entry in prioritizer["faults"]
    }
    captions = [shown(caption.value) for caption in app.caption]
    assert BUDGET_POINTS_CAPTION in captions and CURVES_CAPTION not in captions
    assert list(app.dataframe[1].value.columns) == ["prioritizer", "1%", "5%", "10%"]


def test_an_evaluation_of_a_pool_without_faults_says_there_is_no_curve(monkeypatch, own_eval_root):
    path = own_eval_root / "evaluation" / "evaluation.json"
    evaluation = json.loads(path.read_text())
    for entry in evaluation["prioritizers"].values():
        entry.update(curve=None, apfd=None)
    path.write_text(json.dumps(evaluation))
    app = open_app(monkeypatch, str(own_eval_root), page="evaluation", run="evaluation")
    assert not app.error
    assert not {"Fault-detection curves", "Faults found at each budget"} & set(vega_charts(app))
    written = [markdown.value for markdown in app.markdown]
    assert "The pool has no misclassified sample: there is no fault-detection curve." in written
    assert "The pool has no misclassified sample: APFD is undefined." in written


@pytest.mark.parametrize(
    ("content", "sentence"),
    [
        (
            '{"version": 1, "prioritizers": {',
            "evaluation.json of run evaluation is not JSON; it was cut short or changed after "
            "`testprio evaluate` wrote it: evaluate again under a new --run-id.",
        ),
        (
            lambda e: {key: value for key, value in e.items() if key != "winners"},
            "evaluation.json of run evaluation is not an evaluation testprio wrote (it has no "
            "'winners'); it was changed after `testprio evaluate` wrote it: evaluate again "
            "under a new --run-id.",
        ),
        (
            lambda e: e["prioritizers"]["gini"]["retrain"][0].update(accuracy_mean="high"),
            "evaluation.json of run evaluation is not an evaluation testprio wrote (a field "
            "holds a value of the wrong kind); it was changed after `testprio evaluate` wrote "
            "it: evaluate again under a new --run-id.",
        ),
    ],
    ids=["not-json", "missing-key", "wrong-type"],
)
def test_a_malformed_evaluation_json_gives_one_sentence(
    monkeypatch, own_eval_root, content, sentence
):
    path = own_eval_root / "evaluation" / "evaluation.json"
    if callable(content):
        evaluation = json.loads(path.read_text())
        changed = content(evaluation)
        path.write_text(json.dumps(changed if changed is not None else evaluation))
    else:
        path.write_text(content)
    app = open_app(monkeypatch, str(own_eval_root), page="evaluation", run="evaluation")
    assert [shown(error.value) for error in app.error] == [sentence]
    assert not app.header and not app.get("vega_lite_chart")
    app = open_app(monkeypatch, str(own_eval_root))  # the runs list still shows the run
    assert "evaluation" in set(app.dataframe[0].value["run_id"])


def test_evaluation_text_from_the_file_stays_text(monkeypatch, own_eval_root):
    path = own_eval_root / "evaluation" / "evaluation.json"
    evaluation = json.loads(path.read_text())
    evaluation["retraining"]["description"] = "[x](http://evil.example) **bold** <b>b</b>"
    evaluation["test_split"] = "www.evil.example"
    path.write_text(json.dumps(evaluation))
    app = open_app(monkeypatch, str(own_eval_root), page="evaluation", run="evaluation")
    rendered = markdown_texts(app)
    assert any("evil" in text for text in rendered)
    renderer = MarkdownIt("commonmark")
    for text in rendered:
        html = renderer.renderInline(text)
        assert "<a" not in html and "<strong" not in html and "<b>" not in html, text
        assert not re.search(GFM_AUTOLINK, html), text


def test_evaluation_page_of_a_root_without_evaluations(monkeypatch, local_runs):
    app = open_app(monkeypatch, local_runs, page="evaluation")
    assert [info.value for info in app.info][0].startswith("No evaluation runs under ")
    assert not app.error


def test_a_ranking_run_in_the_url_opens_the_newest_evaluation(monkeypatch, eval_runs):
    app = open_app(monkeypatch, eval_runs, page="evaluation", run="labeled")
    assert app.title[0].value == "Evaluation evaluation" and not app.error


def test_run_page_of_an_evaluation_run_points_to_the_evaluation(monkeypatch, eval_runs):
    app = open_app(monkeypatch, eval_runs, page="run", run="evaluation")
    assert [header.value for header in app.header] == ["Model", "Data", "Stages"]
    assert app.info[0].value.startswith("This is an evaluation run")
    app.button[0].click().run()
    assert app.title[0].value == "Evaluation evaluation"


def test_compare_leaves_evaluation_runs_out(monkeypatch, eval_runs):
    app = open_app(monkeypatch, eval_runs, page="compare")
    assert app.info[0].value == "Comparing needs two finished runs on the same data."


def test_run_page_shows_the_apfd_of_every_prioritizer(monkeypatch, local_runs):
    summary = reportdata.load_run(reportdata.resolve_run(local_runs, "labeled")).summary
    app = open_app(monkeypatch, local_runs, page="run", run="labeled", section="Accuracy and APFD")
    subheaders = [subheader.value for subheader in app.subheader]
    assert "APFD of every prioritizer (pool labels)" in subheaders
    (table,) = [d.value for d in app.dataframe if "order" in d.value.columns]
    assert list(table["prioritizer"]) == list(summary["prioritizers"])
    assert list(table["apfd"]) == [e["apfd"]["raw"] for e in summary["prioritizers"].values()]
    assert list(table[table["ranking"] == "✓"]["prioritizer"]) == [summary["prioritizer"]]
