from typing import List

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components.images import RUNTIME
from testprio.params import describe


@dsl.component(base_image=RUNTIME, install_kfp_package=False)
@describe(
    run_uri="the run folder {root}/{run_id} (the start task's output)",
    onnx_model="the converted model (the convert task's Model artifact)",
    pool="the pool's shards (the ingest task's Dataset artifact)",
    scores="every shard's scores (the score tasks' Dataset artifacts, collected)",
    ranking="the ranking, a Dataset artifact pointing at {run}/ranking.parquet",
)
def rank(
    run_uri: str,
    onnx_model: Input[Model],
    pool: Input[Dataset],
    scores: Input[List[Dataset]],
    ranking: Output[Dataset],
    metric: str = "gini",
    top_k: int = 10,
    rank_memory_mb: int = 512,
) -> str:
    """Merge every shard's scores into ranking.parquet and summary.json; returns its URI.

    onnx_model and pool are read from the run folder; as inputs they give the ranking its
    lineage in the Kubeflow UI.
    """
    from testprio.stages import artifact_uris, publish_artifact, rank_scores

    uris = artifact_uris(scores)
    uri = rank_scores(run_uri, uris, metric, top_k, rank_memory_mb)
    publish_artifact(ranking, run_uri, uri, metric=metric, shards=len(uris))
    return uri
