"""Imported labels as the run's labels in the report's data (testprio.report.label_sources
and what reads it: the runs list, the ranking, samples, galleries) and the runs list's pages
(testprio.report.runs_table), on small real runs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from testprio import labels, storage
from testprio.errors import TestprioError
from testprio.report import data as reportdata
from tests.conftest import linear_classifier, make_deterministic, write_pool
from tests.stagekit import run_stages

SAMPLES = 100


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A root with ``labeled`` (100 samples with pool labels, ranking in row groups of 7)
    and ``unlabeled`` (the same samples without labels)."""
    folder = tmp_path_factory.mktemp("label-sources")
    x = make_deterministic(5).normal(0, 1, (SAMPLES, 1, 8, 8)).astype(np.float32)
    y = make_deterministic(6).integers(0, 10, SAMPLES)
    model = linear_classifier(folder / "m.onnx", seed=3)
    root = str(folder / "runs")
    layout = run_stages(model, write_pool(folder / "p.npz", x, y), root, "labeled")
    pq.write_table(storage.read_table(layout.ranking), layout.ranking, row_group_size=7)
    run_stages(model, write_pool(folder / "u.npy", x), root, "unlabeled")
    return folder / "runs"


@pytest.fixture
def root(pristine, tmp_path):
    """A fresh copy of the runs, for tests that import labels."""
    shutil.copytree(pristine, tmp_path / "runs")
    return tmp_path / "runs"


def details(root, run_id: str = "labeled") -> reportdata.RunDetails:
    return reportdata.load_run(reportdata.resolve_run(str(root), run_id))


def ranking(root, run_id: str = "labeled") -> list[dict]:
    return storage.read_table(details(root, run_id).layout.ranking).to_pylist()


def import_labels(root, given: dict[int, int], run_id: str = "labeled"):
    text = "sample_id,label\n" + "".join(f"{i},{label}\n" for i, label in given.items())
    layout = reportdata.resolve_run(str(root), run_id)
    return labels.import_labels(layout, "batch.csv", data=text.encode())


def planted(root, run_id: str = "labeled") -> dict[int, int]:
    """Labels for ranks 3, 10, 11 and 40 to 60: every third one the predicted class, the rest
    another class (so imported and pool figures differ)."""
    rows = ranking(root, run_id)
    chosen = [rows[i] for i in (2, 9, 10, *range(39, 60))]
    return {
        row["sample_id"]: row["predicted"] if index % 3 == 0 else (row["predicted"] + 1) % 10
        for index, row in enumerate(chosen)
    }


def reference_figures(rows: list[dict], given: dict[int, int]) -> dict:
    """Accuracy, misclassified and APFD of the imported samples in rank order, written out."""
    wrong = [
        given[row["sample_id"]] != row["predicted"] for row in rows if row["sample_id"] in given
    ]
    n, k = len(wrong), sum(wrong)
    apfd = 1 - sum(i + 1 for i, w in enumerate(wrong) if w) / (k * n) + 1 / (2 * n)
    return {"samples": n, "accuracy": 1 - k / n, "misclassified": k, "apfd": apfd}


def test_the_labels_file_name_is_the_one_labels_import_writes():
    assert reportdata.IMPORTED_LABELS_FILE == labels.LABELS_FILE


def test_imported_figures_are_those_import_records_and_a_reference(root):
    given = planted(root)
    result = import_labels(root, given)
    run = details(root)
    imported = reportdata.read_imported_labels(run)
    first, pool = reportdata.label_sources(run, imported)
    assert (first.source, first.text, pool.source) == ("imported", "imported labels", "pool")
    expected = reference_figures(ranking(root), given)
    assert first.figures["samples"] == expected["samples"] == 24
    assert first.figures["misclassified"] == expected["misclassified"] == 16
    assert first.figures["accuracy"] == round(expected["accuracy"], 6)  # as run.json has it
    assert first.figures["apfd"] == pytest.approx(expected["apfd"])
    assert (first.figures["first_rank"], first.figures["last_rank"]) == (3, 60)
    recorded = reportdata.recorded_imported_figures(run.record)
    assert recorded == first.figures  # what run.json says is what the labels file gives
    assert result.labelled["accuracy"] == first.figures["accuracy"]
    assert pool.figures["accuracy"] == run.summary["labels"]["accuracy"]
    assert pool.figures["samples"] == SAMPLES
    # The imported curve runs over the imported samples alone, in rank order.
    assert first.curve["samples"] == 24 and first.curve["faults"] == 16
    counts = {}
    for label in given.values():
        counts[label] = counts.get(label, 0) + 1
    assert {row["class_index"] for row in first.per_class} == set(counts)


