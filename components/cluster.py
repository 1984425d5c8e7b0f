"""Where and how big each task runs on a cluster: ``configure_task`` applies to one task
what the ``prioritize`` pipeline applies to that stage (requests and limits, caching,
retries, deadline, pod labels, security context, and for score tasks the GPU, node selector
and toleration). Our pipeline calls it for every task; a pipeline of your own built from
``components/yaml/*.yaml`` calls it the same way, since component YAML cannot carry these
settings (KFP keeps them in the pipeline's task and platform specs, not in the component).

KFP's local runner ignores placement, resources and the Kubernetes settings, but honours
retries: local runs use ``LOCAL_SETTINGS`` (no retries).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from kfp import dsl

from testprio.containers import IMAGE_VARIABLE

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
# Its keys are the stages ``configure_task`` knows.
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
# The stages whose tasks run on a GPU node when the settings ask for a GPU.
GPU_STAGES = frozenset({"score"})


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
    # 0: one score task per shard (a pod each on a cluster). N > 0: the shards shared out
    # among N score tasks that score theirs one after another: for local runs, where every
    # task is a new Python process and KFP's local runner starts at most two at once.
    score_groups: int = 0

    def __post_init__(self) -> None:
        if self.parallelism < 1:
            raise ValueError(f"--parallelism {self.parallelism} must be at least 1.")
        if self.gpu and self.gpu_count < 1:
            raise ValueError(f"--gpu-count {self.gpu_count} must be at least 1.")
        if self.retries < 0:
            raise ValueError(f"--retries {self.retries} must be zero or more.")
        if self.score_groups < 0:
            raise ValueError(f"score_groups {self.score_groups} must be zero or more.")
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
# node placement; local runs score on whatever this machine's onnxruntime offers, in two
# score tasks (kfp.local runs at most two loop iterations at once) instead of one per shard.
LOCAL_SETTINGS = ClusterSettings(
    gpu=False, retries=0, score_device="auto", record_image=False, score_groups=2
)


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
    """Each task's policy, by stage name.

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


def configure_task(
    task: dsl.PipelineTask,
    stage: str,
    *,
    gpu_type: str | None = None,
    gpu_count: int | None = None,
    node_selector: Mapping[str, str] | None = None,
    timeout_s: int | None = None,
    settings: ClusterSettings | None = None,
) -> dsl.PipelineTask:
    """Apply to ``task`` what the ``prioritize`` pipeline applies to its ``stage`` task.

    That is: CPU and memory requests and limits, caching, retries with backoff, the pod's
    deadline (activeDeadlineSeconds), the pod labels the NetworkPolicies of manifests/
    select, a non-root security context, an emptyDir on /tmp, the image as TESTPRIO_IMAGE;
    and for a score task, one GPU (``nvidia.com/gpu``), a node selector for GKE's T4 pool
    and a NoSchedule toleration for GPU nodes. ``task`` is any task built from our
    components, imported or loaded from ``components/yaml/*.yaml``.

    Args:
        task: the task to configure (changed in place, and returned).
        stage: the stage the task's component runs: start, ingest, convert (any
            framework's), reference, score, rank or report.
        gpu_type: a score task's accelerator resource (default ``nvidia.com/gpu``).
        gpu_count: GPUs per score task (default 1); 0 runs it on CPU nodes, without
            accelerator, node selector or toleration.
        node_selector: node labels a score task's pod must match (default
            ``{"cloud.google.com/gke-accelerator": "nvidia-tesla-t4"}``; ``{}`` for none).
        timeout_s: the pod's deadline in seconds (default ``DEFAULT_TIMEOUTS[stage]``).
        settings: the rest (requests, limits, retries, ...) when not ``ClusterSettings()``;
            the arguments above replace its fields.

    Returns:
        ``task``.

    Raises:
        ValueError: an unknown stage, GPU settings for a stage that runs on no GPU, or a
            count or deadline out of range.

    A score task's ``device`` input is not a setting: give it ``device="cuda"`` (or
    ``"auto"``, the component's default) when it gets a GPU.
    """
    if stage not in DEFAULT_TIMEOUTS:
        raise ValueError(f"stage '{stage}' is not one of {', '.join(DEFAULT_TIMEOUTS)}.")
    gpu_arguments = {"gpu_type": gpu_type, "gpu_count": gpu_count, "node_selector": node_selector}
    given = [name for name, value in gpu_arguments.items() if value is not None]
    if given and stage not in GPU_STAGES:
        raise ValueError(
            f"{given[0]} is set for a {stage} task, but only score tasks run on a GPU."
        )
    settings = settings or ClusterSettings()
    changes: dict = {}
    if gpu_type is not None:
        changes["accelerator_type"] = gpu_type
    if gpu_count is not None:
        if isinstance(gpu_count, bool) or not isinstance(gpu_count, int) or gpu_count < 0:
            raise ValueError(f"gpu_count={gpu_count!r} must be a whole number, 0 or more.")
        changes.update(gpu=gpu_count > 0, gpu_count=max(gpu_count, 1))
    if node_selector is not None:
        changes["node_selector"] = tuple(dict(node_selector).items())
    if timeout_s is not None:
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, int) or timeout_s < 1:
            raise ValueError(
                f"timeout_s={timeout_s!r} must be a whole number of seconds, at least 1."
            )
        changes["timeouts"] = (*settings.timeouts, (stage, timeout_s))
    settings = dataclasses.replace(settings, **changes)
    _apply(task, task_policies(settings)[stage], settings)
    if stage in GPU_STAGES and settings.gpu:
        _place_on_gpu(task, settings)
    return task


def _apply(task: dsl.PipelineTask, policy: TaskPolicy, settings: ClusterSettings) -> None:
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
    # Imported here: a task's own image runs ``components/<stage>.py`` (and so this package)
    # without kfp-kubernetes, which only the pipeline's compiler needs.
    from kfp import kubernetes

    kubernetes.set_timeout(task, policy.timeout_s)
    for key, value in TASK_POD_LABELS.items():
        kubernetes.add_pod_label(task, label_key=key, label_value=value)
    kubernetes.set_security_context(
        task, run_as_user=TASK_USER, run_as_group=TASK_USER, run_as_non_root=True
    )
    kubernetes.empty_dir_mount(task, volume_name="tmp", mount_path="/tmp")


def _place_on_gpu(task: dsl.PipelineTask, settings: ClusterSettings) -> None:
    from kfp import kubernetes

    task.set_accelerator_type(settings.accelerator_type)
    task.set_accelerator_limit(settings.gpu_count)
    for key, value in settings.node_selector:
        kubernetes.add_node_selector(task, label_key=key, label_value=value)
    kubernetes.add_toleration(
        task, key=settings.gpu_toleration_key, operator="Exists", effect="NoSchedule"
    )
