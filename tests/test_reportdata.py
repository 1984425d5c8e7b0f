"""Data shaping for the report app (testprio.report.data) on small real runs."""

from __future__ import annotations

import io
import json
import os
import re
import zipfile

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from testprio import storage
from testprio.errors import TestprioError
from testprio.layout import RunLayout
from testprio.metrics import softmax
from testprio.report import data as reportdata
from tests.conftest import make_deterministic, reference_logits
from tests.reportkit import RUN_IDS, digits, make_runs
from tests.stagekit import run_stages


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, RunLayout]:
    folder = tmp_path_factory.mktemp("reportdata")
    return make_runs(str(folder / "runs"), folder / "inputs")


@pytest.fixture(scope="module")
def root(runs) -> str:
    return runs["labeled"].uri.rsplit("/", 1)[0]


def details(root: str, run_id: str) -> reportdata.RunDetails:
    return reportdata.load_run(reportdata.resolve_run(root, run_id))


def _ranking(layout: RunLayout) -> pa.Table:
    return storage.read_table(layout.ranking)


# --- paths under the root --------------------------------------------------------------


@pytest.mark.parametrize(
    "run_id", ["..", "../labeled", "/etc", "/etc/passwd", "a/b", "gs://other/run", "", "a\\b"]
)
def test_run_ids_from_urls_cannot_leave_the_root(root, run_id):
    with pytest.raises(TestprioError, match="is not a run id; pick a run from the list"):
        reportdata.resolve_run(root, run_id)


@pytest.mark.parametrize("relative", ["..", "a/../..", "/abs", "x//y", "./x", "gs://b/x", "c:x"])
def test_relative_paths_with_dots_or_roots_are_refused(root, relative):
    with pytest.raises(TestprioError, match="is not a path under the report's root"):
        reportdata.resolve_under_root(root, relative)


def test_a_symbolic_link_out_of_the_root_is_refused(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "secret").mkdir()
    os.symlink(tmp_path / "secret", root / "escape")
    with pytest.raises(TestprioError, match="'escape' leads outside the report's root"):
        reportdata.resolve_run(str(root), "escape")
    assert reportdata.resolve_run(str(root), "inside").uri == str(root / "inside")


# --- the runs under a root ---------------------------------------------------------------


def test_list_runs_finds_every_run_with_its_facts(root):
    rows = {row["run_id"]: row for row in reportdata.list_runs(root)}
    assert set(rows) == set(RUN_IDS)
    labeled = rows["labeled"]
    assert (labeled["model"], labeled["dataset"], labeled["metric"]) == (
        "digits.onnx",
        "digits.npz",
        "gini",
    )
    assert labeled["status"] == "succeeded"
    assert labeled["started"].endswith("UTC") and labeled["duration"].endswith(" s")
    failed = rows["failed"]
    assert (failed["status"], failed["failed_stage"]) == ("failed", "convert")
    assert (
        "expects shape (N, 1, 8, 8) but the data samples have shape (N, 3, 8, 8)"
        in (failed["error"])
    )


def test_list_runs_skips_folders_without_a_run(tmp_path):
    (tmp_path / "empty" / "not-a-run").mkdir(parents=True)
    assert reportdata.list_runs(str(tmp_path / "empty")) == []
    assert reportdata.list_runs(str(tmp_path / "missing")) == []


# run.json and summary.json may hold anything: each bad folder is one row, never a failure.
MALFORMED_RECORDS = {
    "not-json": b"{not json",
    "not-utf8": b"\xff\xfe",
    "deep": b"[" * 100_000,
    "list": b"[1, 2]",
    "text": b'"a run"',
    "parameters-list": b'{"status": "failed", "parameters": [1]}',
    "stages-text": b'{"status": "failed", "parameters": {}, "stages": "x"}',
    "resumed-number": b'{"status": "failed", "parameters": {}, "resumed": 5}',
    "status-object": b'{"status": {"a": 1}, "parameters": {}}',
}
ODD_RECORDS = {  # readable records with odd fields: listed with what can be shown
    "empty": {},
    "times-numbers": {"status": "failed", "started": 5, "ended": [1], "parameters": {}},
    "naive-time": {
        "status": "failed",
        "started": "2024-01-01T00:00:00",
        "ended": "2024-01-01T00:01:00+00:00",
        "parameters": {},
    },
    "error-object": {"status": "failed", "error": {"x": 1}, "failed_stage": 3},
    "summary-odd": {"status": "succeeded", "ended": "x", "parameters": {"model": 5}},
}
MALFORMED_SUMMARIES = [
    b"[" * 100_000,
    b'{"labels": [1], "counts": [2]}',
    b'{"labels": {"accuracy": "high", "apfd": {"raw": "x"}}, "counts": {"ranked": "many"}}',
    b'{"labels": {"accuracy": Infinity, "apfd": [1]}, "counts": {"ranked": 1e400}}',
    b'{"labels": {"accuracy": NaN}, "counts": {"ranked": true}}',
]


def test_list_runs_lists_a_malformed_run_folder_as_unreadable(tmp_path):
    root = tmp_path / "runs"
    for name, data in MALFORMED_RECORDS.items():
        (root / name).mkdir(parents=True)
        (root / name / "run.json").write_bytes(data)
    for name, record in ODD_RECORDS.items():
        (root / name).mkdir(parents=True)
        (root / name / "run.json").write_text(json.dumps(record))
    for index, data in enumerate(MALFORMED_SUMMARIES):
        (root / f"summary-{index}").mkdir()
        (root / f"summary-{index}" / "run.json").write_text(
            json.dumps({"status": "succeeded", "parameters": {}})
        )
        (root / f"summary-{index}" / "summary.json").write_bytes(data)
    rows = {row["run_id"]: row for row in reportdata.list_runs(str(root))}
    assert set(rows) == {*MALFORMED_RECORDS, *ODD_RECORDS} | {
        f"summary-{index}" for index in range(len(MALFORMED_SUMMARIES))
    }
    for name in MALFORMED_RECORDS:
        assert rows[name]["status"] == "unreadable", name
        assert re.fullmatch(
            rf"{name}/run.json is not a run record testprio wrote \(.+\); move the run "
            "folder out of the root or delete it.",
            rows[name]["error"],
        ), rows[name]["error"]
    for name in ODD_RECORDS:
        assert all(isinstance(rows[name][column], str) for column in reportdata.RUN_COLUMNS)
        assert isinstance(rows[name]["error"], str)
    assert rows["naive-time"]["duration"] == ""
    for index in range(len(MALFORMED_SUMMARIES)):
        row = rows[f"summary-{index}"]
        assert row["status"] == "succeeded"
        assert (row["samples"], row["accuracy"], row["apfd"]) == (None, None, None)
    assert reportdata.filter_runs(list(rows.values()), "unreadable")


