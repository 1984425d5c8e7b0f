"""Ranking: sharded equals whole, planted cases, ties, top-k prefix, summary figures, APFD."""

import numpy as np
import pyarrow as pa
import pytest

from testprio import storage
from testprio.errors import TestprioError
from testprio.metrics import METRICS, softmax
from testprio.rank import rank_table, ranking_order
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
