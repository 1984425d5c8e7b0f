"""The ``prioritize`` pipeline: start -> ingest -> convert -> reference -> score (fan-out per
shard) -> rank -> report. The reference task does nothing unless ``train_data`` is given.

Cluster settings (GPU, node selector, resources, fan-out width, retries, caching) are fixed
when the pipeline is built and compiled. KFP's local runner ignores the placement settings
but honours retries, so local runs use ``LOCAL_SETTINGS`` (no retries).
"""

# No `from __future__ import annotations`: KFP reads the pipeline's annotations as types.
from dataclasses import dataclass
from typing import Optional

from kfp import compiler, dsl, kubernetes

from components.convert import convert_onnx, convert_paddle, convert_pytorch, convert_tensorflow
from components.ingest import ingest
from components.rank import rank
from components.reference import reference
from components.report import report
from components.score import score
from components.start import start
from testprio.containers import IMAGE_VARIABLE
from testprio.params import describe

PIPELINE_NAME = "prioritize"
# Labels on every task pod: manifests/base/pipeline-networkpolicy.yaml selects the pods by
# them (default-deny ingress and egress but DNS and Google APIs).
TASK_POD_LABELS = {
    "app.kubernetes.io/part-of": "testprio",
    "app.kubernetes.io/component": "pipeline-task",
}
# The numeric non-root user and group of every image (USER 10001:10001 in images/*).
TASK_USER = 10001
# Each task pod's deadline (Kubernetes activeDeadlineSeconds, per attempt: a retry is a new
# pod with a new deadline). Wide enough for the largest pools the defaults allow (ingest
# downloads and decodes up to max_data_gb=20 GB; convert exports big torch/TF models);
# a hung download or a GPU stuck in a driver call is killed instead of holding the node.
DEFAULT_TIMEOUTS = {
    "start": 600,
    "ingest": 6 * 3600,
    "convert": 2 * 3600,
    # Ingests the reference pool (as ingest does) and fits DSA's O(M^2) neighbour search.
    "reference": 6 * 3600,
    "score": 2 * 3600,
    "rank": 3600,
    "report": 3600,
}
# One convert component (and image) per framework, chosen when the pipeline is built:
# KFP's dsl.OneOf, which could choose at run time, does not run in the local runner.
CONVERT_COMPONENTS = {
    "onnx": convert_onnx,
    "pytorch": convert_pytorch,
    "tensorflow": convert_tensorflow,
    "paddle": convert_paddle,
}


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
    score_cpu_limit: str = "8"
    score_memory: str = "16G"
    cpu: str = "1"
    cpu_limit: str = "2"
    memory: str = "4G"
    parallelism: int = 8
    # Transient failures (a preempted GPU node, an evicted or OOM-killed pod) are retried
    # after 30 s, then 60 s; no retry starts more than an hour after the first attempt.
    retries: int = 2
    retry_backoff: str = "30s"
    retry_backoff_factor: float = 2.0
    retry_backoff_max: str = "3600s"
    # ONNX Runtime device of the score tasks (auto, cuda, cpu); empty: cuda when they get a
    # GPU (a fallback to the CPU is then logged as a warning), else cpu.
    score_device: str = ""
    # Per-task deadlines in seconds replacing DEFAULT_TIMEOUTS, e.g. (("ingest", 43200),).
    timeouts: tuple[tuple[str, int], ...] = ()
    # Each task tells its stages the image it runs in (TESTPRIO_IMAGE, recorded in run.json).
    # Off for local runs: the subprocess runner runs no image (the docker runner sets it).
    record_image: bool = True

    def __post_init__(self) -> None:
        if self.parallelism < 1:
            raise ValueError(f"--parallelism {self.parallelism} must be at least 1.")
        if self.gpu and self.gpu_count < 1:
            raise ValueError(f"--gpu-count {self.gpu_count} must be at least 1.")
        if self.retries < 0:
            raise ValueError(f"--retries {self.retries} must be zero or more.")
        for task, seconds in self.timeouts:
            if task not in DEFAULT_TIMEOUTS:
                raise ValueError(
                    f"--timeout {task}={seconds} names no task; use one of "
                    f"{', '.join(DEFAULT_TIMEOUTS)}."
                )
            if isinstance(seconds, bool) or not isinstance(seconds, int) or seconds < 1:
                raise ValueError(
                    f"--timeout {task}={seconds} must be a whole number of seconds, at least 1."
                )

    @property
    def device(self) -> str:
        return self.score_device or ("cuda" if self.gpu else "cpu")