# (The first, JSON too deep to parse, reads as no summary at all: the page shows no ranking.)
@pytest.mark.parametrize("data", MALFORMED_SUMMARIES[1:])
def test_load_run_refuses_a_malformed_summary_in_one_sentence(tmp_path, data):
    run = tmp_path / "runs" / "odd"
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"status": "succeeded", "parameters": {}}))
    (run / "summary.json").write_bytes(data)
    layout = reportdata.resolve_run(str(tmp_path / "runs"), "odd")
    with pytest.raises(TestprioError, match=r"summary.json is not a summary the report can sh"):
        reportdata.load_run(layout)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", set(RUN_IDS)),
        ("ENTROPY", {"entropy"}),
        ("rgb.npy", {"rgb"}),
        ("failed", {"failed"}),
        ("expects shape", {"failed"}),
        ("digits.onnx", {"labeled", "entropy", "hostile", "failed"}),
        ("no such thing", set()),
    ],
)
def test_search_matches_any_shown_field(root, query, expected):
    rows = reportdata.list_runs(root)
    assert {row["run_id"] for row in reportdata.filter_runs(rows, query)} == expected


# --- one run -----------------------------------------------------------------------------


def test_dataset_summary_counts_balance_statistics_and_quarantine(root):
    x, y = digits()
    keep = np.ones(len(x), bool)
    keep[[7, 50]] = False
    summary = reportdata.dataset_summary(details(root, "labeled"))
    assert (summary["samples"], summary["ingested"], summary["quarantined"]) == (120, 118, 2)
    assert summary["shape"] == [1, 8, 8] and summary["shards"] == 3
    assert summary["tensor_bytes"] == 118 * 64 * 4
    assert summary["quarantine_reasons"] == [
        {"kind": "non_finite", "reason": "non-finite values (NaN or Inf)", "samples": 2}
    ]
    assert [row["labeled"] for row in summary["class_balance"]] == np.bincount(
        y[keep], minlength=10
    ).tolist()
    stats = summary["stats"]
    assert not summary["stats_estimated"]
    assert stats["mean"] == pytest.approx(float(x[keep].mean()), abs=1e-5)
    assert stats["std"] == pytest.approx(float(x[keep].std()), abs=1e-5)
    assert (stats["min"], stats["max"]) == (0.0, 1.0)


def test_dataset_statistics_without_the_report_are_estimated_from_the_first_samples(root):
    run = details(root, "labeled")
    run.report = None
    summary = reportdata.dataset_summary(run)
    assert summary["stats_estimated"] and summary["stats"]["rows"] == 118
    assert (
        summary["class_balance"]
        == reportdata.dataset_summary(details(root, "labeled"))["class_balance"]
    )
    partial = reportdata.dataset_stats(run.layout, run.manifest, max_rows=30)
    assert 30 <= partial["rows"] < 118


def test_model_summary_lists_facts_tensors_ops_and_any_checks(root):
    model = storage.read_json(details(root, "labeled").layout.model_json)
    model["parity"] = {"framework": "onnx", "max_abs_diff": 1.5e-7, "passed": True}
    model["checks"] = [{"name": "determinism", "passed": True}, {"name": "batch", "passed": False}]
    summary = reportdata.model_summary(model)
    facts = {row["fact"]: row["value"] for row in summary["facts"]}
    assert facts["Framework"] == "onnx" and facts["Opset"] == "ai.onnx 17"
    assert facts["Nodes"] == "3" and facts["Unique ops"] == "3" and facts["Parameters"] == "650"
    assert summary["inputs"] == [
        {"name": "input", "type": "tensor(float)", "shape": "(N, 1, 8, 8)"}
    ]
    assert {row["op"] for row in summary["ops"]} == {"Flatten", "MatMul", "Add"}
    assert {row["check"]: row["result"] for row in summary["checks"]} == {
        "parity: framework": "onnx",
        "parity: max_abs_diff": "1.5e-07",
        "parity: passed": "yes",
        "checks: determinism": "passed: yes",
        "checks: batch": "passed: no",
    }
    assert reportdata.model_summary(None) is None


def test_stage_timeline_has_every_stage_and_shard_in_start_order(root):
    rows = reportdata.stage_timeline(details(root, "labeled"))
    assert [row["stage"] for row in rows][:3] == ["start", "ingest", "convert"]
    assert sorted(row["stage"] for row in rows if row["group"] == "score") == [
        f"score-shard-0000{i}" for i in range(3)
    ]
    assert rows[-1]["stage"] == "report"
    assert rows[0]["start_s"] == 0.0
    assert all(row["end_s"] >= row["start_s"] for row in rows)
    assert [row["start_s"] for row in rows] == sorted(row["start_s"] for row in rows)


def test_summary_figures_as_chart_rows(root):
    run = details(root, "labeled")
    summary = run.summary
    histogram = reportdata.score_histogram(summary)
    assert sum(row["samples"] for row in histogram) == 118 and len(histogram) == 20
    heatmap = reportdata.class_score_heatmap(summary)
    assert len(heatmap) == 10 * 20 and sum(row["samples"] for row in heatmap) == 118
    means = reportdata.per_class_means(summary)
    assert sum(row["predicted"] for row in means) == 118
    accuracy = reportdata.per_class_accuracy(summary)
    assert all(0.0 <= row["accuracy"] <= 1.0 for row in accuracy)
    assert reportdata.per_class_accuracy(details(root, "rgb").summary) == []


# --- the ranking, a page at a time ---------------------------------------------------------


@pytest.fixture(scope="module")
def small_groups(tmp_path_factory) -> reportdata.RunDetails:
    """A ranked run whose ranking.parquet is rewritten in row groups of 7 rows."""
    folder = tmp_path_factory.mktemp("groups")
    from tests.conftest import linear_classifier, write_pool

    x = make_deterministic(5).normal(0, 1, (100, 1, 8, 8)).astype(np.float32)
    y = make_deterministic(6).integers(0, 10, 100)
    model = linear_classifier(folder / "m.onnx", seed=3)
    layout = run_stages(model, write_pool(folder / "p.npz", x, y), str(folder / "r"), "g")
    pq.write_table(_ranking(layout), layout.ranking, row_group_size=7)
    return reportdata.load_run(layout)


