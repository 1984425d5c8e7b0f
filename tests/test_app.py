"""The Streamlit report app, page by page, through ``streamlit.testing.v1.AppTest`` on fixture
runs under a local root and under an emulator gs:// root."""

from __future__ import annotations

import json
import re
import shutil
import uuid
from pathlib import Path

import pytest
from markdown_it import MarkdownIt
from streamlit.testing.v1 import AppTest

from testprio import reportdata, storage
from tests.reportkit import RUN_IDS, make_runs

APP = Path(__file__).resolve().parent.parent / "report_app" / "app.py"
RUN_SECTIONS = ["Model", "Data", "Stages", "Scores", "Most and least uncertain", "Ranking"]


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


def test_open_run_button_goes_to_the_run_page(monkeypatch, local_runs):
    app = open_app(monkeypatch, local_runs)
    app.selectbox(key="runs-open").select("rgb").run()
    app.button[0].click().run()
    assert not app.exception
    assert app.title[0].value == "Run rgb"
    assert app.query_params["run"] == ["rgb"] or app.query_params["run"] == "rgb"


def test_run_page_has_every_section_chart_and_gallery(monkeypatch, runs_root):
    app = open_app(monkeypatch, runs_root, page="run", run="labeled")
    assert app.title[0].value == "Run labeled"
    assert [header.value for header in app.header] == [*RUN_SECTIONS, "Labels"]
    charts = app.get("vega_lite_chart")
    # timeline, histogram, class means, heatmap, fault curve, per-class accuracy
    assert len(charts) == 6
    assert any('"zoom' in chart.proto.spec or "interval" in chart.proto.spec for chart in charts)
    assert len(app.image) == 16 + 10 + 10  # random samples, top and bottom galleries
    metrics = {metric.label: metric.value for metric in app.metric}
    summary = reportdata.load_run(reportdata.resolve_run(runs_root, "labeled")).summary
    assert metrics["accuracy"] == f"{summary['labels']['accuracy']:.4f}"
    assert metrics["quarantined"] == "2"
    ranking = app.dataframe[-1].value
    assert list(ranking["rank"]) == list(range(1, 51))
    assert ranking["source"].iloc[0].startswith("digits.npz[")


def test_ranking_filters_and_pages(monkeypatch, local_runs):
    app = open_app(monkeypatch, local_runs, page="run", run="labeled")
    details = reportdata.load_run(reportdata.resolve_run(local_runs, "labeled"))
    ranking = storage.read_table(details.layout.ranking).to_pylist()
    app.multiselect(key="rank-classes").select("9").run()
    expected = [row["sample_id"] for row in ranking if row["predicted"] == 9]
    assert list(app.dataframe[-1].value["sample_id"]) == expected[:50]
    assert any(f"{len(expected):,} matching samples" in caption.value for caption in app.caption)
    app.multiselect(key="rank-classes").unselect("9").run()
    app.selectbox(key="rank-size").select(25).run()
    app.number_input(key="rank-page").set_value(3).run()
    assert list(app.dataframe[-1].value["rank"]) == list(range(51, 76))


def test_rgb_run_page_without_labels(monkeypatch, local_runs):
    app = open_app(monkeypatch, local_runs, page="run", run="rgb")
    assert [header.value for header in app.header] == RUN_SECTIONS
    assert app.image[0].proto.imgs  # RGB samples are shown


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
    assert metrics["same data"] == "yes"
    assert len(app.dataframe[-1].value) == 25  # samples that moved most
    assert len(app.get("vega_lite_chart")) == 2


def test_downloads_page_offers_every_download(monkeypatch, runs_root):
    app = open_app(monkeypatch, runs_root, page="downloads", run="labeled")
    labels = [button.label for button in app.download_button]
    assert labels[:2] == ["Ranking as CSV", "Ranking as Parquet"]
    assert labels[2].startswith("Top 100 as CSV") and labels[3].startswith("Top 100 images")
    assert labels[4].startswith("export.zip")


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
    (own_root / "labeled" / "summary.json").write_text('{"metric": "gini"}')  # no counts
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
