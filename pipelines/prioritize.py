"""The ``prioritize`` pipeline: start -> ingest -> convert -> reference -> score (fan-out per
shard) -> rank -> report. The reference task does nothing unless ``train_data`` is given.

Cluster settings (GPU, node selector, resources, fan-out width, retries, caching) are fixed
when the pipeline is built and compiled: ``components.cluster`` (``ClusterSettings``,
``configure_task``), which users' own pipelines call too. KFP's local runner ignores the
placement settings but honours retries, and starts a Python process per task, so local runs
use ``LOCAL_SETTINGS``: no retries, and the shards shared out among two score tasks
(``score_shards``) instead of one task per shard.
"""

# No `from __future__ import annotations`: KFP reads the pipeline's annotations as types.
from typing import Optional

from kfp import compiler, dsl

from components.cluster import (
    DEFAULT_TIMEOUTS,
    LOCAL_SETTINGS,
    TASK_POD_LABELS,
    ClusterSettings,
    TaskPolicy,
    configure_task,
    task_policies,
)
from components.convert import convert_onnx, convert_paddle, convert_pytorch, convert_tensorflow
from components.ingest import ingest
from components.rank import rank
from components.reference import reference
from components.report import report
from components.score import score, score_shards
from components.start import start
from testprio.params import describe

# The settings the pipeline is built with stay importable from here.
__all__ = [
    "CONVERT_COMPONENTS",
    "DEFAULT_TIMEOUTS",
    "LOCAL_SETTINGS",
    "TASK_POD_LABELS",
    "ClusterSettings",
    "TaskPolicy",
    "build_pipeline",
    "compile_pipeline",
    "pipeline_name",
    "prioritize",
    "task_policies",
]

PIPELINE_NAME = "prioritize"
# One convert component (and image) per framework, chosen when the pipeline is built:
# KFP's dsl.OneOf, which could choose at run time, does not run in the local runner.
CONVERT_COMPONENTS = {
    "onnx": convert_onnx,
    "pytorch": convert_pytorch,
    "tensorflow": convert_tensorflow,
    "paddle": convert_paddle,
}


def pipeline_name(framework: str = "onnx") -> str:
    """``prioritize`` for ONNX models, ``prioritize-<framework>`` for the others."""
    return PIPELINE_NAME if framework == "onnx" else f"{PIPELINE_NAME}-{framework}"