def _reference_page(table: pa.Table, filters: reportdata.RankingFilter, page, size, metric):
    rows = table.to_pylist()
    kept = [
        row
        for row in rows
        if (filters.classes is None or row["predicted"] in filters.classes)
        and (filters.score_min is None or row[metric] >= np.float32(filters.score_min))
        and (filters.score_max is None or row[metric] <= np.float32(filters.score_max))
        and (filters.labels is None or row["label"] in filters.labels)
        and (not filters.misclassified or row["label"] not in (None, row["predicted"]))
    ]
    return kept[page * size : (page + 1) * size], len(kept)


@pytest.mark.parametrize(
    "filters",
    [
        reportdata.RankingFilter(),
        reportdata.RankingFilter(classes=(3,)),
        reportdata.RankingFilter(classes=(0, 5, 9)),
        reportdata.RankingFilter(score_min=0.5),
        reportdata.RankingFilter(score_max=0.3),
        reportdata.RankingFilter(classes=(1, 2, 4), score_min=0.2, score_max=0.8),
        reportdata.RankingFilter(score_min=2.0),
        reportdata.RankingFilter(labels=(3,)),
        reportdata.RankingFilter(labels=(0, 7), classes=(0, 1, 7)),
        reportdata.RankingFilter(misclassified=True),
        reportdata.RankingFilter(misclassified=True, labels=(2,), score_min=0.4),
    ],
)
@pytest.mark.parametrize(("page", "size"), [(0, 10), (1, 10), (3, 9), (0, 1000)])
def test_ranking_pages_equal_slices_of_the_filtered_ranking(small_groups, filters, page, size):
    assert pq.ParquetFile(small_groups.layout.ranking).num_row_groups == 15
    metric = small_groups.metric
    columns = ["rank", "sample_id", "predicted", metric, "label"]
    expected, total = _reference_page(
        _ranking(small_groups.layout).select(columns), filters, page, size, metric
    )
    result = reportdata.ranking_page(
        small_groups, page=page, page_size=size, filters=filters, columns=columns
    )
    assert result.total == total
    assert result.pages == max(1, -(-total // size))
    if page < result.pages:
        assert result.page == page
        assert result.rows.to_pylist() == expected
    else:  # past the end: the last page
        assert result.page == result.pages - 1


def test_ranking_rows_read_any_span(small_groups):
    whole = _ranking(small_groups.layout).select(["rank", "sample_id"])
    for start, stop in [(0, 1), (6, 8), (13, 50), (95, 100), (99, 300), (120, 130)]:
        part = reportdata.ranking_rows(small_groups.layout, start, stop, ["rank", "sample_id"])
        assert part.to_pylist() == whole.slice(start, max(0, stop - start)).to_pylist()


def test_ranking_page_refuses_a_zero_page_size(small_groups):
    with pytest.raises(TestprioError, match="page size 0 must be a positive number of rows"):
        reportdata.ranking_page(small_groups, page_size=0)


# --- samples --------------------------------------------------------------------------------


@pytest.mark.parametrize("know_shard_size", [True, False])
def test_samples_are_found_by_id_across_quarantine_gaps(root, know_shard_size):
    run = details(root, "labeled")
    if not know_shard_size:  # older runs: the shards' id statistics decide
        run.record["parameters"].pop("shard_size")
    x, y = digits()
    found = reportdata.read_samples(run, range(120))
    assert sorted(found) == [i for i in range(120) if i not in (7, 50)]
    for sample_id in (0, 6, 8, 39, 40, 49, 51, 119):
        np.testing.assert_array_equal(found[sample_id]["x"], x[sample_id])
        assert found[sample_id]["label"] == y[sample_id]
        assert found[sample_id]["source"] == f"digits.npz[{sample_id}]"
    assert reportdata.read_samples(run, [7, 50, 500]) == {}


def test_probabilities_are_the_models_softmax(root, runs):
    run = details(root, "labeled")
    x, _ = digits()
    model = runs["labeled"].uri.rsplit("/", 2)[0] + "/inputs/digits.onnx"
    expected = softmax(reference_logits(x, model))
    found = reportdata.read_probabilities(run, [0, 41, 119])
    for sample_id, probs in found.items():
        np.testing.assert_allclose(probs, expected[sample_id], atol=1e-5)


def test_galleries_hold_the_first_and_last_ranks_with_images(root):
    run = details(root, "labeled")
    ranking = _ranking(run.layout)
    top = reportdata.gallery(run, "top", 4)
    bottom = reportdata.gallery(run, "bottom", 3)
    assert [item["rank"] for item in top] == [1, 2, 3, 4]
    assert [item["rank"] for item in bottom] == [116, 117, 118]
    assert [item["sample_id"] for item in top] == ranking.column("sample_id")[:4].to_pylist()
    for item in top + bottom:
        assert item["image"].dtype == np.uint8 and item["image"].shape == (96, 96)
        probabilities = [p["probability"] for p in item["top_probabilities"]]
        assert probabilities == sorted(probabilities, reverse=True) and len(probabilities) == 3
        assert item["top_probabilities"][0]["class"] == item["predicted"]
        assert item["source"] == f"digits.npz[{item['sample_id']}]"
    with pytest.raises(TestprioError, match="gallery 'middle' is not one of top, bottom"):
        reportdata.gallery(run, "middle", 3)


def test_rgb_samples_show_in_colour(root):
    run = details(root, "rgb")
    items = reportdata.gallery(run, "top", 2) + reportdata.random_samples(run, 5)
    assert all(item["image"].ndim == 3 and item["image"].shape[2] == 3 for item in items)
    drawn = [item["sample_id"] for item in reportdata.random_samples(run, 5)]
    assert len(set(drawn)) == 5 and drawn == sorted(drawn)
    assert drawn == [item["sample_id"] for item in reportdata.random_samples(run, 5)]  # seeded


@pytest.mark.parametrize(
    ("shape", "shown"),
    [
        ((1, 8, 8), (8, 8)),
        ((8, 8), (8, 8)),
        ((3, 6, 5), (6, 5, 3)),
        ((6, 5, 3), (6, 5, 3)),
        ((6, 5, 1), (6, 5)),
        ((5, 7, 7), (7, 7)),
        ((64,), (8, 8)),
        ((48,), (4, 4, 3)),
        ((10,), (1, 10)),
        ((1, 1, 4, 4), (4, 4)),
    ],
)
def test_display_image_understands_layouts_and_stretches_values(shape, shown):
    sample = make_deterministic(1).normal(0.5, 2.0, shape)
    image = reportdata.display_image(sample)
    assert image.shape == shown and image.dtype == np.uint8
    assert (image.min(), image.max()) == (0, 255)


def test_display_image_of_constant_or_broken_samples():
    assert (reportdata.display_image(np.full((4, 4), 0.5)) == 128).all()
    assert (reportdata.display_image(np.full((4, 4), 7.0)) == 128).all()
    assert (reportdata.display_image(np.full((4, 4), np.nan)) == 0).all()
    broken = np.arange(16, dtype=np.float64).reshape(4, 4)
    broken[0, 0] = np.inf
    assert reportdata.display_image(broken).max() == 255


@pytest.mark.parametrize("shape", [(5, 7), (6, 4, 3)])
def test_png_round_trips_through_pillow(shape):
    from PIL import Image

    image = make_deterministic(2).integers(0, 256, shape).astype(np.uint8)
    decoded = np.asarray(Image.open(io.BytesIO(reportdata.encode_png(image))))
    np.testing.assert_array_equal(decoded, image)
    with pytest.raises(TestprioError, match=r"cannot encode an image of shape \(2, 2, 4\)"):
        reportdata.encode_png(np.zeros((2, 2, 4), np.uint8))


def test_upscale_repeats_whole_pixels():
    image = np.arange(4, dtype=np.uint8).reshape(2, 2)
    big = reportdata.upscale(image, min_side=6)
    assert big.shape == (6, 6) and (big[:3, :3] == 0).all() and (big[3:, 3:] == 3).all()
    assert reportdata.upscale(np.zeros((500, 500), np.uint8)).shape == (500, 500)


# --- labels -----------------------------------------------------------------------------------


def _reference_found(misclassified: np.ndarray, inspected: float) -> float:
    n = len(misclassified)
    return misclassified[: round(inspected * n)].sum() / misclassified.sum()


def test_fault_curve_against_a_reference_and_planted_orders():
    wrong = make_deterministic(3).random(1000) < 0.1
    curve = reportdata.fault_curve(wrong, points=50)
    assert len(curve["inspected"]) == 50
    assert (curve["inspected"][0], curve["ranking"][0]) == (0.0, 0.0)
    assert (curve["inspected"][-1], curve["ranking"][-1]) == (1.0, 1.0)
    for x, found in zip(curve["inspected"], curve["ranking"], strict=True):
        assert found == pytest.approx(_reference_found(wrong, x), abs=1e-6)
    assert curve["random"] == curve["inspected"]
    first = reportdata.fault_curve(np.array([True] * 10 + [False] * 90))
    assert first["ranking"] == first["ideal"]
    last = reportdata.fault_curve(np.array([False] * 90 + [True] * 10))
    assert all(f <= r for f, r in zip(last["ranking"], last["random"], strict=True))
    assert reportdata.fault_curve(np.zeros(5, bool)) is None
    assert reportdata.fault_curve(np.zeros(0, bool)) is None
    rows = reportdata.fault_curve_rows(first)
    assert {row["order"] for row in rows} == {"ranking", "random", "ideal"}


def test_label_figures_match_sklearn(root):
    from sklearn.metrics import confusion_matrix

    run = details(root, "labeled")
    figures = reportdata.label_figures(run.layout, 10)
    ranking = _ranking(run.layout)
    expected = confusion_matrix(
        ranking.column("label").to_numpy(), ranking.column("predicted").to_numpy(), labels=range(10)
    )
    assert figures["confusion"] == expected.tolist()
    assert reportdata.run_fault_curve(run) == run.report["labels"]["fault_curve"]
    assert reportdata.label_figures(details(root, "rgb").layout, 4) is None


# --- two runs -----------------------------------------------------------------------------------


def test_a_run_compared_with_itself_agrees_fully(root):
    run = details(root, "labeled")
    result = reportdata.compare_runs(run, run, top_ks=(5, 50))
    assert result["spearman"] == 1.0 and result["same_data"] and result["warnings"] == []
    assert [row["overlap"] for row in result["overlaps"]] == [1.0, 1.0, 1.0]
    assert all(row["moved"] == 0 for row in result["moved"])


def test_compare_two_metrics_against_scipy_and_sets(root):
    from scipy.stats import spearmanr

    a, b = details(root, "labeled"), details(root, "entropy")
    result = reportdata.compare_runs(a, b, top_ks=(5, 20), moved=5)
    ids_a = _ranking(a.layout).column("sample_id").to_pylist()
    ids_b = _ranking(b.layout).column("sample_id").to_pylist()
    rank_b = {sample_id: i for i, sample_id in enumerate(ids_b)}
    expected = spearmanr(range(len(ids_a)), [rank_b[i] for i in ids_a]).statistic
    assert result["spearman"] == pytest.approx(expected, abs=1e-6)
    for row in result["overlaps"]:
        k = row["k"]
        assert row["shared"] == len(set(ids_a[:k]) & set(ids_b[:k]))
    moves = [abs(row["moved"]) for row in result["moved"]]
    assert moves == sorted(moves, reverse=True)
    assert moves[0] == max(abs(rank_b[s] - i) for i, s in enumerate(ids_a))
    assert result["metrics"] == ("gini", "entropy")


def test_compare_refuses_to_pair_samples_of_different_pools(root):
    with pytest.raises(
        TestprioError,
        match=r"^runs labeled and rgb ranked different pools \(.*digits\.npz, digits\.npz, "
        r"120 samples vs .*rgb\.npy, rgb\.npy, 30 samples; compared: the data URI, pool name "
        r"and sample count \(the data manifests carry no content hash\)\), so their samples "
        r"cannot be paired; compare two runs of the same pool\.$",
    ):
        reportdata.compare_runs(details(root, "labeled"), details(root, "rgb"))
    with pytest.raises(TestprioError, match="run failed has no ranking to compare"):
        reportdata.compare_runs(details(root, "failed"), details(root, "labeled"))


def test_pool_identity_uses_a_content_hash_when_both_manifests_have_one(root):
    a, b = details(root, "labeled"), details(root, "entropy")
    same = reportdata.pool_identity(a, b)
    assert same["same"] and "no content hash" in same["compared"]
    assert same["a"] == {"data": a.parameters["data"], "source": "digits.npz", "samples": 120}
    a.manifest = {**a.manifest, "content_sha256": "aa"}
    b.manifest = {**b.manifest, "content_sha256": "bb"}  # same URI and count, other content
    different = reportdata.pool_identity(a, b)
    assert not different["same"]
    assert different["compared"] == "the content hash and sample count of the data manifests"
    b.manifest["content_sha256"] = "aa"
    assert reportdata.pool_identity(a, b)["same"]


def test_run_figures_and_fault_curves_of_two_runs(root):
    a, b = details(root, "labeled"), details(root, "entropy")
    figures = reportdata.run_figures(a)
    labels = a.summary["labels"]
    assert figures["accuracy"] == labels["accuracy"]
    assert figures["apfd"] == labels["apfd"]["raw"]
    assert figures["apfd_normalized"] == labels["apfd"]["normalized"]
    curves = {"labeled": reportdata.run_fault_curve(a), "entropy": reportdata.run_fault_curve(b)}
    rows = reportdata.fault_curves_rows({**curves, "rgb": None})
    assert {row["run"] for row in rows} == {"labeled", "entropy"}
    line = [row for row in rows if row["run"] == "labeled"]
    assert [row["found"] for row in line] == curves["labeled"]["ranking"]
    assert line[0]["inspected"] == 0.0 and line[-1] == {
        "inspected": 1.0,
        "found": 1.0,
        "run": "labeled",
    }


# --- one sample ------------------------------------------------------------------------------


def _reference_ranks(table: pa.Table, metric: str) -> dict[int, int]:
    """Ranks as the rank stage orders: score descending, ties by sample_id ascending."""
    ids = table.column("sample_id").to_numpy()
    order = np.lexsort((ids, -table.column(metric).to_numpy().astype(np.float64)))
    return {int(ids[i]): position + 1 for position, i in enumerate(order)}


def test_ranks_under_every_metric_equal_sorting_the_pool(root, small_groups):
    for run in (details(root, "labeled"), small_groups):
        table = _ranking(run.layout)
        columns = reportdata.score_columns(run)
        assert set(columns.scores) == set(reportdata.SCORE_METRICS)
        references = {m: _reference_ranks(table, m) for m in reportdata.SCORE_METRICS}
        ids, ranks = table.column("sample_id").to_pylist(), table.column("rank").to_pylist()
        stored = dict(zip(ids, ranks, strict=True))
        for sample_id in table.column("sample_id").to_pylist():
            ranks = reportdata.ranks_of(columns, sample_id)
            assert ranks == {m: references[m][sample_id] for m in reportdata.SCORE_METRICS}
            assert ranks[run.metric] == stored[sample_id]
    # The entropy run ranked the same scores: its stored ranks are ours under entropy.
    entropy = _ranking(details(root, "entropy").layout)
    columns = reportdata.score_columns(details(root, "labeled"))
    for sample_id, rank in zip(
        entropy.column("sample_id").to_pylist(), entropy.column("rank").to_pylist(), strict=True
    ):
        assert reportdata.ranks_of(columns, sample_id)["entropy"] == rank


def test_ranks_break_ties_by_sample_id():
    ids = np.array([5, 2, 9, 4], dtype=np.int64)
    scores = np.array([0.5, 0.5, 0.5, 0.9], dtype=np.float32)
    position = np.full(10, -1)
    position[ids] = np.arange(4)
    columns = reportdata.ScoreColumns(ids, {"gini": scores}, position)
    assert [reportdata.ranks_of(columns, i)["gini"] for i in (4, 2, 5, 9)] == [1, 2, 3, 4]


def test_sample_detail_by_rank_or_id(root):
    run = details(root, "labeled")
    columns = reportdata.score_columns(run)
    row = _ranking(run.layout).slice(2, 1).to_pylist()[0]
    by_rank = reportdata.sample_detail(run, columns, rank=3)
    by_id = reportdata.sample_detail(run, columns, sample_id=row["sample_id"])
    assert by_rank["sample_id"] == row["sample_id"] and by_id["rank"] == 3
    assert np.array_equal(by_rank["x"], by_id["x"])
    assert by_rank["predicted"] == str(row["predicted"])
    assert by_rank["confidence"] == pytest.approx(row["confidence"])
    assert by_rank["label"] == str(row["label"])
    assert by_rank["wrong"] == (row["label"] != row["predicted"])
    assert by_rank["ranks"]["gini"] == 3
    assert by_rank["scores"]["gini"] == pytest.approx(row["gini"])
    probs = reportdata.read_probabilities(run, [row["sample_id"]])[row["sample_id"]]
    shown = [item["probability"] for item in by_rank["probabilities"]]
    np.testing.assert_allclose(shown, probs, atol=1e-6)
    assert [item["predicted"] for item in by_rank["probabilities"]].count(True) == 1
    assert by_rank["probabilities"][row["predicted"]]["predicted"]
    assert by_rank["source"] == f"digits.npz[{row['sample_id']}]"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"rank": 0}, r"^rank 0 is not a rank of this run; choose one from 1 to 118\.$"),
        ({"rank": 119}, r"^rank 119 is not a rank"),
        (
            {"sample_id": 7},  # quarantined (NaN)
            r"^sample 7 is not among the 118 ranked samples of this run \(a quarantined sample "
            r"is not ranked\); give a sample id from the ranking\.$",
        ),
        ({"sample_id": 5000}, r"^sample 5000 is not among the 118 ranked samples"),
        ({"sample_id": -1}, r"^sample -1 is not among"),
        ({"rank": 1, "sample_id": 1}, r"^give a rank or a sample id, not both\.$"),
        ({}, r"^give a rank or a sample id, not both\.$"),
    ],
)
def test_sample_detail_refuses_unknown_samples_in_one_sentence(root, options, message):
    run = details(root, "labeled")
    with pytest.raises(TestprioError, match=message):
        reportdata.sample_detail(run, reportdata.score_columns(run), **options)


