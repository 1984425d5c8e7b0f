from kfp import dsl

from components.images import RUNTIME_GPU


@dsl.component(base_image=RUNTIME_GPU, install_kfp_package=False)
def score(shard: str, batch_size: int, gpu_batch_size: int, device: str) -> str:
    """Score one sample shard with ONNX Runtime; returns the URI of its scores file.

    ``device`` is fixed at compile time (cuda for tasks given a GPU); on CUDA the batches
    hold ``gpu_batch_size`` samples (0: ``batch_size``).

    The run folder is read off the shard's URI ({run}/data/shard-NNNNN.parquet): KFP's
    local runner hands every upstream task output inside a ParallelFor the loop item, so
    the loop body takes nothing but the item and pipeline parameters.
    """
    from testprio.stages import score_shard

    return score_shard(shard, batch_size, gpu_batch_size, device)
