"""The rank stage in bounded memory (DuckDB's out-of-core sort) gives today's bytes.

Today's in-memory ranking (``rank_memory.rank_in_memory``: every column in memory, the
order from NumPy, ``build_summary`` over whole arrays) is the reference: the bounded path,
made to spill with a tiny memory limit, must write the same ``ranking.parquet`` and
``summary.json`` byte for byte, on uneven shards with ties, -0.0 scores and unknown labels.
"""

import io
import json
import os
import sys
import tempfile

import numpy as np
import pyarrow as pa
import pytest

from testprio import rank, rank_bounded, rank_memory, storage
from testprio.errors import TestprioError
from testprio.layout import RunLayout
from testprio.metrics import METRICS, softmax
from testprio.summary import PairwiseSum, SummaryStream, build_summary
from tests.conftest import make_deterministic
from tests.test_rank import _scores_run


def _pool(n: int, k: int = 6, seed: int = 21):
    """Probabilities with exact ties (repeated rows) and one-hot rows (entropy -0.0), labels
    unknown for about a third and sometimes past the model's classes."""
    rng = make_deterministic(seed)
    distinct = softmax(rng.normal(0, 2, (max(8, n // 3), k)))
    probs = distinct[rng.integers(0, len(distinct), n)]
    probs[rng.random(n) < 0.1] = np.eye(k)[0]
    labels = np.where(rng.random(n) < 1 / 3, -1, rng.integers(0, k + 1, n))
    return probs, labels


def _uneven_cuts(n: int, shards: int, seed: int) -> list[int]:
    cuts = sorted(
        int(c) for c in make_deterministic(seed).choice(np.arange(1, n), shards - 2, replace=False)
    )
    return [*cuts[:3], cuts[3], *cuts[3:]]  # one empty shard too


def _in_memory(layout: RunLayout, uris: list[str], metric: str) -> None:
    """Today's rank: rank() with its in-memory path (which it keeps for CAM orders) for any
    prioritizer."""

    def in_memory(*args, memory_mb, samples, **kwargs):
        return rank_memory.rank_in_memory(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(rank, "rank_bounded", in_memory)
        rank.rank(layout, uris, metric=metric, top_k=10, memory_mb=256)


@pytest.fixture
def spill(monkeypatch, tmp_path):
    """DuckDB gets 16 MiB and one thread, so a few hundred thousand rows spill; records the
    scratch folder's DuckDB files as the sorted rows start to come out."""
    seen = {}
    monkeypatch.setattr(rank_bounded, "duckdb_memory_mb", lambda memory_mb: 16)
    monkeypatch.setattr(rank_bounded, "MAX_THREADS", 1)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    os.makedirs(tmp_path / "tmp")
    stream = rank_bounded._summary_stream

    def first_rows(feed, column, num_classes):
        spilled = os.path.join(os.path.dirname(feed.others_path), "duckdb")
        entries = os.scandir(spilled) if os.path.isdir(spilled) else []
        seen["spilled"] = sum(entry.stat().st_size for entry in entries)
        return stream(feed, column, num_classes)

    monkeypatch.setattr(rank_bounded, "_summary_stream", first_rows)
    return seen


@pytest.mark.parametrize("metric", ["gini", "entropy", "margin"])
def test_bounded_rank_writes_the_in_memory_bytes(root, tmp_path, spill, metric):
    probs, labels = _pool(300_000)
    cuts = _uneven_cuts(len(probs), 9, seed=5)
    today, today_uris = _scores_run(root, "today", probs, labels, cuts)
    _in_memory(today, today_uris, metric)
    bounded, uris = _scores_run(root, "bounded", probs, labels, cuts)
    rank.rank(bounded, uris, metric=metric, top_k=10, memory_mb=256)

    assert spill["spilled"] > 0, "the sort did not spill: the test would not test it"
    assert storage.read_bytes(bounded.ranking) == storage.read_bytes(today.ranking)
    assert storage.read_bytes(bounded.summary) == storage.read_bytes(today.summary)
    summary = storage.read_json(bounded.summary)
    assert set(summary["prioritizers"]) == set(METRICS)
    assert os.listdir(tmp_path / "tmp") == []  # scratch removed


def test_bounded_rank_of_a_surprise_like_column_with_infinities(tmp_path, spill):
    """A non-class score column (its own finite range, infinite values in the last bin)."""
    from testprio.score import _scores_batch, scores_schema

    probs, labels = _pool(50_000, seed=3)
    lsa = make_deterministic(4).normal(0, 2, len(probs)).astype(np.float32)
    lsa[::97] = np.inf
    lsa[::89] = -0.0
    runs = []
    for run_id in ("today", "bounded"):
        layout, uris = _scores_run(tmp_path / "runs", run_id, probs, labels, [17_000, 30_000])
        for uri in uris:
            table = storage.read_table(uri)
            ids = table.column("sample_id").to_numpy()
            batch = pa.RecordBatch.from_arrays(
                [table.column("sample_id").chunk(0), table.column("label").chunk(0)],
                names=["sample_id", "label"],
            )
            schema = scores_schema(["lsa"])
            out = _scores_batch(batch, probs[ids], {"lsa": lsa[ids]}, schema=schema)
            storage.write_table(uri, pa.Table.from_batches([out]))
        runs.append((layout, uris))
    _in_memory(*runs[0], "lsa")
    rank.rank(*runs[1], metric="lsa", top_k=10, memory_mb=256)
    today, bounded = runs[0][0], runs[1][0]
    assert storage.read_bytes(bounded.ranking) == storage.read_bytes(today.ranking)
    assert storage.read_bytes(bounded.summary) == storage.read_bytes(today.summary)
    assert storage.read_json(bounded.summary)["prioritizers"]["lsa"]["apfd"] is not None


def test_scratch_is_removed_and_nothing_published_when_a_shard_breaks(tmp_path, spill):
    probs, labels = _pool(40_000)
    layout, uris = _scores_run(tmp_path / "runs", "broken", probs, labels, [10_000, 20_000])
    storage.write_bytes(uris[2], b"PAR1 not a parquet file")
    with pytest.raises(TestprioError, match=r"shard-00002\.parquet is not a readable Parquet"):
        rank.rank(layout, uris, metric="gini", memory_mb=256)
    assert os.listdir(tmp_path / "tmp") == []
    assert not storage.exists(layout.ranking) and not storage.exists(layout.summary)


def test_the_next_rank_removes_the_scratch_of_a_killed_one(tmp_path, spill):
    from tests.test_scratch import holding_scratch

    tmp = str(tmp_path / "tmp")
    killed = holding_scratch(tmp, "rank")
    folder = killed.stdout.readline().strip()
    killed.kill()  # SIGKILL: no finally block runs
    killed.wait()
    assert os.path.isdir(folder)
    probs, labels = _pool(20_000)
    layout, uris = _scores_run(tmp_path / "runs", "after", probs, labels, [10_000])
    rank.rank(layout, uris, metric="gini", memory_mb=256)
    assert os.listdir(tmp) == []  # the killed rank's scratch, owner file and all, is gone


def test_a_long_rank_logs_its_progress(tmp_path, spill, monkeypatch):
    from testprio import log

    log.configure()
    out = io.StringIO()
    monkeypatch.setattr(sys, "stderr", out)
    monkeypatch.setattr(log, "PROGRESS_SECONDS", 0.0)  # every batch
    probs, labels = _pool(150_000)
    layout, uris = _scores_run(tmp_path / "runs", "long", probs, labels, [70_000])
    rank.rank(layout, uris, metric="gini", memory_mb=256)
    lines = out.getvalue().splitlines()
    read = [line for line in lines if "rank: read and sorted" in line]
    wrote = [line for line in lines if "rank: wrote" in line]
    assert len(read) >= 3 and read[-1].endswith("rank: read and sorted 150,000/150,000 scores")
    assert len(wrote) >= 3 and wrote[-1].endswith("rank: wrote 150,000/150,000 ranked rows")
    assert any("rank: APFD and spread of entropy" in line for line in lines)


def test_running_out_of_memory_is_one_sentence_and_leaves_no_scratch(tmp_path, spill, monkeypatch):
    monkeypatch.setattr(rank_bounded, "duckdb_memory_mb", lambda memory_mb: 1)
    probs, labels = _pool(200_000)
    layout, uris = _scores_run(tmp_path / "runs", "tight", probs, labels, [100_000])
    with pytest.raises(TestprioError, match=r"^the rank stage ran out of its memory .* raise "):
        rank.rank(layout, uris, metric="gini", memory_mb=256)
    assert os.listdir(tmp_path / "tmp") == []
    assert not storage.exists(layout.ranking)


def test_the_memory_setting_has_a_floor():
    with pytest.raises(TestprioError, match=r"^--rank-memory-mb 100 is too little .* at least 256"):
        rank.check_memory(100)
    assert rank.check_memory(512) == 512


def test_duckdb_gets_the_setting_less_what_the_process_holds():
    held = rank_bounded._resident_mb()
    assert held > 0
    limit = rank_bounded.duckdb_memory_mb(2048)
    assert 2048 - held - rank_bounded.WORKING_MB - 2 <= limit <= 2048 - rank_bounded.WORKING_MB
    assert rank_bounded.duckdb_memory_mb(1) == rank_bounded.DUCKDB_MINIMUM_MB


# --- the summary from pieces ----------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pairwise_sum_in_pieces_is_numpys_sum(dtype):
    """The one assumption about NumPy: a contiguous sum splits in halves (the first a
    multiple of 8 long) down to blocks, so any node summed alone gives the same bits."""
    rng = make_deterministic(8)
    for count in (1, 7, 128, 129, 1000, 65_537, 300_001, 1_234_567):
        values = (rng.random(count) ** 3).astype(dtype)
        for leaf in (128, 4096, 2**16):
            total = PairwiseSum(count, dtype, leaf=leaf)
            cuts = np.sort(rng.integers(0, count + 1, 5))
            for a, b in zip([0, *cuts], [*cuts, count], strict=True):
                total.add(values[a:b])
            assert total.total() == values.sum(), (count, leaf)
            assert total.mean() == values.mean(), (count, leaf)


def test_pairwise_sum_refuses_the_wrong_count_or_type():
    total = PairwiseSum(3, np.float32)
    with pytest.raises(TypeError, match="float32 given float64"):
        total.add(np.zeros(2))
    total.add(np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="holds 0 blocks of 3"):
        total.total()
    with pytest.raises(ValueError, match="more than the 3 values"):
        total.add(np.zeros(2, np.float32))


@pytest.mark.parametrize("metric", ["gini", "least_confidence", "dsa"])
def test_summary_in_pieces_equals_build_summary(metric):
    from testprio.metrics import score_probabilities

    rng = make_deterministic(9)
    for n in (0, 1, 5_000, 150_001):
        probs, labels = _pool(n, k=5, seed=int(rng.integers(1000))) if n else _pool(0)
        scores = score_probabilities(probs) if n else {m: np.zeros(0, np.float32) for m in METRICS}
        ranked = {name: scores[name] for name in METRICS}
        ranked["predicted"] = (scores["predicted"] if n else np.zeros(0, np.int32)).astype(np.intp)
        ranked["label"] = labels.astype(np.int32)
        extra = rng.normal(0, 3, n).astype(np.float32)
        extra[::50] = np.inf
        if metric == "dsa":
            ranked["dsa"] = extra
        reference = build_summary(
            ranked, metric=metric, num_classes=5, samples_in=n, quarantined=1, top=[]
        )
        finite = extra[np.isfinite(extra)].astype(np.float64)
        span = (
            (float(finite.min()), float(finite.max()), len(finite))
            if len(finite)
            else (0.0, 0.0, 0)
        )
        stream = SummaryStream(
            metric=metric,
            num_classes=5,
            samples=n,
            metric_range=span if metric == "dsa" else None,
        )
        cuts = np.sort(rng.integers(0, n + 1, 6))
        for a, b in zip([0, *cuts], [*cuts, n], strict=True):
            stream.add({name: values[a:b] for name, values in ranked.items()})
        streamed = stream.summary(samples_in=n, quarantined=1, top=[])
        assert json.dumps(streamed) == json.dumps(reference), n


def test_the_memory_setting_is_checked_when_the_run_starts(tmp_path):
    from testprio import cli, stages
    from tests.conftest import linear_classifier

    model = linear_classifier(tmp_path / "model.onnx")
    parameters = {**cli.RUN_DEFAULTS, "model": str(model), "data": "pool.npz", "root": "r"}
    assert parameters["rank_memory_mb"] == rank.DEFAULT_MEMORY_MB == 512
    with pytest.raises(TestprioError, match=r"^--rank-memory-mb 200 is too little"):
        stages.validate_parameters({**parameters, "rank_memory_mb": 200})
