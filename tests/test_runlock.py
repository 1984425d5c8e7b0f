"""The run's owner lock (owner.json): exclusive create, stale takeover, heartbeat, release;
and the status readers show for a run whose owner process is gone. Local and emulator gs://.
"""

import socket
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import pytest

from testprio import storage
from testprio.errors import TestprioError
from testprio.layout import (
    UNFINISHED,
    RunLayout,
    RunLock,
    effective_status,
    fail_run,
    read_owner,
    run_status,
    start_run,
)


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _owner(**fields) -> dict:
    now = datetime.now(timezone.utc).isoformat()
    return {"host": socket.gethostname(), "pid": 1, "started": now, "heartbeat": now, **fields}


def test_create_exclusive_refuses_an_existing_object(root):
    uri = storage.join(root, "lock.json")
    version = storage.create_exclusive(uri, b"first")
    assert version is not None
    assert storage.create_exclusive(uri, b"second") is None
    data, current = storage.read_versioned(uri)
    assert (data, current) == (b"first", version)
    replaced = storage.replace_versioned(uri, b"third", version)
    assert replaced is not None and storage.read_bytes(uri) == b"third"
    storage.delete_versioned(uri, replaced)
    assert storage.read_versioned(uri) is None


def test_local_replace_of_a_changed_file_is_refused(local_root):
    uri = storage.join(local_root, "lock.json")
    version = storage.create_exclusive(uri, b"old")
    storage.replace_versioned(uri, b"new", version)
    # A second writer that still holds the old version neither replaces nor deletes it.
    assert storage.replace_versioned(uri, b"mine", version) is None
    storage.delete_versioned(uri, version)
    assert storage.read_bytes(uri) == b"new"


def test_a_live_owner_keeps_its_run(root):
    layout = RunLayout.create(root, "r1")
    with RunLock(layout):
        owner = read_owner(layout)
        assert (owner["host"], owner["pid"]) == (socket.gethostname(), _own_pid())
        with pytest.raises(TestprioError, match=r"is being run by process \d+ on .*choose another"):
            RunLock(layout).acquire()
    assert read_owner(layout) is None  # released


def _own_pid() -> int:
    import os

    return os.getpid()


def test_the_lock_of_a_dead_owner_is_taken_over(root):
    layout = RunLayout.create(root, "r2")
    stale = _owner(pid=_dead_pid())
    storage.write_json(layout.owner, stale)
    with RunLock(layout) as lock:
        assert lock.took_over == stale
        assert read_owner(layout)["pid"] == _own_pid()
    assert not storage.exists(layout.owner)


def test_a_silent_owner_on_another_host_is_taken_over(root):
    layout = RunLayout.create(root, "r3")
    old = (datetime.now(timezone.utc) - timedelta(minutes=5)).isoformat()
    storage.write_json(layout.owner, _owner(host="elsewhere", pid=123, heartbeat=old))
    with RunLock(layout) as lock:
        assert lock.took_over["host"] == "elsewhere"


def test_the_heartbeat_is_refreshed_and_release_spares_a_lock_taken_over(local_root):
    layout = RunLayout.create(local_root, "r4")
    lock = RunLock(layout, interval=0.05)
    lock.acquire()
    first = read_owner(layout)["heartbeat"]
    deadline = time.time() + 5
    while read_owner(layout)["heartbeat"] == first and time.time() < deadline:
        time.sleep(0.05)
    assert read_owner(layout)["heartbeat"] > first
    # Another process took the lock over (this one was thought dead): release leaves it.
    lock._stop.set()
    lock._thread.join()
    storage.write_json(layout.owner, _owner(pid=_own_pid(), token="theirs"))
    lock.release()
    assert read_owner(layout)["token"] == "theirs"


def test_effective_status_of_a_running_record():
    running = {"status": "running"}
    now = datetime.now(timezone.utc)
    assert effective_status(running, now, owner=None) == "running"  # a cluster run
    assert effective_status(running, now, owner=_owner(pid=_own_pid())) == "running"
    assert effective_status(running, now, owner=_owner(pid=_dead_pid())) == UNFINISHED
    beat = (now - timedelta(seconds=10)).isoformat()
    assert effective_status(running, now, owner=_owner(host="x", heartbeat=beat)) == "running"
    beat = (now - timedelta(minutes=10)).isoformat()
    assert effective_status(running, now, owner=_owner(host="x", heartbeat=beat)) == UNFINISHED
    dead = _owner(pid=_dead_pid())
    assert effective_status({"status": "failed"}, now, owner=dead) == "failed"


def test_run_status_reads_the_owner_file(local_root):
    layout = RunLayout.create(local_root, "r5")
    start_run(layout, {"model": "a.onnx"})
    record = storage.read_json(layout.run_json)
    assert run_status(layout, record) == "running"
    storage.write_json(layout.owner, _owner(pid=_dead_pid()))
    assert run_status(layout, record) == UNFINISHED