def test_thumbnails_are_png_data_uris_for_a_bounded_number_of_rows(root):
    import base64

    from PIL import Image

    run = details(root, "labeled")
    ids = _ranking(run.layout).column("sample_id").to_pylist()[:5]
    uris = reportdata.thumbnails(run, ids, limit=3, side=16)
    assert uris[3:] == [None, None]
    sample = reportdata.read_samples(run, [ids[0]], columns=("x",))[ids[0]]["x"]
    prefix = "data:image/png;base64,"
    assert uris[0].startswith(prefix)
    image = np.asarray(Image.open(io.BytesIO(base64.b64decode(uris[0][len(prefix) :]))))
    expected = reportdata.upscale(reportdata.display_image(sample), min_side=16)
    assert np.array_equal(image, expected)


# --- many runs, many shards ------------------------------------------------------------------


def test_runs_list_has_samples_accuracy_and_apfd_from_the_summary(root):
    rows = {row["run_id"]: row for row in reportdata.list_runs(root)}
    summary = details(root, "labeled").summary
    assert rows["labeled"]["samples"] == 118
    assert rows["labeled"]["accuracy"] == round(summary["labels"]["accuracy"], 4)
    assert rows["labeled"]["apfd"] == round(summary["labels"]["apfd"]["raw"], 4)
    assert rows["rgb"]["samples"] == 30 and rows["rgb"]["accuracy"] is None
    assert rows["failed"]["samples"] is None and rows["failed"]["apfd"] is None