# KFP's local runner honours retries (a bad input would wait out every backoff) and ignores
# node placement; local runs score on whatever this machine's onnxruntime offers.
LOCAL_SETTINGS = ClusterSettings(gpu=False, retries=0, score_device="auto", record_image=False)


@dataclass(frozen=True)
class TaskPolicy:
    """Requests, limits, caching, retries and deadline of one kind of task."""

    cpu: str
    cpu_limit: str
    memory: str  # request and limit: memory cannot be throttled, only OOM-killed
    cache: bool
    retry: bool
    timeout_s: int  # the pod's activeDeadlineSeconds


def task_policies(settings: ClusterSettings) -> dict[str, TaskPolicy]:
    """Each task's policy, by task name.

    Caching: KFP reuses the outputs of an earlier successful task with the same component
    and inputs. ingest and convert take the run folder (``run_uri``) as an input, so they hit
    only when a run is submitted again with the same ``run_id`` (to resume a cancelled run)
    and then reuse the shards and model already in that folder. start is never cached (it
    writes run.json), score neither (its inputs leave out the model, so a hit could return
    another model's scores; a retried or resumed score task skips finished shards anyway),
    nor rank and report (they rewrite the ranking, run.json and the UI outputs).

    Retries: every task but start, whose failures are bad parameters (and which refuses a
    run folder already marked failed); the other tasks can run again safely because every
    file is published atomically.

    Deadlines: ``DEFAULT_TIMEOUTS``, replaced task by task by ``settings.timeouts``.
    """
    cpu_task = {"cpu": settings.cpu, "cpu_limit": settings.cpu_limit, "memory": settings.memory}
    timeouts = {**DEFAULT_TIMEOUTS, **dict(settings.timeouts)}
    return {
        "start": TaskPolicy(
            cpu="500m",
            cpu_limit="1",
            memory="1G",
            cache=False,
            retry=False,
            timeout_s=timeouts["start"],
        ),
        "ingest": TaskPolicy(**cpu_task, cache=True, retry=True, timeout_s=timeouts["ingest"]),
        "convert": TaskPolicy(**cpu_task, cache=True, retry=True, timeout_s=timeouts["convert"]),
        # Not cached: a retried or resumed task skips a reference whose profile exists.
        "reference": TaskPolicy(
            **cpu_task, cache=False, retry=True, timeout_s=timeouts["reference"]
        ),
        "score": TaskPolicy(
            cpu=settings.score_cpu,
            cpu_limit=settings.score_cpu_limit,
            memory=settings.score_memory,
            cache=False,
            retry=True,
            timeout_s=timeouts["score"],
        ),
        "rank": TaskPolicy(**cpu_task, cache=False, retry=True, timeout_s=timeouts["rank"]),
        "report": TaskPolicy(**cpu_task, cache=False, retry=True, timeout_s=timeouts["report"]),
    }


def _configure(task: dsl.PipelineTask, name: str, settings: ClusterSettings) -> None:
    policy = task_policies(settings)[name]
    task.set_cpu_request(policy.cpu).set_cpu_limit(policy.cpu_limit)
    task.set_memory_request(policy.memory).set_memory_limit(policy.memory)
    task.set_caching_options(enable_caching=policy.cache)
    if policy.retry and settings.retries:
        task.set_retry(
            num_retries=settings.retries,
            backoff_duration=settings.retry_backoff,
            backoff_factor=settings.retry_backoff_factor,
            backoff_max_duration=settings.retry_backoff_max,
        )
    _harden(task, policy)
    if settings.record_image:
        # A cluster gives a pod no way to read its own image: each stage records this one.
        task.set_env_variable(IMAGE_VARIABLE, task.container_spec.image)


