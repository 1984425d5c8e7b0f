"""The container engine that builds the images: Docker where a Docker engine answers, else
podman; and, where neither is here, podman from Debian's packages (``make container-engine``).

podman builds with ``--network host`` so that RUN steps reach the package indexes through
the host's network (and proxy) as Docker's default bridge does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ENGINES = ("docker", "podman")
NO_ENGINE = (
    "No container engine here: no Docker engine answers and podman is not installed; "
    "install Docker, or run `make container-engine` as root on Debian to install podman."
)
# Debian's packages of podman and what building the base stand-ins needs.
PODMAN_PACKAGES = ("podman", "buildah", "runc", "debootstrap")
CONTAINERS_CONF = Path("/etc/containers/containers.conf")
# crun fails in sandboxes with hybrid cgroups where runc works, and podman's default ulimits
# cannot be set inside some sandboxes: neither setting changes a build on a normal machine.
CONTAINERS_CONF_TEXT = '[containers]\ndefault_ulimits = []\n\n[engine]\nruntime = "runc"\n'


def docker_engine_answers() -> bool:
    """A Docker engine (not only its client) answers, and it is not podman's Docker API."""
    if not shutil.which("docker"):
        return False
    try:
        result = subprocess.run(
            ["docker", "version", "--format", "{{.Server.Version}} {{.Server.Platform.Name}}"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    # podman's API service answers `docker version` too, but not its BuildKit build flags.
    return result.returncode == 0 and "podman" not in result.stdout.lower()


def find_engine(preferred: str = "") -> str | None:
    """``docker`` or ``podman``: ``preferred`` if it is installed, else Docker if its engine
    answers, else podman if installed; None when there is neither."""
    if preferred:
        return preferred if shutil.which(preferred) else None
    if docker_engine_answers():
        return "docker"
    if shutil.which("podman"):
        return "podman"
    return None


def _is_debian_root() -> bool:
    return os.geteuid() == 0 and Path("/etc/debian_version").is_file()


def apt_install(packages: tuple[str, ...] | list[str]) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print("+ apt-get install", " ".join(packages), flush=True)
    subprocess.run(["apt-get", "update", "--quiet"], check=True, env=env)
    subprocess.run(["apt-get", "install", "--yes", "--quiet", *packages], check=True, env=env)


def ensure_engine() -> int:
    """Installs and configures podman where no engine is here (root on Debian only)."""
    engine = find_engine()
    if engine:
        print(f"container engine: {engine}")
        return 0
    if not _is_debian_root():
        print(NO_ENGINE)
        return 1
    apt_install(PODMAN_PACKAGES)
    if CONTAINERS_CONF.exists():
        print(f"{CONTAINERS_CONF} exists: left as it is")
    else:
        CONTAINERS_CONF.parent.mkdir(parents=True, exist_ok=True)
        CONTAINERS_CONF.write_text(CONTAINERS_CONF_TEXT)
        print(f"{CONTAINERS_CONF} written: runtime runc, no default ulimits")
    engine = find_engine()
    print(f"container engine: {engine}" if engine else NO_ENGINE)
    return 0 if engine else 1


def ensure_debootstrap() -> bool:
    """debootstrap is here, installed from Debian's packages if it was not (root only)."""
    if shutil.which("debootstrap"):
        return True
    if not _is_debian_root():
        return False
    apt_install(["debootstrap"])
    return shutil.which("debootstrap") is not None