def test_runs_list_reads_a_finished_runs_summary_once(tmp_path, root):
    import shutil

    shutil.copytree(os.path.join(root, "labeled"), tmp_path / "copy")
    assert reportdata.list_runs(str(tmp_path))[0]["samples"] == 118
    (tmp_path / "copy" / "summary.json").write_text("{}")  # a finished run never changes
    assert reportdata.list_runs(str(tmp_path))[0]["samples"] == 118


def _many_shards(run: reportdata.RunDetails, shards: int) -> reportdata.RunDetails:
    rng = make_deterministic(11)
    stages = [{"stage": "start", "start": 0.0, "end": 1.0, "seconds": 1.0}]
    stages.append({"stage": "ingest", "start": 1.0, "end": 5.0, "seconds": 4.0})
    for index in range(shards):
        start = 5.0 + index * 0.01
        seconds = float(rng.uniform(0.5, 3.0))
        stages.append(
            {
                "stage": f"score-shard-{index:05d}",
                "start": start,
                "end": start + seconds,
                "seconds": seconds,
                "rows": 100,
            }
        )
    stages.append({"stage": "rank", "start": 20.0, "end": 21.0, "seconds": 1.0})
    return reportdata.RunDetails(run.layout, {**run.record, "stages": stages})


def test_timeline_of_1000_shards_draws_one_score_bar_with_min_median_max(root):
    run = _many_shards(details(root, "labeled"), 1000)
    seconds = np.array([t["seconds"] for t in run.record["stages"][2:-1]])
    rows = reportdata.stage_timeline(run)
    assert [row["stage"] for row in rows] == ["start", "ingest", "score (1,000 shards)", "rank"]
    score = rows[2]
    assert score["group"] == "score" and score["rows"] == 100_000
    assert score["start_s"] == 5.0
    assert score["end_s"] == round(max(5.0 + i * 0.01 + s for i, s in enumerate(seconds)), 3)
    assert score["detail"] == (
        f"1,000 shards; seconds per shard: min {seconds.min():.3f}, median "
        f"{np.median(seconds):.3f}, max {seconds.max():.3f}"
    )
    # At the cap, every shard keeps its own bar.
    few = reportdata.stage_timeline(_many_shards(details(root, "labeled"), 50))
    assert len(few) == 53 and all(row["detail"] == "" for row in few)
    from testprio.report import charts

    assert len(charts.stage_timeline(rows).to_dict()["data"]["values"]) == 4


