"""The report stage: report.html (self-contained, escaped), Markdown, metrics, confusion
matrix, report.json and export.zip, and run.json rewritten last."""

from __future__ import annotations

import base64
import csv
import html as html_lib
import io
import json
import os
import re
import zipfile
from html.parser import HTMLParser

import numpy as np
import pyarrow.csv as pacsv
import pytest

from testprio import report, stages, storage
from testprio.errors import TestprioError
from testprio.layout import RunLayout
from testprio.report import data as reportdata
from tests.conftest import linear_classifier, write_pool
from tests.reportkit import XSS_CLASS, XSS_FILE, digits, make_runs
from tests.stagekit import parameters


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, RunLayout]:
    folder = tmp_path_factory.mktemp("report")
    return make_runs(str(folder / "runs"), folder / "inputs")


def html_of(layout: RunLayout) -> str:
    return storage.read_bytes(layout.report_html).decode()


class _References(HTMLParser):
    """Every tag, and every attribute value that could load something."""

    LOADING = {"src", "href", "srcset", "action", "formaction", "poster", "data", "xlink:href"}

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.references: list[tuple[str, str, str]] = []
        self.styles: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self._in_style = tag == "style"
        for name, value in attrs:
            if name in self.LOADING:
                self.references.append((tag, name, value or ""))
            if name == "style":
                self.styles.append(value or "")
            assert not name.startswith("on"), f"event handler attribute {name} on <{tag}>"

    def handle_endtag(self, tag):
        self._in_style = False

    def handle_data(self, data):
        if self._in_style:
            self.styles.append(data)


def test_report_html_references_nothing_external(runs):
    html = html_of(runs["labeled"])
    parsed = _References()
    parsed.feed(html)
    assert not {"script", "link", "iframe", "object", "embed", "base", "meta http-equiv"} & set(
        parsed.tags
    )
    downloads = ("data:text/csv;base64,", "data:application/json;base64,", "data:application/xml")
    for tag, name, value in parsed.references:
        if tag == "a" and name == "href" and value.startswith(downloads):
            continue  # the labelling files, as download links inside the page
        assert value.startswith(("data:image/png;base64,", "#")), (tag, name, value[:80])
    for style in parsed.styles:
        assert "url(" not in style and "@import" not in style
    # The only URLs in the page are XML namespace names of the inline SVG charts.
    urls = set(re.findall(r"https?://[^\s\"'<>]+", html))
    assert urls <= {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}, urls
    assert parsed.tags.count("svg") >= 6  # timeline, 3 score charts, fault curve, accuracy, ...
    ids = set(re.findall(r'<section id="([a-z]+)"', html))
    assert ids == {"figures", "model", "data", "stages", "scores", "ranking", "labels", "export"}


# Defence in depth for a page that holds run data: even if some text escaped the escaping,
# the browser would run no script and fetch nothing (style and data: images only).
REPORT_CSP = {
    "default-src": ["'none'"],
    "script-src": ["'none'"],
    "style-src": ["'unsafe-inline'"],
    "img-src": ["data:"],
    "base-uri": ["'none'"],
    "form-action": ["'none'"],
}


