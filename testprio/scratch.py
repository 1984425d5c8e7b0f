"""Scratch folders in the local temp directory (``TMPDIR``) that a killed process does not
leave behind for good.

A stage removes its scratch folder when it ends, on success or failure; a process that is
killed (out of memory, say) cannot. So each folder ``testprio-KIND-*`` has an owner file
beside it, ``testprio-KIND-*.owner`` (host, PID namespace and PID of the process that made
it), and making a new scratch folder first removes every folder whose owner ran on this
host, in this PID namespace, and is gone. Folders of live processes, of other hosts or
containers sharing the temp directory, and folders without an owner file are left alone.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator

from testprio.log import get_logger

log = get_logger("scratch")

PREFIX = "testprio-"
OWNER_SUFFIX = ".owner"


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _identity() -> list[str]:
    return [socket.gethostname(), _pid_namespace() or "-", str(os.getpid())]


def _owner_gone(owner: str) -> bool:
    """True only when the owner ran on this host, in this PID namespace, and is gone."""
    try:
        with open(owner) as handle:
            host, namespace, pid = handle.read().split()
        here = _identity()
        if [host, namespace] != here[:2] or namespace == "-":
            return False
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (OSError, ValueError):  # unreadable, or a live process of another user: leave it
        return False
    return False


def remove_stale() -> list[str]:
    """Remove the scratch folders of killed testprio processes on this host; return them."""
    removed = []
    for owner in glob.glob(os.path.join(tempfile.gettempdir(), PREFIX + "*" + OWNER_SUFFIX)):
        if _owner_gone(owner):
            folder = owner[: -len(OWNER_SUFFIX)]
            remove(folder)
            removed.append(folder)
    if removed:
        log.info("removed %s scratch folder(s) of killed testprio processes", len(removed))
    return removed


def make(kind: str) -> str:
    """A new ``testprio-KIND-*`` folder in the local temp directory, with its owner file;
    ``remove`` it when done."""
    remove_stale()
    folder = tempfile.mkdtemp(prefix=f"{PREFIX}{kind}-")
    with open(folder + OWNER_SUFFIX, "w") as handle:
        handle.write(" ".join(_identity()) + "\n")
    return folder


def remove(folder: str) -> None:
    """Remove a folder ``make`` made, and its owner file."""
    shutil.rmtree(folder, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        os.remove(folder + OWNER_SUFFIX)


@contextlib.contextmanager
def folder(kind: str) -> Iterator[str]:
    """A ``testprio-KIND-*`` scratch folder, removed on the way out, success or failure."""
    path = make(kind)
    try:
        yield path
    finally:
        remove(path)
