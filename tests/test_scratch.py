"""Scratch folders that a killed process does not leave behind for good (testprio.scratch)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import pytest

from testprio import scratch


def holding_scratch(tmp: str, kind: str) -> subprocess.Popen:
    """A process that makes a ``kind`` scratch folder in ``tmp``, prints it and waits."""
    code = (
        "import sys, tempfile; from testprio import scratch; "
        f"tempfile.tempdir = {tmp!r}; "
        f"context = scratch.folder({kind!r}); print(context.__enter__(), flush=True); "
        "sys.stdin.read()"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )


@pytest.fixture
def tmp(monkeypatch, tmp_path) -> str:
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return str(folder)


def _foreign(tmp: str, name: str, owner: str) -> str:
    folder = os.path.join(tmp, name)
    os.makedirs(folder)
    with open(folder + scratch.OWNER_SUFFIX, "w") as handle:
        handle.write(owner + "\n")
    return folder


def test_a_new_scratch_folder_removes_those_of_killed_processes_only(tmp):
    killed, alive = holding_scratch(tmp, "convert"), holding_scratch(tmp, "data")
    try:
        killed_folder = killed.stdout.readline().strip()
        alive_folder = alive.stdout.readline().strip()
        killed.kill()  # SIGKILL: its finally block never runs
        killed.wait()
        assert os.path.isdir(killed_folder) and os.path.isfile(killed_folder + ".owner")
        here = open(alive_folder + ".owner").read().split()
        # Another host, another PID namespace (a container sharing the folder), no owner file:
        # their processes cannot be asked, so their folders stay.
        kept = [
            _foreign(tmp, "testprio-a-host", f"another-host {here[1]} {killed.pid}"),
            _foreign(tmp, "testprio-a-container", f"{here[0]} pid:[1] {killed.pid}"),
        ]
        os.makedirs(os.path.join(tmp, "testprio-no-owner"))

        with scratch.folder("rank") as mine:
            assert sorted(os.listdir(tmp)) == sorted(
                [
                    *(os.path.basename(path) for path in [alive_folder, mine, *kept]),
                    *(os.path.basename(path) + ".owner" for path in [alive_folder, mine, *kept]),
                    "testprio-no-owner",
                ]
            )
        assert not os.path.exists(mine) and not os.path.exists(mine + ".owner")
        assert not os.path.exists(killed_folder) and not os.path.exists(killed_folder + ".owner")
    finally:
        alive.kill()
        alive.wait()


def test_a_scratch_folder_goes_on_failure_too(tmp):
    with pytest.raises(RuntimeError, match="stop"):
        with scratch.folder("evaluate") as folder:
            open(os.path.join(folder, "big.bin"), "wb").write(b"x" * 1000)
            raise RuntimeError("stop")
    assert os.listdir(tmp) == []


def test_an_unreadable_owner_file_is_left_alone(tmp):
    folder = _foreign(tmp, "testprio-odd", "not three words at all")
    assert scratch.remove_stale() == []
    assert os.path.isdir(folder)
