from kfp import dsl

from components.images import RUNTIME
from testprio.params import describe


@dsl.component(base_image=RUNTIME, install_kfp_package=False)
@describe(run_uri="the run folder {root}/{run_id} (the start task's output)")
def reference(
    run_uri: str,
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
    train_data: str = "",
    layers: str = "",
    surprise_reduce: str = "mean",
) -> str:
    """Without train_data, nothing. Else ingest the reference pool like the pool and write
    the coverage profile and surprise reference of the model's hidden layers into the run's
    reference/ folder; returns the URI of reference/profile.json."""
    from testprio.stages import fit_reference

    return fit_reference(
        run_uri,
        train_data,
        layers,
        surprise_reduce,
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
