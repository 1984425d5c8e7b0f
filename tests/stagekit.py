"""Run the pipeline's stages in-process (no KFP), as the components would call them."""

from __future__ import annotations

from testprio import stages, storage
from testprio.cli import RUN_DEFAULTS
from testprio.layout import RunLayout


def parameters(model: str, data: str, root: str, run_id: str, **overrides) -> dict:
    values = {
        **RUN_DEFAULTS,
        "model": str(model),
        "data": str(data),
        "root": root,
        "run_id": run_id,
        "job_name": "",
        "batch_size": 64,  # several inference batches even in small test pools
    }
    values.update(overrides)
    return values


def run_stages(model, data, root: str, run_id: str = "run", **overrides) -> RunLayout:
    """start -> ingest -> convert -> score every shard -> rank -> report; returns the layout."""
    p = parameters(model, data, root, run_id, **overrides)
    run_uri = stages.start_run(p["root"], p["run_id"], p)
    shards = stages.ingest_pool(
        run_uri, p["data"], **{name: p[name] for name in stages.INGEST_PARAMETERS}
    )
    stages.convert_model(
        run_uri,
        p["model"],
        p["framework"],
        p["output_kind"],
        p["output_name"],
        p["input_shape"],
        p["parity_tolerance"],
        p["strict_model_checks"],
    )
    scores = [
        stages.score_shard(
            shard, p["batch_size"], metamorphic=p["metamorphic"], followups=p["followups"]
        )
        for shard in shards
    ]
    stages.rank_scores(run_uri, scores, p["metric"], p["top_k"])
    stages.report_run(run_uri, p["top_k"])
    return RunLayout(run_uri)


def ranking(layout: RunLayout):
    return storage.read_table(layout.ranking)
