"""The score stage: ``score``, one task per sample shard (the pipeline's fan-out, one pod
each on a cluster), and ``score_shards``, one task for a share of the shards (local runs,
where each task is a new Python process that costs more than a small shard)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from components.images import RUNTIME_GPU
from testprio.params import describe

_POOL = (
    "the pool (the ingest task's Dataset artifact): gives the run folder, and the "
    "Kubeflow UI the lineage pool -> scores"
)
_DEVICE = (
    "ONNX Runtime device: auto, cuda or cpu (fixed at compile time: cuda for tasks given a GPU)"
)


@dsl.component(base_image=RUNTIME_GPU, install_kfp_package=False)
@describe(
    shard="URI of one sample shard, {run}/data/shard-NNNNN.parquet (the ParallelFor item: a "
    "string, since a KFP component cannot output a list of artifacts to fan out over)",
    pool=_POOL,
    scores="the shard's scores, a Dataset artifact pointing at {run}/scores/shard-NNNNN.parquet",
    device=_DEVICE,
)
def score(
    shard: str,
    pool: Input[Dataset],
    scores: Output[Dataset],
    batch_size: int = 256,
    gpu_batch_size: int = 1024,
    device: str = "auto",
    metamorphic: str = "",
    followups: int = 10,
) -> None:
    """Score one sample shard with ONNX Runtime into the run's scores/ folder.

    Inside a ParallelFor, KFP's local runner hands every upstream task's output parameter
    the loop item instead (artifacts arrive intact): the loop body takes the item, the
    pool's artifact and pipeline parameters, nothing else.
    """
    from testprio.stages import publish_artifact, score_shard

    uri = score_shard(shard, batch_size, gpu_batch_size, device, metamorphic, followups)
    publish_artifact(scores, pool.metadata["run_uri"], uri, shard=shard)


@dsl.component(base_image=RUNTIME_GPU, install_kfp_package=False)
@describe(
    group="which share this task scores: the pool's shards group, group + groups, ... (the "
    "ParallelFor item)",
    groups="how many tasks share the pool's shards",
    pool=_POOL,
    scores="the share's scores, a Dataset artifact pointing at {run}/scores/ (metadata: uris, "
    "one per shard scored)",
    device=_DEVICE,
)
def score_shards(
    group: int,
    groups: int,
    pool: Input[Dataset],
    scores: Output[Dataset],
    batch_size: int = 256,
    gpu_batch_size: int = 1024,
    device: str = "auto",
    metamorphic: str = "",
    followups: int = 10,
) -> None:
    """Score a share of the pool's sample shards one after another, each as ``score`` does."""
    from testprio.layout import RunLayout
    from testprio.stages import publish_artifact
    from testprio.stages import score_shards as score_share

    run_uri = pool.metadata["run_uri"]
    uris = score_share(
        run_uri, group, groups, batch_size, gpu_batch_size, device, metamorphic, followups
    )
    publish_artifact(scores, run_uri, RunLayout(run_uri).scores_dir, uris=uris)