def _harden(task: dsl.PipelineTask, policy: TaskPolicy) -> None:
    """What kfp-kubernetes can set on a task pod for the cluster security model (see
    manifests/): a deadline, the labels the NetworkPolicies select, a non-root identity,
    and a writable /tmp that does not depend on the root filesystem being writable (KFP's
    lightweight-component command writes its program into ``mktemp -d``; downloads and
    conversions use tempfile). kfp-kubernetes 2.17 cannot set readOnlyRootFilesystem,
    allowPrivilegeEscalation or seccomp: recent KFP backends set the last two (and drop
    every capability) themselves; the namespace's Pod Security Admission enforces them."""
    kubernetes.set_timeout(task, policy.timeout_s)
    for key, value in TASK_POD_LABELS.items():
        kubernetes.add_pod_label(task, label_key=key, label_value=value)
    kubernetes.set_security_context(
        task, run_as_user=TASK_USER, run_as_group=TASK_USER, run_as_non_root=True
    )
    kubernetes.empty_dir_mount(task, volume_name="tmp", mount_path="/tmp")


def _place_on_gpu(task: dsl.PipelineTask, settings: ClusterSettings) -> None:
    task.set_accelerator_type(settings.accelerator_type)
    task.set_accelerator_limit(settings.gpu_count)
    for key, value in settings.node_selector:
        kubernetes.add_node_selector(task, label_key=key, label_value=value)
    kubernetes.add_toleration(
        task, key=settings.gpu_toleration_key, operator="Exists", effect="NoSchedule"
    )


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
            parity_tolerance=parity_tolerance,
            strict_model_checks=strict_model_checks,
            train_data=train_data,
            layers=layers,
            surprise_reduce=surprise_reduce,
            metamorphic=metamorphic,
            followups=followups,
            **ingest_arguments,
        ).set_display_name("start")
        _configure(start_task, "start", settings)
        run_uri = start_task.output

        ingest_task = ingest(
            run_uri=run_uri,
            data=data,
            input_shape=input_shape,
            shard_size=shard_size,
            **ingest_arguments,
        ).set_display_name("ingest")
        _configure(ingest_task, "ingest", settings)

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
        _configure(convert_task, "convert", settings)

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
        _configure(reference_task, "reference", settings)

        shards = ingest_task.outputs["Output"]
        with dsl.ParallelFor(shards, parallelism=settings.parallelism) as shard:
            # Only the loop item and pipeline parameters go in (see components/score.py).
            score_task = score(
                shard=shard,
                batch_size=batch_size,
                gpu_batch_size=gpu_batch_size,
                device=settings.device,
                metamorphic=metamorphic,
                followups=followups,
            ).set_display_name("score")
            score_task.after(reference_task)  # which is after convert
            _configure(score_task, "score", settings)
            if settings.gpu:
                _place_on_gpu(score_task, settings)

        # The model and pool artifacts in: the Kubeflow UI then shows the ranking's lineage.
        rank_task = rank(
            run_uri=run_uri,
            onnx_model=convert_task.outputs["onnx_model"],
            pool=ingest_task.outputs["pool"],
            scores=dsl.Collected(score_task.outputs["scores"]),
            metric=metric,
            top_k=top_k,
        ).set_display_name("rank")
        _configure(rank_task, "rank", settings)

        # Last: writes report/, hands the Kubeflow UI its HTML, Markdown and metrics
        # outputs, and rewrites run.json as succeeded.
        report_task = report(
            run_uri=run_uri, ranking=rank_task.outputs["ranking"], top_k=top_k
        ).set_display_name("report")
        _configure(report_task, "report", settings)
        return rank_task.outputs["Output"]

    return prioritize


prioritize = build_pipeline()


def compile_pipeline(
    package_path: str, settings: Optional[ClusterSettings] = None, framework: str = "onnx"
) -> str:
    """Write the KFP YAML of the pipeline for ``framework`` models to ``package_path``."""
    compiler.Compiler().compile(build_pipeline(settings, framework), package_path=package_path)
    return package_path
