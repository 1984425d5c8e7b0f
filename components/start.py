from kfp import dsl

from components.images import RUNTIME
from testprio.params import describe


@dsl.component(base_image=RUNTIME, install_kfp_package=False)
@describe(
    job_name="the KFP job name ({{$.pipeline_job_name}} in the pipeline): the run folder's "
    "name when run_id is empty",
)
def start(
    model: str,
    data: str,
    root: str,
    run_id: str = "",
    job_name: str = "",
    metric: str = "gini",
    framework: str = "auto",
    output_kind: str = "auto",
    output_name: str = "",
    input_shape: str = "",
    shard_size: int = 10_000,
    batch_size: int = 256,
    top_k: int = 10,
    rank_memory_mb: int = 512,
    parity_tolerance: float = 1e-3,
    strict_model_checks: bool = False,
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
    metamorphic: str = "",
    followups: int = 10,
) -> str:
    """Check every parameter and write run.json (status running); returns the run URI."""
    parameters = dict(locals())  # first line: every argument, nothing else
    from testprio.stages import start_run

    return start_run(root, run_id or job_name, parameters)
