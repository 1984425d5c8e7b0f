"""Ranking: sharded equals whole, planted cases, ties, top-k prefix, summary figures, APFD."""

import numpy as np
import pyarrow as pa
import pytest

from testprio import storage
from testprio.errors import TestprioError
from testprio.metrics import METRICS, softmax
from testprio.rank_memory import rank_table, ranking_order
from testprio.ranking_file import RANK_COLUMNS
from testprio.summary import HISTOGRAM_BINS, apfd
from tests.conftest import linear_classifier, make_deterministic, write_pool
from tests.stagekit import ranking, run_stages


@pytest.fixture
def pool(tmp_path):
    rng = make_deterministic(1)
    x = rng.normal(0, 1, (97, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 10, 97)
    return write_pool(tmp_path / "pool.npz", x, y), x, y


@pytest.fixture
def model(tmp_path):
    return linear_classifier(tmp_path / "model.onnx")


@pytest.mark.parametrize("metric", sorted(METRICS))
def test_sharded_ranking_equals_one_pass(tmp_path, pool, model, metric):
    path, _, _ = pool
    root = str(tmp_path / "runs")
    whole = ranking(run_stages(model, path, root, "whole", shard_size=1000, metric=metric))
    for shard_size in (33, 40, 97):  # 3 even-ish shards, uneven shards, one exact shard
        sharded = ranking(
            run_stages(model, path, root, f"s{shard_size}", shard_size=shard_size, metric=metric)
        )
        assert sharded.equals(whole), f"shard size {shard_size} changed the {metric} ranking"


def test_ranking_is_sorted_with_ties_by_sample_id(tmp_path, pool, model):
    table = ranking(run_stages(model, pool[0], str(tmp_path / "r"), shard_size=30))
    values = table.column("gini").to_numpy()
    ids = table.column("sample_id").to_numpy()
    assert table.column("rank").to_pylist() == list(range(1, 98))
    assert sorted(ids.tolist()) == list(range(97))
    order = np.lexsort((ids, -values))
    np.testing.assert_array_equal(order, np.arange(97))
    assert "probs" not in table.column_names


def _score_table(probs: np.ndarray, ids: np.ndarray) -> pa.Table:
    from testprio.metrics import score_probabilities

    scores = score_probabilities(probs)
    columns = {"sample_id": pa.array(ids, pa.int64())}
    columns.update({name: pa.array(scores[name]) for name in ["predicted", "confidence", *METRICS]})
    columns["label"] = pa.nulls(len(ids), pa.int32())
    return pa.table(columns)


def test_planted_uniform_first_one_hot_last_ties_by_id():
    k = 4
    rng = make_deterministic(2)
    probs = softmax(rng.normal(0, 1, (20, k)))
    probs[7] = np.eye(k)[1]  # certain
    probs[3] = probs[12] = np.full(k, 1 / k)  # tied, most uncertain
    table = rank_table(
        [_score_table(probs[:10], np.arange(10)), _score_table(probs[10:], np.arange(10, 20))],
        "gini",
    )
    ids = table.column("sample_id").to_pylist()
    assert ids[:2] == [3, 12]
    assert ids[-1] == 7


def test_top_k_is_a_prefix_of_the_full_order(tmp_path, pool, model):
    layout = run_stages(model, pool[0], str(tmp_path / "r"), shard_size=25, top_k=15)
    summary = storage.read_json(layout.summary)
    full = ranking(layout).slice(0, 15).to_pylist()
    assert summary["top"] == full
    assert [row["rank"] for row in summary["top"]] == list(range(1, 16))


def test_apfd_hand_worked_example():
    # n = 4 samples, faults at ranks 1 and 3: 1 - (1 + 3) / (2 * 4) + 1 / 8 = 0.625.
    result = apfd(np.array([True, False, True, False]))
    assert result["raw"] == pytest.approx(0.625)
    assert result["best"] == pytest.approx(0.75)  # faults at ranks 1, 2
    assert result["worst"] == pytest.approx(0.25)  # faults at ranks 3, 4
    assert result["normalized"] == pytest.approx(0.75)


def test_apfd_edges():
    assert apfd(np.array([False, False])) is None
    assert apfd(np.array([True, False]))["normalized"] == pytest.approx(1.0)
    assert apfd(np.array([False, True]))["normalized"] == pytest.approx(0.0)
    assert apfd(np.array([True, True]))["normalized"] is None  # best == worst


def test_summary_figures_match_numpy(tmp_path, pool, model):
    path, x, y = pool
    layout = run_stages(model, path, str(tmp_path / "r"), shard_size=40, metric="entropy")
    summary = storage.read_json(layout.summary)
    table = ranking(layout)
    predicted = table.column("predicted").to_numpy()
    labels = table.column("label").to_numpy()
    entropy = table.column("entropy").to_numpy()

    assert summary["counts"] == {
        "samples": 97,
        "ranked": 97,
        "quarantined": 0,
        "duplicates": 0,
        "quarantine_kinds": {},
    }
    assert summary["num_classes"] == 10
    for name in METRICS:
        assert sum(summary["histograms"][name]["counts"]) == 97
        assert len(summary["histograms"][name]["edges"]) == HISTOGRAM_BINS + 1
    bins = np.asarray(summary["class_score_bins"]["counts"])
    assert bins.shape == (10, HISTOGRAM_BINS)
    np.testing.assert_array_equal(bins.sum(axis=1), np.bincount(predicted, minlength=10))
    for cls in range(10):
        expected = entropy[predicted == cls].mean() if (predicted == cls).any() else None
        got = summary["per_class_mean"]["entropy"][cls]
        assert got == (None if expected is None else pytest.approx(expected, abs=1e-5))
    wrong = labels != predicted
    assert summary["labels"]["accuracy"] == pytest.approx(1 - wrong.mean(), abs=1e-6)
    assert summary["labels"]["misclassified"] == int(wrong.sum())
    assert summary["labels"]["apfd"]["raw"] == pytest.approx(apfd(wrong)["raw"])
    rates = [r for r in summary["labels"]["misclassification_rate_per_bin"] if r is not None]
    assert all(0 <= r <= 1 for r in rates)


def test_unlabeled_pool_has_no_label_figures(tmp_path, model):
    x = make_deterministic(4).normal(0, 1, (30, 1, 8, 8)).astype(np.float32)
    path = write_pool(tmp_path / "pool.npy", x)
    layout = run_stages(model, path, str(tmp_path / "r"))
    assert storage.read_json(layout.summary)["labels"] is None
    assert ranking(layout).column("label").null_count == 30


def test_rank_refuses_missing_shard_scores(tmp_path, pool, model):
    from testprio import stages

    layout = run_stages(model, pool[0], str(tmp_path / "r"), shard_size=40)
    scores = [storage.join(layout.scores_dir, f"shard-0000{i}.parquet") for i in range(3)]
    storage.delete(scores[1])
    with pytest.raises(TestprioError, match=r"scores are missing for 1 shard\(s\) \(shard-00001"):
        stages.rank_scores(layout.uri, scores, "gini", 10)
    assert storage.read_json(layout.run_json)["status"] == "failed"


@pytest.mark.parametrize("shuffled", [False, True])
def test_ranking_order_matches_a_lexsort_reference(shuffled):
    rng = make_deterministic(7)
    values = rng.choice(np.array([0.5, 0.25, 0.0, -0.0, -1e-8, 1e-8, 0.75], np.float32), 5000)
    values[:100] = rng.random(100).astype(np.float32)
    ids = np.arange(5000, dtype=np.int64)
    if shuffled:  # not in sample_id order: the general path
        rng.shuffle(ids)
    order = ranking_order(values, ids)
    reference = np.lexsort((ids, -values.astype(np.float64)))
    np.testing.assert_array_equal(ids[order], ids[reference])


# --- the streamed rank stage against the in-memory reference ------------------------------


def _scores_run(root, run_id: str, probs: np.ndarray, labels: np.ndarray, cuts: list[int]):
    """A run holding only what rank reads: scores shards cut at ``cuts`` and a manifest."""
    from testprio.layout import RunLayout
    from testprio.score import _scores_batch

    layout = RunLayout.create(str(root), run_id)
    n = len(probs)
    bounds = [0, *cuts, n]
    for index, (start, stop) in enumerate(zip(bounds, bounds[1:], strict=False)):
        unknown = labels[start:stop] < 0
        batch = pa.RecordBatch.from_arrays(
            [
                pa.array(np.arange(start, stop, dtype=np.int64)),
                pa.array(np.where(unknown, 0, labels[start:stop]), pa.int32(), mask=unknown),
            ],
            names=["sample_id", "label"],
        )
        storage.write_table(
            layout.scores_shard(index),
            pa.Table.from_batches([_scores_batch(batch, probs[start:stop])]),
        )
    shards = [
        {"name": f"shard-{i:05d}.parquet", "rows": b - a}
        for i, (a, b) in enumerate(zip(bounds, bounds[1:], strict=False))
    ]
    storage.write_json(
        layout.data_manifest,
        {"samples": n, "quarantined": 0, "shards": shards, "sample_shape": [4]},
    )
    return layout, [layout.scores_shard(i) for i in range(len(shards))]


@pytest.fixture
def tied_scores():
    """600 samples, K=5, many exact ties (repeated rows), a third of the labels unknown."""
    rng = make_deterministic(11)
    distinct = softmax(rng.normal(0, 2, (40, 5)))
    probs = distinct[rng.integers(0, 40, 600)]
    labels = np.where(rng.random(600) < 1 / 3, -1, rng.integers(0, 5, 600))
    return probs, labels


@pytest.mark.parametrize("metric", sorted(METRICS))
def test_ranking_from_many_small_shards_equals_one_shard(
    tmp_path, tied_scores, metric, monkeypatch
):
    from testprio import rank as rank_module
    from testprio import ranking_file

    # Row groups of 64 rows: the ranking is written in many pieces, top-k spans two.
    monkeypatch.setattr(ranking_file, "RANKING_ROW_GROUP", 64)
    probs, labels = tied_scores
    one, one_uris = _scores_run(tmp_path, "one", probs, labels, [])
    cuts = sorted({*range(7, 600, 37), 300})  # 18 uneven shards, one of them empty
    cuts.insert(5, cuts[4])
    many, many_uris = _scores_run(tmp_path, "many", probs, labels, cuts)
    assert any(storage.read_table(uri).num_rows == 0 for uri in many_uris)

    summaries = [
        rank_module.rank(layout, uris, metric=metric, top_k=100)
        for layout, uris in ((one, one_uris), (many, many_uris))
    ]
    whole, sharded = ranking(one), ranking(many)
    assert sharded.equals(whole, check_metadata=True)
    assert summaries[0] == summaries[1]
    reference = rank_table(
        [storage.read_table(uri, columns=RANK_COLUMNS) for uri in one_uris], metric
    )
    assert whole.equals(reference)
    assert summaries[0]["top"] == reference.slice(0, 100).to_pylist()
    with storage.open_parquet(one.ranking) as parquet:
        assert parquet.num_row_groups == 10  # 600 rows in groups of 64


def test_shards_whose_ids_interleave_rank_like_one_table(tmp_path, tied_scores):
    """Ids that do not ascend across shards take the general (lexsort) path."""
    from testprio.rank import rank

    probs, labels = tied_scores
    layout, uris = _scores_run(tmp_path, "interleaved", probs, labels, [300])
    for uri, ids in zip(uris, (np.arange(0, 600, 2), np.arange(1, 600, 2)), strict=True):
        table = storage.read_table(uri)
        storage.write_table(uri, table.set_column(0, table.schema.field(0), pa.array(ids)))
    rank(layout, uris, metric="margin", top_k=3)
    reference = rank_table(
        [storage.read_table(uri, columns=RANK_COLUMNS) for uri in uris], "margin"
    )
    assert ranking(layout).equals(reference)
    ids = ranking(layout).column("sample_id").to_numpy()
    margins = ranking(layout).column("margin").to_numpy()
    np.testing.assert_array_equal(np.lexsort((ids, -margins.astype(np.float64))), np.arange(600))


def test_counts_in_pieces_equal_one_bincount(monkeypatch):
    from testprio import summary

    monkeypatch.setattr(summary, "COUNT_PIECE", 7)
    groups = make_deterministic(12).integers(0, 9, 100)
    groups[-1] = 12  # beyond the given size, in the last piece only
    np.testing.assert_array_equal(summary._counts(groups, 5), np.bincount(groups, minlength=5))
    hits = groups % 2 == 0
    with np.errstate(invalid="ignore"):  # classes 9..11 are empty: NaN, then None
        expected = np.bincount(groups, weights=hits, minlength=13) / np.bincount(
            groups, minlength=13
        )
    assert summary._grouped_rate(hits, groups, 13) == summary._nan_to_none(expected)


# --- coverage, surprise and instability prioritizers ---------------------------------------

from tests.test_score import (  # noqa: E402
    _direct_activations,
    _folder_table,
    _with_reference,
    hidden_digits,  # noqa: F401 (a fixture)
    run_digits,
)

NEW_METRICS = ("kmnc-cam", "nac-ctm", "tknc-cam", "dsa", "lsa", "instability")


@pytest.fixture(scope="module")
def prioritized_runs(hidden_digits, tmp_path_factory):  # noqa: F811
    """The digits pool (400) scored with every prioritizer in 1, 3 and 5 uneven shards."""
    root = tmp_path_factory.mktemp("prio")
    return {
        size: run_digits(
            hidden_digits, root / f"s{size}", shard_size=size, **_with_reference(hidden_digits)
        )
        for size in (400, 134, 97)
    }


def _rerank(layout, metric):
    from testprio import stages

    uris = [storage.join(layout.scores_dir, n) for n in storage.list_names(layout.scores_dir)]
    stages.rank_scores(layout.uri, uris, metric, 10)
    return ranking(layout), storage.read_json(layout.summary)


def test_sharded_equals_whole_for_every_new_column_and_order(prioritized_runs):
    whole = prioritized_runs[400]
    columns = ["nac", "kmnc", "nbc", "snac", "tknc", "lsa", "dsa", "mdsa", "instability"]
    expected = _folder_table(whole, "scores").select(["sample_id", *columns])
    expected_cells = _folder_table(whole, "cells")
    for size in (134, 97):
        layout = prioritized_runs[size]
        assert len(storage.list_names(layout.scores_dir)) == {134: 3, 97: 5}[size]
        assert _folder_table(layout, "scores").select(["sample_id", *columns]).equals(expected)
        assert _folder_table(layout, "cells").equals(expected_cells)
    for metric in NEW_METRICS:
        reference, summary = _rerank(whole, metric)
        for size in (134, 97):
            sharded, other = _rerank(prioritized_runs[size], metric)
            assert sharded.equals(reference), f"{size}-row shards changed the {metric} ranking"
            assert other["prioritizers"] == summary["prioritizers"]


def test_cam_ranking_equals_cam_order_of_direct_activations(prioritized_runs, hidden_digits):  # noqa: F811
    from testprio import coverage

    x_pool = hidden_digits["splits"]["pool"][0]
    x_train = hidden_digits["splits"]["train"][0]
    layers, _, train_acts = _direct_activations(hidden_digits, x_train)
    _, _, pool_acts = _direct_activations(hidden_digits, x_pool)
    profile = coverage.NeuronProfile(layers).update(train_acts).finish()
    ids = np.arange(len(x_pool))
    for metric, name in (("kmnc", "kmnc"), ("kmnc-cam", "kmnc"), ("nbc-cam", "nbc")):
        scores, covered = coverage.COVERAGE_METRICS[name](pool_acts, profile)
        expected = coverage.cam_order(covered, scores, ids)
        ranked, summary = _rerank(prioritized_runs[97], metric)
        np.testing.assert_array_equal(ranked.column("sample_id").to_numpy(), expected)
        assert (summary["metric"], summary["prioritizer"], summary["order"]) == (
            name,
            metric,
            "cam",
        )
    scores, _ = coverage.COVERAGE_METRICS["nac"](pool_acts, profile)
    ranked, _ = _rerank(prioritized_runs[97], "nac-ctm")
    np.testing.assert_array_equal(
        ranked.column("sample_id").to_numpy(), coverage.ctm_order(scores, ids)
    )


def test_summary_compares_every_prioritizer_by_apfd(prioritized_runs, hidden_digits):  # noqa: F811
    y_pool = hidden_digits["splits"]["pool"][1]
    _, summary = _rerank(prioritized_runs[134], "dsa")
    assert set(summary["prioritizers"]) == {
        "gini", "entropy", "margin", "least_confidence",
        *(f"{m}-{how}" for m in ("nac", "kmnc", "nbc", "snac", "tknc") for how in ("ctm", "cam")),
        "lsa", "dsa", "mdsa", "instability",
    }  # fmt: skip
    for name in ("dsa", "instability", "gini"):
        ranked, _ = _rerank(prioritized_runs[134], name)
        ids = ranked.column("sample_id").to_numpy()
        wrong = y_pool[ids] != ranked.column("predicted").to_numpy()
        assert summary["prioritizers"][name]["apfd"] == apfd(wrong)
    # The ranking's own APFD is the chosen prioritizer's.
    assert summary["labels"]["apfd"] == summary["prioritizers"]["dsa"]["apfd"]
    # Each one's spread, counted from its sorted order, is np.unique's over the pool.
    from testprio.summary import score_spread

    table = ranking(prioritized_runs[134])
    for name, entry in summary["prioritizers"].items():
        expected = score_spread(table.column(entry["column"]).to_numpy())
        assert {key: entry[key] for key in expected} == expected, name
    metamorphic = summary["metamorphic"]
    assert metamorphic["followups"] == 3 and metamorphic["rows"] == 3 * 400
    assert {e["transform"] for e in metamorphic["attribution"]["effects"]} == set(
        metamorphic["transforms"]
    )


def test_rank_refuses_a_prioritizer_the_scores_lack(tmp_path, pool, model):
    from testprio import rank as rank_module

    path, _, _ = pool
    layout = run_stages(model, path, str(tmp_path / "runs"), "plain")
    uris = [storage.join(layout.scores_dir, n) for n in storage.list_names(layout.scores_dir)]
    with pytest.raises(
        TestprioError, match=r"^--metric lsa is not computed in this run; give --train-data"
    ):
        rank_module.rank(layout, uris, metric="lsa")
    with pytest.raises(
        TestprioError, match=r"^--metric instability is not computed .* --metamorphic"
    ):
        rank_module.rank(layout, uris, metric="instability")
    with pytest.raises(TestprioError, match=r"^unknown metric 'wobble'"):
        rank_module.rank(layout, uris, metric="wobble")


def test_cam_orders_past_the_memory_setting_say_so_up_front(prioritized_runs, capsys):
    from testprio import rank as rank_module
    from testprio.log import configure

    layout = prioritized_runs[97]
    uris = [storage.join(layout.scores_dir, n) for n in storage.list_names(layout.scores_dir)]
    available = ["nac", "kmnc", "nbc", "snac", "tknc", "lsa", "dsa", "mdsa", "instability"]
    options = dict(available=available, has_labels=True, memory_mb=512)
    cells = rank_module._cells_of(layout, uris[0], "kmnc")
    pool = 10 * 2**33 // cells  # about 10 GiB of kmnc's packed cells
    note = rank_module.cam_memory_note(layout, uris, metric="kmnc-cam", samples=pool, **options)
    assert note.startswith(
        f"--metric kmnc-cam orders the whole pool as one set-cover problem in memory, and "
        f"{pool:,} samples x {cells:,} covered cells of kmnc need about 10.0 GiB, more than "
        "--rank-memory-mb 512:"
    )
    assert note.endswith("or rank by kmnc-ctm, which orders by the same cells in bounded memory.")
    assert note.count(".") == 2  # one sentence (and the decimal point)
    # A score order with labels still computes every CAM order for its APFD.
    note = rank_module.cam_memory_note(layout, uris, metric="gini", samples=pool, **options)
    assert note.startswith("the APFD of the CAM prioritizers orders the whole pool")
    assert (
        rank_module.cam_memory_note(layout, uris, metric="kmnc-cam", samples=400, **options) is None
    )
    unlabelled = dict(options, has_labels=False)
    assert (
        rank_module.cam_memory_note(layout, uris, metric="gini", samples=pool, **unlabelled) is None
    )
    # rank() says it before it ranks (here of a pool it takes for that big).
    configure()  # log lines to stderr
    capsys.readouterr()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(rank_module, "shard_rows", lambda uris: [pool])
        rank_module.rank(layout, uris, metric="kmnc-cam")
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("testprio WARNING rank: --metric kmnc-cam orders the whole pool")
