from typing import List

from kfp import dsl
from kfp.dsl import Dataset, Output

from components.images import RUNTIME
from testprio.params import describe


@dsl.component(base_image=RUNTIME, install_kfp_package=False)
@describe(
    run_uri="the run folder {root}/{run_id} (the start task's output)",
    pool=(
        "the pool's Dataset artifact: a pointer to data/manifest.json in the run folder "
        "(metadata: uri, run_uri, shards)"
    ),
)
def ingest(
    run_uri: str,
    data: str,
    pool: Output[Dataset],
    input_shape: str = "",
    shard_size: int = 10_000,
    preset: str = "",
    ops: str = "",
    custom_ops: str = "",
    on_bad_sample: str = "quarantine",
    value_range: str = "",
    tensor_column: str = "x",
    label_column: str = "",
    max_data_gb: float = 20.0,
    max_image_pixels: int = 40_000_000,
    custom_op_cpu_seconds: float = 120.0,
    custom_op_memory_mb: int = 2048,
    custom_op_batch_timeout_s: float = 300.0,
    allow_private_urls: bool = False,
    download_timeout_s: float = 14400.0,
    download_min_bytes_per_s: float = 16384.0,
) -> List[str]:
    """Read, check and preprocess the pool into sample shards; returns their URIs."""
    from testprio.layout import RunLayout
    from testprio.stages import ingest_pool, publish_artifact

    shards = ingest_pool(
        run_uri,
        data,
        input_shape=input_shape,
        shard_size=shard_size,
        preset=preset,
        ops=ops,
        custom_ops=custom_ops,
        on_bad_sample=on_bad_sample,
        value_range=value_range,
        tensor_column=tensor_column,
        label_column=label_column,
        max_data_gb=max_data_gb,
        max_image_pixels=max_image_pixels,
        custom_op_cpu_seconds=custom_op_cpu_seconds,
        custom_op_memory_mb=custom_op_memory_mb,
        custom_op_batch_timeout_s=custom_op_batch_timeout_s,
        allow_private_urls=allow_private_urls,
        download_timeout_s=download_timeout_s,
        download_min_bytes_per_s=download_min_bytes_per_s,
    )
    publish_artifact(pool, run_uri, RunLayout(run_uri).data_manifest, shards=len(shards))
    return shards