def test_labelling_csv_defuses_formulas_in_class_names_and_sources(tmp_path, root):
    import csv as csv_module
    import json
    import shutil

    from testprio import labels

    shutil.copytree(os.path.join(root, "labeled"), tmp_path / "labeled")
    model_json = tmp_path / "labeled" / "model" / "model.json"
    model = json.loads(model_json.read_text())
    model["class_names"] = [f'=HYPERLINK("http://x/{i}")' for i in range(10)]
    model_json.write_text(json.dumps(model))
    layout = RunLayout(str(tmp_path / "labeled"))
    export = labels.plan_export(layout, ranks=labels.RankRange(1, 5), pre_annotate=True)
    rows = list(csv_module.DictReader(io.StringIO(export.csv_bytes().decode())))
    assert rows and all(row["predicted_name"].startswith("'=HYPERLINK(") for row in rows)
    assert [int(row["predicted"]) for row in rows] == [r["predicted"] for r in export.rows]


# --- downloads -----------------------------------------------------------------------------------


def test_ranking_csv_equals_the_ranking(root):
    run = details(root, "labeled")
    table = pacsv.read_csv(io.BytesIO(reportdata.ranking_csv(run.layout)))
    ranking = _ranking(run.layout)
    assert table.column_names == ranking.column_names
    assert table.column("sample_id").to_pylist() == ranking.column("sample_id").to_pylist()


def test_top_k_for_labeling_has_ids_sources_and_images(root):
    from PIL import Image

    run = details(root, "labeled")
    rows = reportdata.top_k_rows(run, 6)
    assert [row["rank"] for row in rows] == list(range(1, 7))
    assert all(row["source"] == f"digits.npz[{row['sample_id']}]" for row in rows)
    text = reportdata.rows_to_csv(rows).decode()
    assert text.splitlines()[0] == "rank,sample_id,source,predicted,confidence,gini,label"
    archive = zipfile.ZipFile(io.BytesIO(reportdata.top_k_images_zip(run, 6)))
    names = archive.namelist()
    assert names[0] == "top-6.csv" and len(names) == 7
    first = f"images/rank-0000001_sample-{rows[0]['sample_id']}.png"
    assert first in names
    assert Image.open(archive.open(first)).size == (8, 8)


def test_md_escape_neutralises_markdown_and_html():
    text = "<img src=x onerror=alert(1)> [a](javascript:x) *b* `c` | d"
    escaped = reportdata.md_escape(text)
    assert "<" not in escaped.replace("\\<", "") and "[" not in escaped.replace("\\[", "")
    assert f"javascript{reportdata.WORD_JOINER}\\:" in escaped and "\\|" in escaped


HOSTILE_TEXT = [
    "[x](http://evil.example/a)",
    "<script>alert(1)</script>",
    "http://evil.example and www.evil.example and mail@evil.example",
    "*a* _b_ `c` # d | e ~f~ :red[g] $h$ <http://i> ![j](k) \\ &amp; 1. 2) - +",
    "two\nlines\r\nthree",
]


@pytest.mark.parametrize("text", HOSTILE_TEXT)
def test_md_escape_renders_as_the_literal_text(text):
    from html import escape

    from markdown_it import MarkdownIt

    escaped = reportdata.md_escape(text)
    flat = " ".join(text.splitlines())
    html = MarkdownIt("commonmark").render(escaped)
    assert html.replace(reportdata.WORD_JOINER, "") == f"<p>{escape(flat, quote=False)}</p>\n"
    # remark-gfm (Streamlit) links http://, www. and e-mail addresses found in the text after
    # escapes are resolved: the word joiners leave none of those patterns there.
    assert not re.search(r"(?i)https?://|www(?=\.)|[-.\w+]@[-\w]", html)


