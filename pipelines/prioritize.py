"""The ``prioritize`` pipeline: start -> ingest -> convert -> score (fan-out per shard) -> rank.

Cluster settings (GPU, node selector, resources, fan-out width) are fixed when the pipeline
is built and compiled; they have no effect in KFP's local runner.
"""

# No `from __future__ import annotations`: KFP reads the pipeline's annotations as types.
from dataclasses import dataclass
from typing import Optional

from kfp import compiler, dsl, kubernetes

from components.convert import convert
from components.ingest import ingest
from components.rank import rank
from components.score import score
from components.start import start

PIPELINE_NAME = "prioritize"


@dataclass(frozen=True)
class ClusterSettings:
    """Where and how big each task runs. Defaults suit a GKE cluster with a T4 node pool."""

    gpu: bool = True
    accelerator_type: str = "nvidia.com/gpu"
    gpu_count: int = 1
    node_selector: tuple[tuple[str, str], ...] = (
        ("cloud.google.com/gke-accelerator", "nvidia-tesla-t4"),
    )
    gpu_toleration_key: str = "nvidia.com/gpu"
    score_cpu: str = "4"
    score_memory: str = "16G"
    cpu: str = "1"
    memory: str = "4G"
    parallelism: int = 8

    def __post_init__(self) -> None:
        if self.parallelism < 1:
            raise ValueError(f"--parallelism {self.parallelism} must be at least 1.")
        if self.gpu and self.gpu_count < 1:
            raise ValueError(f"--gpu-count {self.gpu_count} must be at least 1.")


def _resources(task: dsl.PipelineTask, cpu: str, memory: str) -> None:
    task.set_cpu_request(cpu).set_memory_request(memory)
    task.set_memory_limit(memory)


def _place_on_gpu(task: dsl.PipelineTask, settings: ClusterSettings) -> None:
    task.set_accelerator_type(settings.accelerator_type)
    task.set_accelerator_limit(settings.gpu_count)
    for key, value in settings.node_selector:
        kubernetes.add_node_selector(task, label_key=key, label_value=value)
    kubernetes.add_toleration(
        task, key=settings.gpu_toleration_key, operator="Exists", effect="NoSchedule"
    )


def build_pipeline(settings: Optional[ClusterSettings] = None):
    """Return the ``prioritize`` pipeline function built with ``settings``."""
    settings = settings or ClusterSettings()

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="Rank a pool of unlabeled inputs by model uncertainty (DeepGini & co).",
    )
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
        top_k: int = 10,
    ) -> str:
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
        ).set_display_name("start")
        _resources(start_task, settings.cpu, settings.memory)
        run_uri = start_task.output

        ingest_task = ingest(
            run_uri=run_uri, data=data, input_shape=input_shape, shard_size=shard_size
        ).set_display_name("ingest")
        _resources(ingest_task, settings.cpu, settings.memory)

        convert_task = convert(
            run_uri=run_uri,
            model=model,
            framework=framework,
            output_kind=output_kind,
            output_name=output_name,
        ).set_display_name("convert")
        convert_task.after(ingest_task)  # it checks the model against pool samples
        _resources(convert_task, settings.cpu, settings.memory)

        with dsl.ParallelFor(ingest_task.output, parallelism=settings.parallelism) as shard:
            # Only the loop item and pipeline parameters go in (see components/score.py).
            score_task = score(shard=shard, batch_size=batch_size).set_display_name("score")
            score_task.after(convert_task)
            _resources(score_task, settings.score_cpu, settings.score_memory)
            if settings.gpu:
                _place_on_gpu(score_task, settings)

        rank_task = rank(
            run_uri=run_uri,
            scores=dsl.Collected(score_task.output),
            metric=metric,
            top_k=top_k,
        ).set_display_name("rank")
        _resources(rank_task, settings.cpu, settings.memory)
        return rank_task.output

    return prioritize


prioritize = build_pipeline()


def compile_pipeline(package_path: str, settings: Optional[ClusterSettings] = None) -> str:
    """Write the pipeline's KFP YAML to ``package_path``; return the path."""
    compiler.Compiler().compile(build_pipeline(settings), package_path=package_path)
    return package_path
