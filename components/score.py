from kfp import dsl

from components.images import RUNTIME_GPU


@dsl.component(base_image=RUNTIME_GPU)
def score(shard: str, batch_size: int) -> str:
    """Score one sample shard with ONNX Runtime; returns the URI of its scores file.

    The run folder is read off the shard's URI ({run}/data/shard-NNNNN.parquet): KFP's
    local runner hands every upstream task output inside a ParallelFor the loop item, so
    the loop body takes nothing but the item and pipeline parameters.
    """
    from testprio.stages import score_shard

    return score_shard(shard, batch_size)