def test_overlay_puts_the_imported_label_first_and_names_its_source():
    imported = reportdata.ImportedLabels(np.array([3, 9, 12]), np.array([4, 7, 0]))
    table = pa.table(
        {
            "sample_id": pa.array([5, 3, 9, 11], pa.int64()),
            "label": pa.array([1, None, 2, None], pa.int32()),
            "predicted": pa.array([1, 1, 1, 1], pa.int32()),
        }
    )
    shown = reportdata.overlay_labels(table, imported)
    assert shown.column_names == ["sample_id", "label", "label_source", "predicted"]
    assert shown.column("label").to_pylist() == [1, 4, 7, None]
    assert shown.column("label_source").to_pylist() == ["pool", "imported", "imported", None]
    assert reportdata.overlay_labels(table, None) is table
    assert imported.lookup([]).tolist() == [] and imported.lookup([12, 13]).tolist() == [0, -1]
    assert reportdata.sample_label(None, 3, imported) == (4, "imported")
    assert reportdata.sample_label(2, 5, imported) == (2, "pool")
    assert reportdata.sample_label(None, 5, None) == (None, None)


def test_ranking_pages_filter_on_the_runs_labels(root):
    # Pool labels 0..3 only: the row groups' label statistics then rule out class 9, which
    # only an imported label gives.
    run = details(root)
    table = storage.read_table(run.layout.ranking)
    pool = pa.array([label % 4 for label in table.column("label").to_pylist()], pa.int32())
    table = table.set_column(table.column_names.index("label"), "label", pool)
    pq.write_table(table, run.layout.ranking, row_group_size=7)
    rows = table.to_pylist()
    given = {rows[50]["sample_id"]: 9, rows[5]["sample_id"]: 9, rows[6]["sample_id"]: 0}
    import_labels(root, given)
    run = details(root)
    imported = reportdata.read_imported_labels(run)
    label_of = {row["sample_id"]: given.get(row["sample_id"], row["label"]) for row in rows}
    for filters, keep in [
        (reportdata.RankingFilter(labels=(9,)), lambda i, row: label_of[i] == 9),
        (reportdata.RankingFilter(labels=(0,)), lambda i, row: label_of[i] == 0),
        (
            reportdata.RankingFilter(misclassified=True),
            lambda i, row: label_of[i] != row["predicted"],
        ),
    ]:
        result = reportdata.ranking_page(run, page_size=200, filters=filters, imported=imported)
        expected = [row["sample_id"] for row in rows if keep(row["sample_id"], row)]
        assert result.rows.column("sample_id").to_pylist() == expected, filters
        assert result.total == len(expected)
    page = reportdata.ranking_page(run, page_size=10, imported=imported)
    assert page.rows.column("label").to_pylist() == [label_of[r["sample_id"]] for r in rows[:10]]
    assert page.rows.column("label_source").to_pylist()[5:7] == ["imported", "imported"]
    assert "label_source" not in reportdata.ranking_page(run, page_size=10).rows.column_names


def test_the_sample_and_the_galleries_show_the_runs_label(root):
    rows = ranking(root)
    given = {rows[0]["sample_id"]: (rows[0]["label"] + 1) % 10}
    import_labels(root, given)
    run = details(root)
    imported = reportdata.read_imported_labels(run)
    columns = reportdata.score_columns(run)
    first = reportdata.sample_detail(run, columns, rank=1, imported=imported)
    assert first["label"] == str(given[rows[0]["sample_id"]])
    assert first["label_source"] == "imported"
    assert first["wrong"] == (given[rows[0]["sample_id"]] != rows[0]["predicted"])
    second = reportdata.sample_detail(run, columns, rank=2, imported=imported)
    assert (second["label"], second["label_source"]) == (str(rows[1]["label"]), "pool")
    top = reportdata.gallery(run, "top", 2, imported=imported)
    assert [item["label"] for item in top] == [first["label"], second["label"]]


def test_a_pool_without_labels_gets_its_labels_from_the_import(root):
    given = planted(root, "unlabeled")
    import_labels(root, given, "unlabeled")
    run = details(root, "unlabeled")
    (only,) = reportdata.label_sources(run, reportdata.read_imported_labels(run))
    assert only.source == "imported" and only.figures["samples"] == len(given)
    rows = {row["run_id"]: row for row in reportdata.list_runs(str(root))}
    assert rows["unlabeled"]["labels"] == f"imported {len(given)}"
    assert rows["unlabeled"]["accuracy"] == round(only.figures["accuracy"], 4)
    assert rows["unlabeled"]["pool_accuracy"] is None
    assert rows["labeled"]["labels"] == f"pool {SAMPLES}"
    assert reportdata.label_sources(details(root), None)[0].source == "pool"
    assert reportdata.filter_runs(list(rows.values()), "imported") == [rows["unlabeled"]]


def test_the_runs_list_shows_both_sources(root):
    given = planted(root)
    result = import_labels(root, given)
    rows = {row["run_id"]: row for row in reportdata.list_runs(str(root))}
    row = rows["labeled"]
    summary = details(root).summary["labels"]
    assert row["labels"] == f"imported 24, pool {SAMPLES}"
    assert row["accuracy"] == round(result.labelled["accuracy"], 4)
    assert row["apfd"] == round(result.labelled["apfd"]["raw"], 4)
    assert row["pool_accuracy"] == round(summary["accuracy"], 4)
    assert row["pool_apfd"] == round(summary["apfd"]["raw"], 4)