def build_pipeline(settings: Optional[ClusterSettings] = None, framework: str = "onnx"):
    """Return the ``prioritize`` pipeline function built with ``settings`` whose convert
    task converts ``framework`` models (one of ``CONVERT_COMPONENTS``)."""
    settings = settings or ClusterSettings()
    if framework not in CONVERT_COMPONENTS:
        raise ValueError(f"--framework {framework} is not one of {', '.join(CONVERT_COMPONENTS)}.")
    convert = CONVERT_COMPONENTS[framework]
    converter = framework  # the pipeline's own `framework` parameter shadows it below

    @dsl.pipeline(
        name=pipeline_name(framework),
        description="Rank a pool of unlabeled inputs by model uncertainty (DeepGini & co).",
    )
    @describe()  # every parameter's description from testprio.params
    def prioritize(
        model: str,
        data: str,
        root: str,
        run_id: str = "",
        metric: str = "gini",
        framework: str = "auto",
        output_kind: str = "auto",
        output_name: str = "",
        input_shape: str = "",
        shard_size: int = 10_000,
        batch_size: int = 256,
        gpu_batch_size: int = 1024,
        top_k: int = 10,
        rank_memory_mb: int = 512,
        parity_tolerance: float = 1e-3,  # testprio.convert.DEFAULT_PARITY_TOLERANCE
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
        """Rank a pool of unlabeled inputs by model uncertainty; returns the ranking's URI."""
        ingest_arguments = dict(
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
        start_task = start(
            model=model,
            data=data,
            root=root,
            run_id=run_id,
            job_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
            metric=metric,
            framework=framework,
            output_kind=output_kind,
            output_name=output_name,
            input_shape=input_shape,
            shard_size=shard_size,
            batch_size=batch_size,
            top_k=top_k,
            rank_memory_mb=rank_memory_mb,
            parity_tolerance=parity_tolerance,
            strict_model_checks=strict_model_checks,
            train_data=train_data,
            layers=layers,
            surprise_reduce=surprise_reduce,
            metamorphic=metamorphic,
            followups=followups,
            **ingest_arguments,
        ).set_display_name("start")
        configure_task(start_task, "start", settings=settings)
        run_uri = start_task.output

        ingest_task = ingest(
            run_uri=run_uri,
            data=data,
            input_shape=input_shape,
            shard_size=shard_size,
            **ingest_arguments,
        ).set_display_name("ingest")
        configure_task(ingest_task, "ingest", settings=settings)

        convert_task = convert(
            run_uri=run_uri,  # the model's artifact: convert_task.outputs["onnx_model"]
            model=model,
            framework=framework,
            output_kind=output_kind,
            output_name=output_name,
            input_shape=input_shape,
            parity_tolerance=parity_tolerance,
            strict_model_checks=strict_model_checks,
            converter=converter,
        ).set_display_name("convert")
        convert_task.after(ingest_task)  # it checks the model against pool samples
        configure_task(convert_task, "convert", settings=settings)

        # Always runs, and without train_data returns at once and records no stage: the
        # score tasks wait on one task either way (no dsl.If/dsl.OneOf branches to join).
        reference_task = reference(
            run_uri=run_uri,
            input_shape=input_shape,
            shard_size=shard_size,
            train_data=train_data,
            layers=layers,
            surprise_reduce=surprise_reduce,
            **ingest_arguments,
        ).set_display_name("reference")
        reference_task.after(convert_task)  # it reads the converted model
        configure_task(reference_task, "reference", settings=settings)

        score_arguments = dict(
            pool=ingest_task.outputs["pool"],
            batch_size=batch_size,
            gpu_batch_size=gpu_batch_size,
            device=settings.device,
            metamorphic=metamorphic,
            followups=followups,
        )
        if settings.score_groups:  # local runs: a few tasks, each scoring a share of shards
            groups = list(range(settings.score_groups))
            with dsl.ParallelFor(groups, parallelism=settings.parallelism) as group:
                score_task = score_shards(
                    group=group, groups=settings.score_groups, **score_arguments
                )
        else:
            shards = ingest_task.outputs["Output"]
            with dsl.ParallelFor(shards, parallelism=settings.parallelism) as shard:
                # The loop item, artifacts and pipeline parameters only (components/score.py).
                score_task = score(shard=shard, **score_arguments)
        score_task.set_display_name("score").after(reference_task)  # which is after convert
        configure_task(score_task, "score", settings=settings)

        # The model and pool artifacts in: the Kubeflow UI then shows the ranking's lineage.
        rank_task = rank(
            run_uri=run_uri,
            onnx_model=convert_task.outputs["onnx_model"],
            pool=ingest_task.outputs["pool"],
            scores=dsl.Collected(score_task.outputs["scores"]),
            metric=metric,
            top_k=top_k,
            rank_memory_mb=rank_memory_mb,
        ).set_display_name("rank")
        configure_task(rank_task, "rank", settings=settings)

        # Last: writes report/, hands the Kubeflow UI its HTML, Markdown and metrics
        # outputs, and rewrites run.json as succeeded.
        report_task = report(
            run_uri=run_uri, ranking=rank_task.outputs["ranking"], top_k=top_k
        ).set_display_name("report")
        configure_task(report_task, "report", settings=settings)
        return rank_task.outputs["Output"]

    return prioritize


prioritize = build_pipeline()


def compile_pipeline(
    package_path: str, settings: Optional[ClusterSettings] = None, framework: str = "onnx"
) -> str:
    """Write the KFP YAML of the pipeline for ``framework`` models to ``package_path``."""
    compiler.Compiler().compile(build_pipeline(settings, framework), package_path=package_path)
    return package_path