# Strings a spreadsheet runs as formulas, and what the CSV must hold instead.
FORMULAS = {
    '=HYPERLINK("http://evil","x")': '\'=HYPERLINK("http://evil","x")',
    "+1+cmd|' /C calc'!A0": "'+1+cmd|' /C calc'!A0",
    "-2+3": "'-2+3",
    "@SUM(A1)": "'@SUM(A1)",
    "\tx": "'\tx",
    "\rx": "'\rx",
    "digits.npz[3]": "digits.npz[3]",
}


def test_csv_downloads_defuse_formulas_in_text_but_keep_negative_numbers(tmp_path):
    rows = [{"source": text, "margin": -0.5, "label": -1} for text in FORMULAS]
    table = pacsv.read_csv(
        io.BytesIO(reportdata.rows_to_csv(rows)),
        parse_options=pacsv.ParseOptions(newlines_in_values=True),  # the "\\r" cell
        convert_options=pacsv.ConvertOptions(column_types={"source": pa.string()}),
    )
    assert table.column("source").to_pylist() == list(FORMULAS.values())
    assert set(table.column("margin").to_pylist()) == {-0.5}

    layout = RunLayout(str(tmp_path / "run"))
    os.makedirs(layout.uri)
    ranking = pa.table({"rank": list(range(1, 8)), "margin": [-0.25] * 7, "source": list(FORMULAS)})
    pq.write_table(ranking, layout.ranking)
    table = pacsv.read_csv(
        io.BytesIO(reportdata.ranking_csv(layout)),
        parse_options=pacsv.ParseOptions(newlines_in_values=True),  # the "\\r" cell
        convert_options=pacsv.ConvertOptions(column_types={"source": pa.string()}),
    )
    assert table.column("source").to_pylist() == list(FORMULAS.values())
    assert table.column("margin").to_pylist() == [-0.25] * 7


def test_files_of_a_run_are_confined_to_the_root_by_real_path(tmp_path):
    root = tmp_path / "root"
    (root / "run" / "report").mkdir(parents=True)
    outside = tmp_path / "secret.txt"
    outside.write_text("secret")
    layout = RunLayout(str(root / "run"))
    assert reportdata.run_file(layout, layout.summary) == layout.summary
    os.symlink(outside, layout.export_zip)
    with pytest.raises(TestprioError, match=r"^'run/report/export\.zip' leads outside the"):
        reportdata.run_file(layout, layout.export_zip)
    os.symlink(tmp_path, root / "run" / "data")  # a folder link: every file below is out
    with pytest.raises(TestprioError, match="leads outside the report's root"):
        reportdata.shard_file(layout, "data", "shard-00000.parquet")
    for name in ("../../secret.txt", "/etc/passwd", "shard-1.parquet", None, ""):
        with pytest.raises(TestprioError, match=r"lists the shard .* not a shard-NNNNN"):
            reportdata.shard_file(layout, "scores", name)
    with pytest.raises(TestprioError, match="is not a file of run run"):
        reportdata.run_file(layout, str(outside))


# --- gs:// --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gcs_runs(tmp_path_factory, gcs_emulator) -> str:
    import uuid

    from tests.conftest import BUCKET

    root = f"gs://{BUCKET}/report-{uuid.uuid4().hex[:8]}"
    make_runs(root, tmp_path_factory.mktemp("gcs-inputs"))
    return root


def test_everything_reads_from_a_gcs_root(gcs_runs):
    rows = reportdata.list_runs(gcs_runs)
    assert {row["run_id"] for row in rows} == set(RUN_IDS)
    run = details(gcs_runs, "labeled")
    assert run.layout.uri == f"{gcs_runs}/labeled"
    page = reportdata.ranking_page(run, page=1, page_size=50)
    assert page.rows.column("rank").to_pylist() == list(range(51, 101))
    assert [item["rank"] for item in reportdata.gallery(run, "bottom", 2)] == [117, 118]
    assert reportdata.read_samples(run, [8])[8]["source"] == "digits.npz[8]"
    assert reportdata.dataset_summary(run)["quarantine_reasons"][0]["samples"] == 2
    with pytest.raises(TestprioError, match="is not a run id"):
        reportdata.resolve_run(gcs_runs, "../other")


@pytest.mark.parametrize(
    ("index", "names", "expected"),
    [
        (3, ["bird", "cat", "dog", "eel"], "3 eel"),
        (3, [str(i) for i in range(10)], "3"),  # class folders named by their number
        (3, None, "3"),
        (12, ["a", "b"], "12"),
        (None, ["a"], ""),
    ],
)
def test_class_label(index, names, expected):
    assert reportdata.class_label(index, names) == expected


# --- evaluation runs ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def evaluation_root(tmp_path_factory) -> tuple[str, dict]:
    from tests.evalrunkit import make_evaluation

    folder = tmp_path_factory.mktemp("reportdata-eval")
    evaluation = make_evaluation(str(folder / "runs"), folder)
    return str(folder / "runs"), json.loads(json.dumps(evaluation))


def test_evaluation_runs_are_listed_with_their_figures(evaluation_root):
    root, evaluation = evaluation_root
    (row,) = reportdata.list_runs(root)
    assert row["kind"] == "evaluation" and row["status"] == "succeeded"
    assert row["samples"] == evaluation["samples"]["pool"] == 400
    assert row["accuracy"] == round(evaluation["pool"]["accuracy"], 4)
    assert row["baseline_accuracy"] == round(evaluation["baseline_accuracy"], 4)
    assert row["best_prioritizer"].startswith("margin (")  # margin wins on these digits
    assert reportdata.filter_runs([row], "margin") == [row]  # the best prioritizer is searched
    assert reportdata.filter_runs([row], "evaluation") == [row]


def test_best_by_apfd_lists_every_tie_and_skips_pools_without_faults():
    entries = {
        "a": {"apfd": {"raw": 0.7, "normalized": 0.8}},
        "b": {"apfd": {"raw": 0.7, "normalized": 0.8}},
        "random": {"apfd": {"raw": 0.5, "normalized": 0.5}},
    }
    assert reportdata.best_by_apfd(entries) == (["a", "b"], 0.8)
    assert reportdata.best_by_apfd({"a": {"apfd": None}}) == ([], None)
    figures = reportdata.figures_of_evaluation(
        {"samples": {"pool": 9}, "pool": {"accuracy": 1.0}, "baseline_accuracy": 0.5}
        | {"prioritizers": {"a": {"apfd": None}}}
    )
    assert figures["best_prioritizer"] == "" and figures["samples"] == 9