@pytest.mark.parametrize(
    "labelled",
    ["not figures", [1, 2], {"accuracy": "high"}, {"accuracy": float("nan")}, {"samples": 3}],
)
def test_an_odd_labelled_entry_in_run_json_is_no_label_source(root, labelled):
    path = root / "labeled" / "run.json"
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "labelled": labelled}))
    (row,) = [row for row in reportdata.list_runs(str(root)) if row["run_id"] == "labeled"]
    assert row["labels"] == f"pool {SAMPLES}" and row["pool_accuracy"] is None
    assert reportdata.recorded_imported_figures(json.loads(path.read_text())) is None


def test_compare_rows_and_curves_name_each_runs_sources(root):
    import_labels(root, planted(root))
    runs = {run_id: details(root, run_id) for run_id in ("labeled", "unlabeled")}
    sources = {
        run_id: reportdata.label_sources(run, reportdata.read_imported_labels(run))
        for run_id, run in runs.items()
    }
    rows = [
        row
        for run_id, run in runs.items()
        for row in reportdata.label_figure_rows(run, sources[run_id])
    ]
    assert [(row["run"], row["labels"]) for row in rows] == [
        ("labeled", "imported labels"),
        ("labeled", "pool labels"),
    ]
    assert list(reportdata.fault_curves_by_run(sources)) == [
        "labeled · imported labels",
        "labeled · pool labels",
    ]
    assert list(reportdata.fault_curves_by_run({"labeled": sources["labeled"][1:]})) == ["labeled"]


# --- the runs list's pages -------------------------------------------------------------


def run_rows(count: int) -> list[dict]:
    return [
        {
            "run_id": f"r{index:02d}",
            "kind": "ranking",
            "model": "m.onnx",
            "dataset": f"pool-{index % 3}",
            "metric": "gini",
            "status": "succeeded" if index % 4 else "failed",
            "started": f"2026-01-01 00:{index:02d}:00 UTC",
            "duration": "1 s",
            "duration_s": float(index),
            "error": "" if index % 4 else "it broke",
            "samples": None if index % 5 == 0 else 10 * index,
            "labels": "",
            "accuracy": None if index % 2 else index / 100,
            "apfd": None,
            "pool_accuracy": None,
            "pool_apfd": None,
            "baseline_accuracy": None,
            "best_prioritizer": None,
        }
        for index in range(count)
    ]


def test_runs_pages_sort_every_run_and_keep_unknown_values_last():
    rows = run_rows(23)
    page = reportdata.runs_page(rows, sort="accuracy", page=0, page_size=10)
    assert (page.total, page.pages, page.page) == (23, 3, 0)
    accuracy = [row["accuracy"] for row in page.rows]
    assert accuracy == [0.22, 0.2, 0.18, 0.16, 0.14, 0.12, 0.1, 0.08, 0.06, 0.04]
    last = reportdata.runs_page(rows, sort="accuracy", page=9, page_size=10)  # clamped
    assert last.page == 2 and [row["accuracy"] for row in last.rows] == [None] * 3
    assert [r["run_id"] for r in reportdata.sort_runs(rows, "oldest first")][:2] == ["r00", "r01"]
    assert [r["run_id"] for r in reportdata.sort_runs(rows, "samples")][-5:] == [
        "r00",
        "r05",
        "r10",
        "r15",
        "r20",
    ]
    assert reportdata.runs_page(rows, query="POOL-2").total == 7
    assert page.runs[0]["run_id"] == page.rows[0]["run_id"] == "r22"


def test_runs_table_rows_have_text_in_text_columns_and_hide_empty_optional_ones():
    page = reportdata.runs_page(run_rows(3))
    assert all(isinstance(page.rows[0][name], str) for name in ("labels", "best_prioritizer"))
    (first,) = [row for row in page.rows if row["run_id"] == "r00"]
    assert first["samples"] is None  # a number column keeps None (shown as nothing)
    assert "error" in page.columns  # r00 failed
    assert not {"pool_accuracy", "pool_apfd", "baseline_accuracy", "best_prioritizer"} & set(
        page.columns
    )
    quiet = reportdata.runs_page(run_rows(3)[1:])
    assert "error" not in quiet.columns


def test_runs_pages_refuse_an_unknown_sort_and_an_empty_page():
    with pytest.raises(TestprioError, match="'size' is not a way to sort runs; use one of"):
        reportdata.runs_page(run_rows(2), sort="size")
    with pytest.raises(TestprioError, match="page size 0 must be a positive number of runs"):
        reportdata.runs_page(run_rows(2), page_size=0)


@pytest.mark.parametrize(
    ("labelled", "text"),
    [(118, "pool 118"), (99_999, "pool 99,999"), (250_400, "pool 250k"), (1_000_000, "pool 1M")]
    + [(1_300_000, "pool 1.3M")],
)
def test_the_labels_column_counts_compactly(labelled, text):
    summary = {"counts": {"ranked": labelled}, "labels": {"labeled": labelled, "accuracy": 0.5}}
    assert reportdata.figures_of_summary(summary)["labels"] == text
