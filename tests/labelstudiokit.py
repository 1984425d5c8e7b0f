"""A real Label Studio server for the tests: installed by ``make label-studio`` into a
virtual environment of its own (``.venv-labelstudio``: its pins must not move the
project's), started on a loopback port over a copy of a template data folder.

The template is a migrated database holding the test user, its legacy token and an
organization with legacy tokens turned on; ``make label-studio`` makes it once (the
migrations take about two minutes here), so that a test session starts a server in about
15 s. Standard library only: ``make`` runs ``python3 -m tests.labelstudiokit template``
before the project's virtual environment exists.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV = REPO / ".venv-labelstudio"
EXECUTABLE = VENV / "bin" / "label-studio"
TEMPLATE = VENV / "template"
USERNAME = "testprio@example.com"
PASSWORD = "testprio-label-studio"
LEGACY_TOKEN = "5e1f7e57d0c0ffee5e1f7e57d0c0ffee5e1f7e57"  # 40 hex digits, as Label Studio makes
START_TIMEOUT_S = 240


def _environment(data_dir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
        "LATEST_VERSION_CHECK": "false",  # no call to PyPI at each start
        "SECRET_KEY": "testprio-tests-only",
        "PYTHONUNBUFFERED": "1",
    }


def installed() -> bool:
    return EXECUTABLE.exists()


def make_template() -> Path:
    """The migrated data folder with the test user (made once; kept in the venv)."""
    if (TEMPLATE / "label_studio.sqlite3").exists():
        return TEMPLATE
    partial = TEMPLATE.with_name("template.partial")
    shutil.rmtree(partial, ignore_errors=True)
    done = subprocess.run(
        [
            str(EXECUTABLE),
            "init",
            "--no-browser",
            "--data-dir",
            str(partial),
            "--username",
            USERNAME,
            "--password",
            PASSWORD,
            "--user-token",
            LEGACY_TOKEN,
            "--enable-legacy-api-token",
        ],
        env=_environment(partial),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    if done.returncode != 0:
        tail = done.stdout[-3000:]
        raise SystemExit(f"'label-studio init' failed (exit {done.returncode}):\n{tail}")
    partial.rename(TEMPLATE)
    return TEMPLATE


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    """A running Label Studio: its ``url``, the process and its log."""

    url: str
    process: subprocess.Popen
    log: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)


def start(folder: Path) -> Server:
    """Label Studio on a free loopback port over a copy of the template in ``folder``,
    answering ``/health``."""
    data_dir = folder / "data"
    shutil.copytree(make_template(), data_dir)
    port = _free_port()
    log = folder / "label-studio.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [
                str(EXECUTABLE),
                "start",
                "--no-browser",
                "--internal-host",
                "127.0.0.1",
                "--port",
                str(port),
                "--data-dir",
                str(data_dir),
            ],
            env=_environment(data_dir),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, stopped as one
        )
    server = Server(f"http://127.0.0.1:{port}", process, log)
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            with urllib.request.urlopen(server.url + "/health", timeout=2) as answer:
                if answer.status == 200:
                    return server
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            server.stop()
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"Label Studio did not start on {server.url}:\n{tail}")
        time.sleep(0.5)


if __name__ == "__main__":
    if sys.argv[1:] != ["template"]:
        sys.exit("usage: python -m tests.labelstudiokit template")
    print(f"Label Studio template data folder: {make_template()}")