def test_the_report_lists_a_run_with_a_dead_owner_as_unfinished(local_root):
    from testprio.report import data as reportdata

    layout = RunLayout.create(local_root, "r6")
    start_run(layout, {"model": "a.onnx"})
    storage.write_json(layout.owner, _owner(pid=_dead_pid()))
    (row,) = reportdata.list_runs(local_root)
    assert row["status"] == UNFINISHED


def test_an_interrupted_run_resumes_with_its_parameters(local_root):
    layout = RunLayout.create(local_root, "r7")
    start_run(layout, {"model": "a.onnx", "metric": "gini"})
    fail_run(layout, "score-shard-00001", "interrupted by SIGTERM.", reason="interrupted")
    with pytest.raises(TestprioError, match=r"started with other parameters \(metric\)"):
        start_run(layout, {"model": "a.onnx", "metric": "margin"})
    start_run(layout, {"model": "a.onnx", "metric": "gini"})
    record = storage.read_json(layout.run_json)
    assert (record["status"], record["error"], record["ended"]) == ("running", None, None)
    assert "failed_stage" not in record and "reason" not in record
    assert len(record["resumed"]) == 1


def test_a_run_interrupted_before_its_first_task_starts_afresh(local_root):
    layout = RunLayout.create(local_root, "r8")
    fail_run(layout, None, "interrupted by SIGINT.", reason="interrupted")
    start_run(layout, {"model": "a.onnx"})
    record = storage.read_json(layout.run_json)
    assert (record["status"], record["parameters"]) == ("running", {"model": "a.onnx"})


def test_an_unreadable_run_record_is_one_sentence(local_root):
    layout = RunLayout.create(local_root, "r9")
    storage.write_bytes(layout.run_json, b"{not json")
    with pytest.raises(TestprioError, match=r"run.json is not a readable run record .*aside"):
        start_run(layout, {"model": "a.onnx"})


# owner.json may hold anything (a hand edit, another tool, a damaged disk): a lock that no
# testprio process could have written is stale, never a traceback.
MALFORMED_OWNERS = [
    pytest.param(b'{"host": "%s", "pid": "abc"}', id="pid-text"),
    pytest.param(b'{"host": "%s", "pid": 1.5}', id="pid-fraction"),
    pytest.param(b'{"host": "%s", "pid": 1e300}', id="pid-huge-float"),
    pytest.param(b'{"host": "%s", "pid": 1180591620717411303424}', id="pid-past-os-kill"),
    pytest.param(b'{"host": "%s", "pid": -5}', id="pid-negative"),
    pytest.param(b'{"host": "%s", "pid": true}', id="pid-bool"),
    pytest.param(b'{"host": "%s", "pid": null}', id="pid-null"),
    pytest.param(b'{"host": "%s", "pid": [1]}', id="pid-list"),
    pytest.param(b'{"host": "%s", "pid": NaN}', id="pid-nan"),
    pytest.param(b'{"host": "%s", "pid": 1, "pid_started": "x"}', id="pid-started-text"),
    pytest.param(b'{"host": "elsewhere%s", "pid": 1, "heartbeat": "2020-01-01T00:00"}', id="naive"),
    pytest.param(b'{"host": "elsewhere%s", "pid": 1, "heartbeat": 5}', id="heartbeat-number"),
    pytest.param(b'["%s"]', id="list"),
    pytest.param(b"%s" + b"[" * 100_000, id="deep"),
    pytest.param(b"\xff%s", id="not-utf8"),
]


def _malformed_owner(layout: RunLayout, template: bytes) -> None:
    storage.write_bytes(layout.owner, template.replace(b"%s", socket.gethostname().encode()))


@pytest.mark.parametrize("template", MALFORMED_OWNERS)
def test_a_malformed_owner_is_stale(local_root, template):
    layout = RunLayout.create(local_root, "malformed")
    start_run(layout, {"model": "a.onnx"})
    _malformed_owner(layout, template)
    record = storage.read_json(layout.run_json)
    assert run_status(layout, record) == UNFINISHED
    with RunLock(layout) as lock:  # taken over, as the lock of a process that is gone
        assert lock.took_over is not None
        assert read_owner(layout)["pid"] == _own_pid()


@pytest.mark.parametrize("template", MALFORMED_OWNERS)
def test_the_report_lists_a_run_with_a_malformed_owner(local_root, template):
    from testprio.report import data as reportdata

    layout = RunLayout.create(local_root, "malformed")
    start_run(layout, {"model": "a.onnx"})
    _malformed_owner(layout, template)
    (row,) = reportdata.list_runs(local_root)
    assert row["status"] == UNFINISHED
