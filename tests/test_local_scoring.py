"""A local run's score tasks (``score_shards``): the pool's shards shared out among a few
tasks, each shard scored once, and the ranking the same as with one task per shard."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from testprio import stages, storage
from testprio.layout import RunLayout
from tests.conftest import linear_classifier, make_deterministic, write_pool
from tests.stagekit import parameters


def _ingested(tmp_path, run_id: str) -> tuple[str, dict]:
    """A run folder after start, ingest and convert: 90 samples in 5 shards of 20 or fewer."""
    rng = make_deterministic(3)
    model = linear_classifier(tmp_path / "model.onnx")
    data = write_pool(tmp_path / "pool.npz", rng.random((90, 1, 8, 8), dtype=np.float32))
    p = parameters(model, data, str(tmp_path / "runs"), run_id, shard_size=20)
    run_uri = stages.start_run(p["root"], p["run_id"], p)
    stages.ingest_pool(run_uri, p["data"], **{name: p[name] for name in stages.INGEST_PARAMETERS})
    stages.convert_model(run_uri, p["model"], "auto", "auto", "", "", 1e-3, False)
    return run_uri, p


def test_shared_out_shards_are_each_scored_once_and_rank_as_one_task_per_shard(tmp_path):
    shared, p = _ingested(tmp_path, "shared")
    groups = [stages.score_shards(shared, group, 2, p["batch_size"]) for group in range(2)]
    layout = RunLayout(shared)
    assert groups == [
        [layout.scores_shard(0), layout.scores_shard(2), layout.scores_shard(4)],
        [layout.scores_shard(1), layout.scores_shard(3)],
    ]
    # What rank reads from the two tasks' artifacts: every shard's scores, once.
    artifacts = [SimpleNamespace(metadata={"uri": layout.scores_dir, "uris": g}) for g in groups]
    uris = stages.artifact_uris(artifacts)
    assert sorted(uris) == [layout.scores_shard(i) for i in range(5)]
    stages.rank_scores(shared, uris, p["metric"], p["top_k"])

    single, _ = _ingested(tmp_path, "single")
    single_layout = RunLayout(single)
    per_shard = [stages.score_shard(single_layout.data_shard(i), p["batch_size"]) for i in range(5)]
    stages.rank_scores(single, per_shard, p["metric"], p["top_k"])
    assert storage.read_table(layout.ranking).equals(storage.read_table(single_layout.ranking))
    # Each shard is a stage of its own (stages/, folded into run.json by the report task).
    recorded = set(storage.list_names(layout.stages_dir))
    assert {f"score-shard-{i:05d}.json" for i in range(5)} <= recorded


def test_a_task_with_no_shard_left_scores_nothing(tmp_path):
    run_uri, p = _ingested(tmp_path, "few")
    assert stages.score_shards(run_uri, 7, 8, p["batch_size"]) == []
