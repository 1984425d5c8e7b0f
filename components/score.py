from kfp import dsl
from kfp.dsl import Dataset, Output

from components.images import RUNTIME_GPU
from testprio.params import describe


@dsl.component(base_image=RUNTIME_GPU, install_kfp_package=False)
@describe(
    shard="URI of one sample shard, {run}/data/shard-NNNNN.parquet (the ParallelFor item)",
    scores="the shard's scores, a Dataset artifact pointing at {run}/scores/shard-NNNNN.parquet",
    device="ONNX Runtime device: auto, cuda or cpu (fixed at compile time: cuda for tasks "
    "given a GPU)",
)
def score(
    shard: str,
    scores: Output[Dataset],
    batch_size: int = 256,
    gpu_batch_size: int = 1024,
    device: str = "auto",
    metamorphic: str = "",
    followups: int = 10,
) -> None:
    """Score one sample shard with ONNX Runtime into the run's scores/ folder.

    The run folder is read off the shard's URI ({run}/data/shard-NNNNN.parquet): KFP's
    local runner hands every upstream task output inside a ParallelFor the loop item, so
    the loop body takes nothing but the item and pipeline parameters.
    """
    from testprio.layout import RunLayout
    from testprio.stages import publish_artifact, score_shard

    uri = score_shard(shard, batch_size, gpu_batch_size, device, metamorphic, followups)
    publish_artifact(scores, RunLayout.of_data_shard(shard).uri, uri, shard=shard)