@pytest.mark.parametrize("content", [None, [], {"samples": "x"}, {"prioritizers": {"a": 1}}])
def test_an_unreadable_evaluation_gives_empty_runs_figures(content):
    assert reportdata.figures_of_evaluation(content) == dict.fromkeys(reportdata.RUN_FIGURE_COLUMNS)


def test_run_kind_comes_from_the_parameters():
    assert reportdata.run_kind({"parameters": {"kind": "evaluation"}}) == "evaluation"
    assert reportdata.run_kind({"parameters": {"metric": "gini"}}) == "ranking"
    assert reportdata.run_kind({"parameters": None}) == "ranking"


def test_evaluation_view_shapes_the_file_for_the_page(evaluation_root):
    root, evaluation = evaluation_root
    view = reportdata.load_evaluation(reportdata.resolve_run(root, "evaluation"))
    baseline = evaluation["baseline_accuracy"]
    assert view["baseline_accuracy"] == baseline
    assert view["retraining"]["method"] == "onnx"
    assert len(view["faults"]) == len(view["retrain"]) == 4 * 3  # prioritizers x budgets
    for row in view["faults"]:
        entry = next(
            e for e in evaluation["prioritizers"][row["prioritizer"]]["faults"]
            if e["budget"] == row["budget"]
        )  # fmt: skip
        assert row["selected"] == entry["selected"] and row["share"] == entry["found"] / 76
    for row in view["retrain"]:
        assert row["gain_low"] == pytest.approx(row["ci_low"] - baseline)
        assert row["gain_high"] == pytest.approx(row["ci_high"] - baseline)
    assert [row["budget"] for row in view["winners"]] == [1.0, 5.0, 10.0]
    attribution = view["attribution"]
    effects = evaluation["prioritizers"]["instability"]["attribution"]["effects"]
    assert [row["transform"] for row in attribution["rows"]] == [e["transform"] for e in effects]
    assert attribution["n_boot"] == 200 and attribution["followups"] == 10
    assert view["layers"] is None  # no coverage or surprise prioritizer ran


def test_evaluation_view_has_the_curves_and_the_faults_per_budget(evaluation_root):
    _, evaluation = evaluation_root
    view = reportdata.evaluation_view(evaluation, "r1")
    assert view["curves"] == [
        {"prioritizer": name, "inspected": x, "found": y}
        for name, entry in evaluation["prioritizers"].items()
        for x, y in entry["curve"]
    ]
    assert len(view["curves"]) == 4 * 101
    ideal = [
        (r["inspected"], r["found"]) for r in view["curve_references"] if r["order"] == "ideal"
    ]
    assert ideal == [(0.0, 0.0), (76 / 400, 1.0), (1.0, 1.0)]  # 76 faults in 400 samples
    assert view["faults_table"] == [
        {"prioritizer": name, **{f"{row['budget']:g}%": row["found"] for row in entry["faults"]}}
        for name, entry in evaluation["prioritizers"].items()
    ]
    assert list(view["faults_table"][0]) == ["prioritizer", "1%", "5%", "10%"]


def test_evaluation_view_of_a_file_without_curves_or_without_faults(evaluation_root):
    _, evaluation = evaluation_root
    older = json.loads(json.dumps(evaluation))
    for entry in older["prioritizers"].values():
        del entry["curve"]  # written before evaluations kept curves
    view = reportdata.evaluation_view(older, "r1")
    assert view["curves"] is None and len(view["faults"]) == 4 * 3
    faultless = json.loads(json.dumps(evaluation))
    for entry in faultless["prioritizers"].values():
        entry["curve"] = None  # a pool without faults
    assert reportdata.evaluation_view(faultless, "r1")["curves"] == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda e: e.pop("retraining"), r"\(it has no 'retraining'\)"),
        (
            lambda e: e["prioritizers"]["gini"].update(curve=[[0.0, "x"]]),
            r"\(a field holds a value of the wrong kind\)",
        ),
        (
            lambda e: e["prioritizers"]["gini"].update(curve="xy"),
            r"\(a field holds a value of the wrong kind\)",
        ),
        (lambda e: e.update(prioritizers={}), r"\(it lists no prioritizer\)"),
        (
            lambda e: e["samples"].update(pool="many"),
            r"\(a field holds a value of the wrong kind\)",
        ),
        (
            lambda e: e["prioritizers"]["gini"]["faults"][0].update(found=[1]),
            r"\(a field holds a value of the wrong kind\)",
        ),
    ],
)
def test_a_malformed_evaluation_is_one_sentence(evaluation_root, change, message):
    _, evaluation = evaluation_root
    broken = json.loads(json.dumps(evaluation))
    change(broken)
    with pytest.raises(TestprioError, match=r"^evaluation.json of run r1 is not an evaluation .*"):
        reportdata.evaluation_view(broken, "r1")
    with pytest.raises(TestprioError, match=message):
        reportdata.evaluation_view(broken, "r1")
    with pytest.raises(TestprioError, match=r"is not an evaluation testprio wrote \(it is not a "):
        reportdata.evaluation_view([], "r1")


def test_a_missing_or_linked_evaluation_json_is_refused(evaluation_root, tmp_path):
    root, _ = evaluation_root
    with pytest.raises(TestprioError, match="run labeled holds no evaluation.json"):
        reportdata.load_evaluation(reportdata.resolve_run(root_with_ranking(tmp_path), "labeled"))
    secret = tmp_path / "secret.json"
    secret.write_text("{}")
    linked = tmp_path / "linked"
    (linked / "evaluation").mkdir(parents=True)
    (linked / "evaluation" / "evaluation.json").symlink_to(secret)
    with pytest.raises(TestprioError, match="leads outside the report's root"):
        reportdata.load_evaluation(reportdata.resolve_run(str(linked), "evaluation"))


def root_with_ranking(tmp_path) -> str:
    (tmp_path / "ranking" / "labeled").mkdir(parents=True)
    return str(tmp_path / "ranking")


def test_prioritizer_apfd_rows_of_a_summary(root):
    summary = details(root, "labeled").summary
    rows = reportdata.prioritizer_apfd_rows(summary)
    assert [row["prioritizer"] for row in rows] == list(summary["prioritizers"])
    assert [row["ranking"] for row in rows].count("✓") == 1
    assert reportdata.prioritizer_apfd_rows({"metric": "gini"}) == []