class _Metas(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.order: list[str] = []
        self.http_equiv: list[tuple[str, str]] = []
        self.policy_at: int | None = None

    def handle_starttag(self, tag, attrs):
        self.order.append(tag)
        values = dict(attrs)
        if tag == "meta" and "http-equiv" in values:
            self.http_equiv.append((values["http-equiv"].lower(), values.get("content") or ""))
            self.policy_at = len(self.order) - 1


def test_report_html_carries_a_content_security_policy(runs):
    parsed = _Metas()
    parsed.feed(html_of(runs["labeled"]))
    ((name, content),) = parsed.http_equiv  # the policy, and no refresh or other header
    assert name == "content-security-policy"
    policy = {
        directive.split()[0]: directive.split()[1:]
        for directive in content.split(";")
        if directive.strip()
    }
    assert policy == REPORT_CSP
    # Before anything it governs: a policy met after a resource does not cover that resource.
    assert parsed.policy_at < parsed.order.index("style") < parsed.order.index("img")


def test_report_html_shows_the_runs_figures_and_samples(runs):
    layout = runs["labeled"]
    html = html_of(layout)
    summary = storage.read_json(layout.summary)
    assert f"{summary['labels']['accuracy']:.4f}" in html
    assert f"{summary['labels']['apfd']['raw']:.4f}" in html
    first = storage.read_table(layout.ranking).slice(0, 1).to_pylist()[0]
    assert f"digits.npz[{first['sample_id']}]" in html
    # 16 random samples plus the top 5 and bottom 5 rows, each an inline PNG.
    assert html.count('src="data:image/png;base64,') == 16 + 5 + 5
    assert "non-finite values (NaN or Inf)" in html


def test_an_xss_class_name_and_file_name_appear_escaped(runs):
    layout = runs["hostile"]
    html = html_of(layout)
    assert XSS_CLASS not in html and "<script" not in html
    assert "&lt;script&gt;alert(" in html  # in the class tables and in the SVG charts' text
    assert XSS_FILE not in html and "<img src=x" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    markdown = storage.read_bytes(layout.report_markdown).decode()
    assert not re.search(r"(?<!\\)[<>]", markdown)  # every angle bracket is escaped
    # Escaped, yet shown literally: dropping the escaping backslashes gives the names back.
    shown = re.sub(r"\\(.)", r"\1", markdown)
    assert XSS_CLASS in shown and f"{XSS_FILE}[" in shown
    assert "\\<script\\>alert\\(" in markdown and "\\<img src" in markdown


def test_markdown_has_the_key_figures_and_the_top_ten(runs):
    layout = runs["hostile"]
    markdown = storage.read_bytes(layout.report_markdown).decode()
    lines = markdown.splitlines()
    assert lines[0] == "# testprio report: hostile"
    assert "| accuracy |" in markdown and "| APFD |" in markdown
    header = lines.index("| rank | sample_id | predicted | confidence | gini | label | source |")
    rows = [line for line in lines[header + 2 :] if line.startswith("| ")]
    assert len(rows) == 10
    first = storage.read_table(layout.ranking).slice(0, 1).to_pylist()[0]
    assert rows[0].startswith(f"| 1 | {first['sample_id']} | ")


def test_metrics_and_confusion_matrix_for_kfp(tmp_path):
    from sklearn.metrics import confusion_matrix

    x, y = digits(60)
    model = linear_classifier(tmp_path / "m.onnx", seed=1)
    pool = write_pool(tmp_path / "p.npz", x, y)
    p = parameters(model, pool, str(tmp_path / "runs"), "kfp", shard_size=25)
    run_uri = stages.start_run(p["root"], p["run_id"], p)
    shards = stages.ingest_pool(run_uri, p["data"], shard_size=p["shard_size"])
    stages.convert_model(run_uri, p["model"], "auto", "auto", "")
    scores = [stages.score_shard(shard, 64) for shard in shards]
    stages.rank_scores(run_uri, scores, "gini", 10)
    result = stages.report_run(run_uri, 10)

    layout = RunLayout(run_uri)
    summary = storage.read_json(layout.summary)
    ranking = storage.read_table(layout.ranking)
    gini = ranking.column("gini").to_numpy()
    assert result.metrics == {
        "samples": 60,
        "ranked": 60,
        "quarantined": 0,
        "mean_score": summary["histograms"]["gini"]["mean"],
        "share_above_0_5": pytest.approx(float((gini > 0.5).mean()), abs=1e-6),
        "accuracy": summary["labels"]["accuracy"],
        "misclassified": summary["labels"]["misclassified"],
        "apfd": pytest.approx(summary["labels"]["apfd"]["raw"], abs=1e-6),
        "apfd_normalized": pytest.approx(summary["labels"]["apfd"]["normalized"], abs=1e-6),
    }
    assert result.confusion["categories"] == [str(i) for i in range(10)]
    expected = confusion_matrix(
        ranking.column("label").to_numpy(), ranking.column("predicted").to_numpy(), labels=range(10)
    )
    assert result.confusion["matrix"] == expected.tolist()
    assert result.html == html_of(layout) and result.uri == layout.report_html
    assert json.loads(storage.read_bytes(layout.report_json))["metrics"] == result.metrics


def test_unlabeled_runs_have_no_confusion_matrix_or_label_figures(runs):
    figures = storage.read_json(runs["rgb"].report_json)
    assert figures["labels"] is None
    assert set(figures["metrics"]) == {
        "samples",
        "ranked",
        "quarantined",
        "mean_score",
        "share_above_0_5",
    }
    assert report.confusion_output(figures, None) is None
    html = html_of(runs["rgb"])
    assert 'id="labels"' not in html


def test_export_zip_holds_ranking_scores_report_and_records(runs):
    layout = runs["labeled"]
    archive = zipfile.ZipFile(io.BytesIO(storage.read_bytes(layout.export_zip)))
    top = storage.read_table(layout.ranking).slice(0, 5).to_pylist()
    images = [f"labelling/images/rank-{r['rank']:07d}_sample-{r['sample_id']}.png" for r in top]
    assert sorted(archive.namelist()) == sorted(
        [
            "README.txt",
            "labelling/README.txt",
            "labelling/label_studio_config.xml",
            "labelling/label_studio_tasks.json",
            "labelling/labels.csv",
            *images,
            "model.json",
            "ranking.csv",
            "ranking.parquet",
            "report.html",
            "run.json",
            "scores/shard-00000.parquet",
            "scores/shard-00001.parquet",
            "scores/shard-00002.parquet",
            "summary.json",
        ]
    )
    ranking = storage.read_table(layout.ranking)
    csv = pacsv.read_csv(archive.open("ranking.csv"))
    assert csv.column("sample_id").to_pylist() == ranking.column("sample_id").to_pylist()
    assert archive.read("ranking.parquet") == storage.read_bytes(layout.ranking)
    assert archive.read("report.html").decode() == html_of(layout)
    record = json.loads(archive.read("run.json"))
    assert record["status"] == "succeeded"
    assert [s["stage"] for s in record["stages"]][-1] == "rank"  # the run as the report saw it
    scores = storage.read_bytes(storage.join(layout.scores_dir, "shard-00001.parquet"))
    assert archive.read("scores/shard-00001.parquet") == scores


def test_run_json_is_rewritten_last_by_the_report_stage(runs):
    layout = runs["labeled"]
    record = storage.read_json(layout.run_json)
    assert record["status"] == "succeeded"
    assert record["stages"][-1]["stage"] == "report"
    newest = max(
        os.path.getmtime(os.path.join(folder, name))
        for folder, _, names in os.walk(layout.uri)
        for name in names
        if name != "run.json"
    )
    assert os.path.getmtime(layout.run_json) >= newest


def test_report_of_an_unranked_run_fails_the_run(tmp_path):
    x, y = digits(20)
    model = linear_classifier(tmp_path / "m.onnx")
    pool = write_pool(tmp_path / "p.npz", x, y)
    p = parameters(model, pool, str(tmp_path / "runs"), "unranked")
    run_uri = stages.start_run(p["root"], p["run_id"], p)
    stages.ingest_pool(run_uri, p["data"], shard_size=p["shard_size"])
    with pytest.raises(TestprioError, match="has no summary.json, so there is nothing to report"):
        stages.report_run(run_uri, 10)
    record = storage.read_json(RunLayout(run_uri).run_json)
    assert (record["status"], record["failed_stage"]) == ("failed", "report")
    with pytest.raises(TestprioError, match="--top-k -1 must be zero or a positive number"):
        report.build_report(RunLayout(run_uri), top_k=-1)


def test_thumbnails_of_large_images_are_shrunk():
    image = np.zeros((300, 200, 3), np.uint8)
    assert report.thumbnail(image).shape == (100, 67, 3)
    assert report.thumbnail(np.zeros((8, 8), np.uint8)).shape == (8, 8)


def test_report_on_a_gcs_root(gcs_emulator, tmp_path):
    import uuid

    from tests.conftest import BUCKET

    root = f"gs://{BUCKET}/report-stage-{uuid.uuid4().hex[:8]}"
    x, y = digits(30)
    from tests.stagekit import run_stages

    layout = run_stages(
        linear_classifier(tmp_path / "m.onnx"), write_pool(tmp_path / "p.npz", x, y), root
    )
    assert storage.list_names(layout.report_dir) == [
        "export.zip",
        "report.html",
        "report.json",
        "report.md",
    ]
    assert storage.read_json(layout.run_json)["stages"][-1]["stage"] == "report"
    assert reportdata.load_run(layout).report["metrics"]["samples"] == 30


def _download_links(html: str) -> dict[str, bytes]:
    links = re.findall(r'<a download="([^"]+)" href="data:[a-z/]+;base64,([^"]+)"', html)
    return {name: base64.b64decode(data) for name, data in links}


def test_report_offers_the_top_k_labelling_export(runs):
    """report.html carries labels.csv and the Label Studio files (links and text); export.zip
    holds the same files under labelling/ with the images."""
    layout = runs["labeled"]
    html = html_of(layout)
    archive = zipfile.ZipFile(io.BytesIO(storage.read_bytes(layout.export_zip)))
    links = _download_links(html)
    assert sorted(links) == ["label_studio_config.xml", "label_studio_tasks.json", "labels.csv"]
    for name, data in links.items():
        assert archive.read(f"labelling/{name}") == data
        # The same text is in the page to copy, where a sandboxed iframe blocks downloads.
        (text,) = re.findall(
            rf'<textarea[^>]*aria-label="{re.escape(name)}">(.*?)</textarea>', html, re.S
        )
        assert html_lib.unescape(text) == data.decode()
    rows = list(csv.DictReader(io.StringIO(links["labels.csv"].decode())))
    top = storage.read_table(layout.ranking).slice(0, 5).to_pylist()
    assert [int(row["sample_id"]) for row in rows] == [row["sample_id"] for row in top]
    tasks = json.loads(links["label_studio_tasks.json"])
    assert [task["data"]["image"] for task in tasks] == [row["image"] for row in rows]
    for row in rows:  # an array pool: rendered PNGs, and README.txt says so
        assert archive.read(f"labelling/{row['image']}").startswith(b"\x89PNG")
    assert "array pool (npz) without image files" in archive.read("labelling/README.txt").decode()
    assert 'id="labelling"' in html and "Label the top 5" in html


def test_report_of_an_image_folder_exports_the_original_files(tmp_path):
    from tests.test_labels import OPS, make_digit_folder

    folder = make_digit_folder(tmp_path / "pool", count=30)
    model = linear_classifier(tmp_path / "m.onnx", seed=1)
    from tests.stagekit import run_stages

    layout = run_stages(model, folder, str(tmp_path / "runs"), "img", ops=OPS, top_k=3)
    archive = zipfile.ZipFile(io.BytesIO(storage.read_bytes(layout.export_zip)))
    rows = list(csv.DictReader(io.StringIO(archive.read("labelling/labels.csv").decode())))
    assert len(rows) == 3
    for row in rows:
        assert archive.read(f"labelling/{row['image']}") == (folder / row["source"]).read_bytes()
    assert "the original files, copied from" in html_of(layout)


def test_a_report_with_top_k_zero_has_no_labelling_export(tmp_path):
    x, y = digits(20)
    from tests.stagekit import run_stages

    layout = run_stages(
        linear_classifier(tmp_path / "m.onnx"),
        write_pool(tmp_path / "p.npz", x, y),
        str(tmp_path / "runs"),
        "zero",
        top_k=0,
    )
    archive = zipfile.ZipFile(io.BytesIO(storage.read_bytes(layout.export_zip)))
    assert not [name for name in archive.namelist() if name.startswith("labelling/")]
    assert 'id="labelling"' not in html_of(layout) and not _download_links(html_of(layout))


@pytest.mark.parametrize(
    ("summary", "expected"),
    [
        ({"metric": "gini"}, ("gini", "higher = less sure")),
        (
            {"metric": "kmnc", "prioritizer": "kmnc-cam"},
            ("kmnc-cam", "most newly covered neuron cells first (coverage-additive)"),
        ),
        (
            {"metric": "nac", "prioritizer": "nac-ctm"},
            ("nac-ctm", "more covered neuron cells first"),
        ),
        (
            {"metric": "dsa", "prioritizer": "dsa"},
            ("dsa", "higher = more surprising against the reference"),
        ),
        ({"metric": "instability"}, ("instability", "higher = more follow-ups change class")),
    ],
)
def test_report_says_what_the_ranking_puts_first(summary, expected):
    assert report.ranked_by(summary) == expected
