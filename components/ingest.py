from typing import List

from kfp import dsl

from components.images import RUNTIME


@dsl.component(base_image=RUNTIME, install_kfp_package=False)
def ingest(run_uri: str, data: str, input_shape: str, shard_size: int) -> List[str]:
    """Split the pool into sample shards; returns their URIs."""
    from testprio.stages import ingest_pool

    return ingest_pool(run_uri, data, input_shape, shard_size)
