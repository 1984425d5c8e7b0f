"""`testprio run` in a real subprocess, stopped mid-run by SIGINT, SIGTERM or SIGKILL: the run
is marked (or shown) as interrupted, no task process is left, and running the same command
again resumes it to a ranking byte-identical to an uninterrupted run's."""

import contextlib
import glob
import os
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import psutil
import pytest

from testprio import cli, scratch, storage
from testprio.layout import UNFINISHED, RunLayout, run_status
from tests.conftest import linear_classifier, write_pool

pytestmark = pytest.mark.pipeline


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("interrupt")
    model = linear_classifier(folder / "m.onnx")
    x = np.random.default_rng(7).random((240, 1, 8, 8), np.float32)
    return str(model), str(write_pool(folder / "p.npy", x))


def _args(inputs, root: str, run_id: str) -> list[str]:
    model, data = inputs
    return ["run", "--model", model, "--data", data, "--root", root, "--run-id", run_id,
            "--shard-size", "40"]  # fmt: skip


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "testprio.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: `_wait_for_scoring` pauses it whole
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )


def _wait_for_scoring(process: subprocess.Popen, layout: RunLayout) -> list[psutil.Process]:
    """Wait until the first shard is scored, then pause the run (SIGSTOP to its process
    group) so that it cannot finish while the test looks at it; return the run's processes
    below the CLI. `_signal_and_go_on` sends the test's signal and lets the run go on."""
    deadline = time.time() + 120
    while not storage.exists(layout.scores_shard(0)):
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline, "the run did not reach the score stage"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGSTOP)
    return psutil.Process(process.pid).children(recursive=True)


def _signal_and_go_on(process: subprocess.Popen, sig: int) -> None:
    """Send ``sig`` to the paused CLI, then continue its process group. A paused process
    keeps the signal pending, so the CLI handles it the moment it goes on: the rest of the
    run (five shards, rank, report: seconds of work) cannot end before it."""
    process.send_signal(sig)
    with contextlib.suppress(ProcessLookupError):  # SIGKILL: its tasks may all be gone
        os.killpg(process.pid, signal.SIGCONT)


@pytest.fixture(scope="module")
def reference(inputs, tmp_path_factory) -> bytes:
    root = str(tmp_path_factory.mktemp("reference"))
    assert cli.main(_args(inputs, root, "whole")) == 0
    return storage.read_bytes(RunLayout.create(root, "whole").ranking)


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_stopped_run_is_marked_interrupted_and_resumes(
    inputs, reference, local_root, sig, code, capsys
):
    layout = RunLayout.create(local_root, "stopped")
    process = _start(_args(inputs, local_root, "stopped"))
    children = _wait_for_scoring(process, layout)
    # While it runs, a second run of the same run id is refused.
    assert cli.main(_args(inputs, local_root, "stopped")) == 1
    assert "is being run by process" in capsys.readouterr().err
    _signal_and_go_on(process, sig)
    _, err = process.communicate(timeout=60)

    assert process.returncode == code
    name = signal.Signals(sig).name
    assert err.strip().splitlines()[-1].startswith(f"testprio: interrupted by {name}")
    record = storage.read_json(layout.run_json)
    assert (record["status"], record["reason"]) == ("failed", "interrupted")
    assert record["failed_stage"]  # the stage (or task) in progress
    assert f"interrupted by {name}" in record["error"]
    assert not storage.exists(layout.owner)
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert alive == []

    assert cli.main(_args(inputs, local_root, "stopped")) == 0
    record = storage.read_json(layout.run_json)
    assert record["status"] == "succeeded" and len(record["resumed"]) == 1
    assert storage.read_bytes(layout.ranking) == reference


def test_a_killed_run_shows_unfinished_and_resumes(inputs, reference, local_root):
    layout = RunLayout.create(local_root, "killed")
    process = _start(_args(inputs, local_root, "killed"))
    children = _wait_for_scoring(process, layout)
    # The CLI's scratch (KFP's pipeline root): a SIGKILL leaves it, the next scratch folder
    # made on the host (the resumed run's, or a still running task's) removes it.
    (left,) = [
        owner[: -len(scratch.OWNER_SUFFIX)]
        for owner in glob.glob(os.path.join(tempfile.gettempdir(), "testprio-kfp-*.owner"))
        if open(owner).read().split()[-1] == str(process.pid)
    ]
    _signal_and_go_on(process, signal.SIGKILL)
    process.communicate(timeout=60)
    # Nothing could stop the task processes: they end at their next write to the dead pipe.
    for child in psutil.wait_procs(children, timeout=30)[1]:
        child.kill()

    record = storage.read_json(layout.run_json)
    assert record["status"] == "running"
    assert run_status(layout, record) == UNFINISHED
    args = _args(inputs, local_root, "killed")
    # Other parameters are refused; the same ones take over the dead owner's lock and resume.
    assert cli.main([*args, "--metric", "margin"]) == 1
    assert cli.main(args) == 0
    assert storage.read_json(layout.run_json)["status"] == "succeeded"
    assert storage.read_bytes(layout.ranking) == reference
    assert not os.path.exists(left) and not os.path.exists(left + scratch.OWNER_SUFFIX)


def test_a_gs_run_is_locked_too(inputs, gcs_emulator, capsys):
    from tests.conftest import BUCKET

    root = f"gs://{BUCKET}/interrupt"
    layout = RunLayout.create(root, "locked")
    from testprio.layout import RunLock

    with RunLock(layout):
        assert cli.main(_args(inputs, root, "locked")) == 1
    assert "is being run by process" in capsys.readouterr().err
    assert not storage.exists(layout.run_json)


def test_a_signal_after_the_last_task_does_not_call_the_run_interrupted(inputs, local_root):
    """The signal can come while the runner finishes a run its last task already ended: the
    record stays as the tasks left it and the sentence says so."""
    from testprio.layout import fail_run, finish_run, start_run
    from testprio.local_run import _fail_unless_done, _interrupted_sentence

    layout = RunLayout.create(local_root, "ended")
    storage.ensure_root(local_root)
    start_run(layout, {"model": "m.onnx"})
    interrupt = ("report", "the run was interrupted by SIGINT.")
    assert _fail_unless_done(layout, *interrupt, reason="interrupted") == "marked"
    assert storage.read_json(layout.run_json)["reason"] == "interrupted"
    assert "is marked failed (interrupted)" in _interrupted_sentence(
        layout, "SIGINT", " during report", "marked"
    )

    start_run(layout, {"model": "m.onnx"})  # resumed
    finish_run(layout)
    assert _fail_unless_done(layout, *interrupt, reason="interrupted") == "succeeded"
    record = storage.read_json(layout.run_json)
    assert record["status"] == "succeeded" and "reason" not in record
    sentence = _interrupted_sentence(layout, "SIGINT", " during report", "succeeded")
    assert "it succeeded, and its results are complete" in sentence
    assert "marked failed" not in sentence

    other = RunLayout.create(local_root, "broke")
    start_run(other, {"model": "m.onnx"})
    fail_run(other, "rank", "rank failed.")
    assert _fail_unless_done(other, *interrupt, reason="interrupted") == "failed"
    assert storage.read_json(other.run_json)["error"] == "rank failed."
    assert "had failed" in _interrupted_sentence(other, "SIGTERM", "", "failed")
