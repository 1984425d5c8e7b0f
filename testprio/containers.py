"""Run the pipeline's tasks in their own images: ``testprio run --runner docker``.

KFP's ``DockerRunner`` runs each task of the local pipeline in its component's
``base_image`` through the Docker API: Docker's own, or podman's (``podman system service``,
which this module starts when no Docker engine answers). Each task container runs the way the
cluster runs the task pod:

- as the images' non-root user (10001; the calling user's own id when that is not root, so
  that the files it writes stay the caller's), with a read-only root file system, a tmpfs
  on ``/tmp``, no capabilities and no privilege escalation;
- with only what it needs mounted: the run folder and KFP's output folder read-write, and
  the local inputs that this task reads (``TASK_INPUTS``) read-only, each at its own
  absolute path so that the run's parameters mean the same inside and out;
- on the host's network, so that ``gs://`` (or a storage emulator) and ``http(s)://`` inputs
  are reached as they are from a cluster node;
- with ``TESTPRIO_IMAGE`` (the reference) and ``TESTPRIO_IMAGE_ID`` / ``TESTPRIO_IMAGE_DIGEST``
  in its environment, which each stage records in ``run.json``.

The KFP task handler is swapped in for the length of one run (``task_containers``): KFP
chooses its handler by the runner's exact class, so a subclass of ``DockerRunner`` alone
could not carry per-task mounts.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from testprio.errors import TestprioError
from testprio.log import configure, get_logger

log = get_logger("containers")

RUNNERS = ("subprocess", "docker")
# The image reference a task runs in, set on every task of the compiled pipeline too.
IMAGE_VARIABLE = "TESTPRIO_IMAGE"
# The numeric user and group of every image (USER 10001:10001 in images/*).
IMAGE_USER = 10001
# Which run parameters each task reads as files. A parameter given as a local path is
# mounted read-only into these tasks only; every other task never sees it.
TASK_INPUTS: dict[str, tuple[str, ...]] = {
    "start": ("model", "data", "train_data", "custom_ops"),  # checks that each exists
    "ingest": ("data", "custom_ops"),
    "convert": ("model",),
    "reference": ("train_data", "custom_ops"),
    "score": (),
    "rank": (),
    "report": (),
}
INPUT_PARAMETERS = ("model", "data", "train_data", "custom_ops")
# Variables of the caller's environment a task needs to reach storage as the caller does.
PASSED_VARIABLES = ("STORAGE_EMULATOR_HOST", "GOOGLE_CLOUD_PROJECT", "HTTPS_PROXY", "NO_PROXY")
_DEFAULT_SOCKET = "/var/run/docker.sock"
_SERVICE_START_S = 30.0


def is_local(value: str) -> bool:
    return bool(value) and "://" not in value


def local_inputs(parameters: dict[str, Any]) -> dict[str, str]:
    """The run parameters that name local files or folders, as absolute paths."""
    return {
        name: os.path.abspath(parameters[name])
        for name in INPUT_PARAMETERS
        if is_local(str(parameters.get(name) or ""))
    }


def task_name(command: list[str]) -> str:
    """The component function a KFP lightweight task runs (``--function_to_execute``)."""
    for flag, value in zip(command, command[1:], strict=False):
        if flag == "--function_to_execute":
            return value
    return ""


def task_family(name: str) -> str:
    """``convert_pytorch`` -> ``convert``: the key of ``TASK_INPUTS``."""
    return name.split("_", 1)[0]


@dataclass
class ContainerPlan:
    """How every task container of one run is started."""

    run_folder: str
    inputs: dict[str, str]
    user: str
    environment: dict[str, str]
    images: dict[str, dict[str, str]] = field(default_factory=dict)
    cold_starts: list[tuple[str, float]] = field(default_factory=list)

    def mounts(self, task: str, pipeline_root: str) -> dict[str, dict[str, str]]:
        """Docker SDK ``volumes``: host path -> {bind, mode}."""
        volumes = {pipeline_root: {"bind": pipeline_root, "mode": "rw"}}
        if self.run_folder:  # a gs:// run folder is reached over the network instead
            volumes[self.run_folder] = {"bind": self.run_folder, "mode": "rw"}
        for name in TASK_INPUTS.get(task_family(task), INPUT_PARAMETERS):
            path = self.inputs.get(name)
            if path:
                volumes[os.path.realpath(path)] = {"bind": path, "mode": "ro"}
        credentials = self.environment.get("GOOGLE_APPLICATION_CREDENTIALS")
        if credentials:
            volumes[os.path.realpath(credentials)] = {"bind": credentials, "mode": "ro"}
        return volumes

    def run_arguments(self, task: str, image: str, pipeline_root: str) -> dict[str, Any]:
        """``client.containers.run`` keyword arguments for ``task`` in ``image``."""
        facts = self.images.get(image, {})
        environment = {**self.environment, IMAGE_VARIABLE: image}
        if facts.get("id"):
            environment["TESTPRIO_IMAGE_ID"] = facts["id"]
        if facts.get("digest"):
            environment["TESTPRIO_IMAGE_DIGEST"] = facts["digest"]
        return {
            "volumes": self.mounts(task, pipeline_root),
            "environment": environment,
            "user": self.user,
            "read_only": True,
            "tmpfs": {"/tmp": "rw,mode=1777"},
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            "network_mode": "host",
            "working_dir": "/tmp",
        }


def container_user() -> str:
    """10001 (the images' user) when the caller is root, else the caller's own ids."""
    uid = os.getuid()
    return f"{IMAGE_USER}:{IMAGE_USER}" if uid == 0 else f"{uid}:{os.getgid()}"


def _grant(path: str, user: str) -> None:
    """Let the task user write ``path`` (root callers only: others run tasks as themselves)."""
    if os.getuid() != 0 or not os.path.exists(path):
        return
    uid, gid = (int(part) for part in user.split(":"))
    os.chown(path, uid, gid)
    for folder, names, files in os.walk(path):
        for name in names + files:
            with contextlib.suppress(FileNotFoundError):
                os.chown(os.path.join(folder, name), uid, gid, follow_symlinks=False)


def check_readable(inputs: dict[str, str], user: str) -> None:
    """One sentence for a local input that the task user cannot read (a root caller's files
    that only root may read): the task would otherwise fail with a bare PermissionError."""
    uid, gid = (int(part) for part in user.split(":"))
    if uid == os.getuid():
        return  # the caller's own identity: what it can read, its tasks can
    for name, path in inputs.items():
        blocked = _unreadable_part(path, uid, gid)
        if blocked:
            flag = "--" + name.replace("_", "-")
            raise TestprioError(
                f"{flag} {path}: the task containers run as user {uid}, which cannot read "
                f"{blocked}; make it readable by others (chmod o+r, o+rx for a folder) or "
                "run testprio as a user other than root."
            )


def _unreadable_part(path: str, uid: int, gid: int) -> str:
    """``path`` when ``uid`` may not read it (a folder: read and search), by its permission
    bits; else empty. Its parent folders do not matter: the input itself is mounted."""
    import stat

    def allowed(part: str, bits: tuple[int, int, int]) -> bool:
        info = os.stat(part)
        if info.st_uid == uid:
            return bool(info.st_mode & bits[0])
        if info.st_gid == gid:
            return bool(info.st_mode & bits[1])
        return bool(info.st_mode & bits[2])

    real = os.path.realpath(path)
    search = (stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH)
    read = (stat.S_IRUSR, stat.S_IRGRP, stat.S_IROTH)
    if not os.path.exists(real):
        return ""  # the start task says that it does not exist
    if not allowed(real, read) or (os.path.isdir(real) and not allowed(real, search)):
        return real
    return ""


# --- the engine ---------------------------------------------------------------------------


@contextlib.contextmanager
def engine() -> Iterator[Any]:
    """A Docker SDK client of a running engine: ``DOCKER_HOST``, Docker's socket, or podman's
    API service started for the length of the block. One sentence when there is none."""
    client = None
    if os.environ.get("DOCKER_HOST"):
        yield _connect(os.environ["DOCKER_HOST"])
        return
    if os.path.exists(_DEFAULT_SOCKET):
        with contextlib.suppress(TestprioError):
            client = _connect(f"unix://{_DEFAULT_SOCKET}")
        if client is not None:
            yield client
            return
    podman = shutil.which("podman")
    if not podman:
        raise TestprioError(
            "--runner docker needs a container engine, and none was found: DOCKER_HOST is "
            f"unset, {_DEFAULT_SOCKET} does not answer and podman is not installed; install "
            "Docker or podman (make container-engine), or leave out --runner docker."
        )
    with tempfile.TemporaryDirectory(prefix="testprio-podman-") as folder:
        socket = os.path.join(folder, "podman.sock")
        log.info("starting podman's Docker API service (%s)", podman)
        service = subprocess.Popen(
            [podman, "system", "service", "--time=0", f"unix://{socket}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + _SERVICE_START_S
            while not os.path.exists(socket):
                if service.poll() is not None or time.monotonic() > deadline:
                    raise TestprioError(
                        f"podman system service did not start (exit {service.poll()}); run "
                        f"'podman system service unix://{socket}' to see why."
                    )
                time.sleep(0.05)
            yield _connect(f"unix://{socket}")
        finally:
            service.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                service.wait(timeout=10)
            if service.poll() is None:
                service.kill()


def _connect(base_url: str):
    """A client of the engine at ``base_url`` that answered a ping."""
    import docker

    try:
        client = docker.DockerClient(base_url=base_url)
        client.ping()
    except docker.errors.DockerException as exc:
        raise TestprioError(
            f"the container engine at {base_url} does not answer ({type(exc).__name__}); "
            "start it, or unset DOCKER_HOST to let testprio start podman."
        ) from None
    return client


def image_facts(client, references: list[str]) -> dict[str, dict[str, str]]:
    """``{reference: {id, digest}}`` of each image; one sentence naming the missing ones."""
    import docker

    facts, missing = {}, []
    for reference in references:
        try:
            image = client.images.get(reference)
        except docker.errors.ImageNotFound:
            missing.append(reference)
            continue
        digests = [d.split("@", 1)[1] for d in image.attrs.get("RepoDigests") or [] if "@" in d]
        facts[reference] = {"id": image.id, "digest": digests[0] if digests else ""}
    if missing:
        raise TestprioError(
            f"--runner docker needs image(s) {', '.join(missing)}, which the container "
            "engine does not have; build them with 'make images' (or pull them from your "
            "registry, as TESTPRIO_REGISTRY/TESTPRIO_IMAGE_TAG name them)."
        )
    return facts


def pipeline_images(pipeline) -> list[str]:
    """Every task image of a built pipeline, in its spec's order."""
    spec = pipeline.pipeline_spec
    executors = spec.deployment_spec["executors"]
    return sorted({executor["container"]["image"] for executor in executors.values()})


# --- the task handler ---------------------------------------------------------------------


# podman can write a container's last log lines after it reports the exit (its log follow
# ends early, and a read just after the exit misses them): read again until two reads agree.
LOG_SETTLE_S = 0.25
LOG_SETTLE_READS = 12


def settled_logs(container, **options) -> bytes:
    """The whole log of an exited ``container``, once it stops growing; ``options`` go to
    ``container.logs`` (stdout and stderr both by default)."""
    logs = container.logs(**options)
    for _ in range(LOG_SETTLE_READS):
        time.sleep(LOG_SETTLE_S)
        again = container.logs(**options)
        if again == logs:
            break
        logs = again
    return logs


def _task_handler_class(plan: ContainerPlan, client):
    from kfp.local import docker_task_handler, status

    class TaskContainer(docker_task_handler.DockerTaskHandler):
        """One task in its image, as ``ContainerPlan`` says; streams its log lines."""

        def run(self) -> status.Status:
            import docker

            task = task_name(self.full_command)
            arguments = plan.run_arguments(task, self.image, self.pipeline_root)
            arguments["environment"] = {**self.env_vars, **arguments["environment"]}
            _grant(self.pipeline_root, plan.user)
            if plan.run_folder:
                _grant(plan.run_folder, plan.user)
            log.info("task %s: container of %s", task, self.image)
            started = time.monotonic()
            container = client.containers.run(
                self.image, self.full_command, detach=True, **arguments
            )
            try:
                first, shown = True, 0
                for chunk in container.logs(stream=True, follow=True):
                    if first:
                        seconds = time.monotonic() - started
                        plan.cold_starts.append((task, seconds))
                        log.info("task %s: first log line %.2f s after start", task, seconds)
                        first = False
                    shown += len(chunk)
                    print(chunk.decode(errors="replace"), end="")
                code = container.wait()["StatusCode"]
                rest = settled_logs(container)[shown:]  # what the follow missed, if anything
                print(rest.decode(errors="replace"), end="")
            finally:
                with contextlib.suppress(docker.errors.DockerException):
                    container.remove(force=True)
            return status.Status.SUCCESS if code == 0 else status.Status.FAILURE

    return TaskContainer


@contextlib.contextmanager
def task_containers(
    parameters: dict[str, Any], run_folder: str, pipeline
) -> Iterator[tuple[Any, ContainerPlan]]:
    """KFP's ``DockerRunner`` for one run of ``pipeline`` with ``parameters``, whose tasks
    run as ``ContainerPlan`` says; yields ``(runner, plan)``.

    ``parameters``' local inputs must be absolute paths (``absolute_inputs``) and
    ``run_folder`` a local folder: a ``gs://`` root is reached over the network instead.
    """
    from kfp import local
    from kfp.local import docker_task_handler

    environment = {key: os.environ[key] for key in PASSED_VARIABLES if key in os.environ}
    if os.environ.get("GOOGLE_APPLICATION_CREDENTIALS"):
        environment["GOOGLE_APPLICATION_CREDENTIALS"] = os.path.abspath(
            os.environ["GOOGLE_APPLICATION_CREDENTIALS"]
        )
    plan = ContainerPlan(
        run_folder=run_folder if is_local(run_folder) else "",
        inputs=local_inputs(parameters),
        user=container_user(),
        environment=environment,
    )
    configure()  # the host's own log lines (engine, containers) reach the progress output
    check_readable(plan.inputs, plan.user)
    with engine() as client:
        plan.images = image_facts(client, pipeline_images(pipeline))
        original = docker_task_handler.DockerTaskHandler
        docker_task_handler.DockerTaskHandler = _task_handler_class(plan, client)
        try:
            yield local.DockerRunner(), plan
        finally:
            docker_task_handler.DockerTaskHandler = original


def absolute_inputs(parameters: dict[str, Any]) -> dict[str, Any]:
    """``parameters`` with each local input and a local root made absolute (a container sees
    them at the same paths)."""
    absolute = dict(parameters)
    for name in (*INPUT_PARAMETERS, "root"):
        value = str(absolute.get(name) or "")
        if is_local(value):
            absolute[name] = os.path.abspath(value)
    return absolute


def image_record() -> dict[str, str]:
    """What a stage records of the image it runs in (empty outside a container)."""
    record = {
        "image": os.environ.get(IMAGE_VARIABLE, ""),
        "image_id": os.environ.get("TESTPRIO_IMAGE_ID", ""),
        "image_digest": os.environ.get("TESTPRIO_IMAGE_DIGEST", ""),
    }
    return {key: value for key, value in record.items() if value}
