"""How ``--runner docker`` starts each task container, checked without an engine: which
inputs each task sees, with which rights, and the sentences when no engine or runner fits.
The containers themselves run in tests/test_containers.py (``make test-containers``)."""

from __future__ import annotations

import os

import pytest

from pipelines.prioritize import CONVERT_COMPONENTS, LOCAL_SETTINGS, build_pipeline
from testprio import cli, containers, layout, storage
from testprio.errors import TestprioError


def _plan(tmp_path) -> containers.ContainerPlan:
    inputs = {name: str(tmp_path / f"{name}.bin") for name in containers.INPUT_PARAMETERS}
    for path in inputs.values():
        open(path, "w").close()
    return containers.ContainerPlan(
        run_folder=str(tmp_path / "runs" / "r"),
        inputs=inputs,
        user="10001:10001",
        environment={"STORAGE_EMULATOR_HOST": "http://127.0.0.1:9"},
        images={"img:1": {"id": "sha256:abc", "digest": "sha256:def"}},
    )


@pytest.mark.parametrize("framework", sorted(CONVERT_COMPONENTS))
def test_every_task_of_every_pipeline_has_a_mount_policy(framework):
    """A new task must say which local inputs it reads, or it would see all of them."""
    spec = build_pipeline(LOCAL_SETTINGS, framework).pipeline_spec
    executors = spec.deployment_spec["executors"]
    names = {containers.task_name(list(e["container"]["args"])) for e in executors.values()}
    assert {containers.task_family(name) for name in names} == set(containers.TASK_INPUTS)


def test_each_task_gets_only_the_inputs_it_reads_read_only(tmp_path):
    plan = _plan(tmp_path)
    kfp_root = str(tmp_path / "kfp")

    def mounted(task):
        volumes = plan.mounts(task, kfp_root)
        assert volumes[kfp_root]["mode"] == volumes[plan.run_folder]["mode"] == "rw"
        inputs = {v["bind"]: v["mode"] for k, v in volumes.items() if k not in (kfp_root,)}
        inputs.pop(plan.run_folder)
        assert set(inputs.values()) <= {"ro"}
        return {os.path.basename(path).split(".")[0] for path in inputs}

    assert mounted("convert_pytorch") == {"model"}
    assert mounted("ingest") == {"data", "custom_ops"}
    assert mounted("reference") == {"train_data", "custom_ops"}
    assert mounted("start") == {"model", "data", "train_data", "custom_ops"}
    assert mounted("score") == mounted("rank") == mounted("report") == set()


def test_container_arguments_follow_the_cluster_security_context(tmp_path):
    arguments = _plan(tmp_path).run_arguments("rank", "img:1", str(tmp_path / "kfp"))
    assert arguments["user"] == "10001:10001"
    assert arguments["read_only"] is True and "/tmp" in arguments["tmpfs"]
    assert arguments["cap_drop"] == ["ALL"]
    assert arguments["security_opt"] == ["no-new-privileges"]
    assert arguments["environment"]["TESTPRIO_IMAGE"] == "img:1"
    assert arguments["environment"]["TESTPRIO_IMAGE_ID"] == "sha256:abc"
    assert arguments["environment"]["TESTPRIO_IMAGE_DIGEST"] == "sha256:def"
    assert arguments["environment"]["STORAGE_EMULATOR_HOST"] == "http://127.0.0.1:9"


def test_local_inputs_become_absolute_and_urls_stay(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    parameters = {"model": "m.onnx", "data": "gs://b/pool.npz", "root": "runs", "train_data": ""}
    absolute = containers.absolute_inputs(parameters)
    assert absolute["model"] == str(tmp_path / "m.onnx")
    assert absolute["root"] == str(tmp_path / "runs")
    assert absolute["data"] == "gs://b/pool.npz" and absolute["train_data"] == ""
    assert parameters["model"] == "m.onnx"  # the caller's dict is left alone


def test_no_engine_is_one_sentence(tmp_path, monkeypatch):
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no podman
    monkeypatch.setattr(containers, "_DEFAULT_SOCKET", str(tmp_path / "docker.sock"))
    with (
        pytest.raises(TestprioError, match=r"needs a container engine, and none was found"),
        containers.engine(),
    ):
        pass


def test_an_engine_that_does_not_answer_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/nothing.sock")
    with (
        pytest.raises(TestprioError, match=r"engine at unix://.*nothing.sock does not answer"),
        containers.engine(),
    ):
        pass


def test_unknown_runner_is_refused(tmp_path):
    with pytest.raises(TestprioError, match=r"--runner kubernetes is not one of"):
        cli.run_pipeline_locally(
            {"model": "m", "data": "d", "root": str(tmp_path)}, runner="kubernetes"
        )


def test_a_stage_records_the_image_it_ran_in(tmp_path, monkeypatch):
    run = layout.RunLayout.create(str(tmp_path), "r")
    monkeypatch.setenv("TESTPRIO_IMAGE", "ghcr.io/testprio/runtime:0.1.0")
    monkeypatch.setenv("TESTPRIO_IMAGE_ID", "sha256:" + "a" * 64)
    with layout.stage(run, "rank"):
        pass
    monkeypatch.delenv("TESTPRIO_IMAGE")
    monkeypatch.delenv("TESTPRIO_IMAGE_ID")
    with layout.stage(run, "report"):
        pass
    timings = {t["stage"]: t for t in layout.collect_stage_timings(run)}
    assert timings["rank"]["image"] == "ghcr.io/testprio/runtime:0.1.0"
    assert timings["rank"]["image_id"] == "sha256:" + "a" * 64
    assert "image_digest" not in timings["rank"]
    assert "image" not in timings["report"]
    assert storage.exists(run.stages_dir)


def test_an_input_the_task_user_cannot_read_is_named(tmp_path):
    """A root caller's file that only root may read fails up front with what to change,
    not with a bare PermissionError from inside the task."""
    folder = tmp_path / "inputs"  # tmp_path's own parents may be closed: only the input
    folder.mkdir()  # itself is mounted into the task
    pool = folder / "pool.npz"
    pool.write_bytes(b"x")
    os.chmod(pool, 0o600)
    user = "10001:10001" if os.getuid() != 10001 else "10002:10002"
    with pytest.raises(TestprioError, match=r"--data .*pool.npz: the task containers run as "):
        containers.check_readable({"data": str(pool)}, user)
    os.chmod(pool, 0o644)
    containers.check_readable({"data": str(pool)}, user)
    os.chmod(folder, 0o700)
    with pytest.raises(TestprioError, match=rf"--train-data .*cannot read {folder};"):
        containers.check_readable({"train_data": str(folder)}, user)
    containers.check_readable({"data": str(pool)}, f"{os.getuid()}:{os.getgid()}")


class LateLog:
    """An exited container whose log gains its last lines a few reads late, as podman's can."""

    def __init__(self, parts: list[bytes], late_reads: int):
        self.parts, self.reads, self.late_reads = parts, 0, late_reads

    def logs(self, **options) -> bytes:
        self.reads += 1
        return b"".join(self.parts[: 1 if self.reads <= self.late_reads else None])


def test_the_log_of_an_exited_task_is_read_until_it_stops_growing(monkeypatch):
    monkeypatch.setattr(containers, "LOG_SETTLE_S", 0.0)
    container = LateLog([b"first\n", b"last\n"], late_reads=1)
    assert containers.settled_logs(container) == b"first\nlast\n"
    assert container.reads == 3  # a short read, then the whole log twice
    whole = LateLog([b"all\n"], late_reads=0)
    assert containers.settled_logs(whole) == b"all\n" and whole.reads == 2
