"""Base images where no registry can be reached: local stand-ins from Debian's packages
(``make image-bases``, ``python images/build.py bases``).

``python:3.11-slim-bookworm`` is pulled if it can be; else a stand-in is built from a
debootstrap'ed Debian bookworm (bookworm's python3 is 3.11) and tagged with that very name,
so that the Dockerfiles build unchanged and no pull is tried. A stand-in present already is
kept. Stand-ins carry the label ``org.testprio.stand-in``, which every image built on them
inherits: ``build.py push`` refuses those.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import container_engine

HERE = Path(__file__).resolve().parent / "bases"
STAND_IN_LABEL = "org.testprio.stand-in"
DEBIAN = "localhost/debian:bookworm"
PYTHON = "docker.io/library/python:3.11-slim-bookworm"
HOST_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# The official debian:bookworm image's sources, where the host has none to copy.
DEBIAN_SOURCES = """\
Types: deb
URIs: {mirror}
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""
SLIM_FOLDERS = (
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/groff",
    "usr/share/lintian",
    "usr/share/linda",
)
SLIM_DPKG = "".join(f"path-exclude /{folder}/*\n" for folder in SLIM_FOLDERS) + (
    "path-include /usr/share/doc/*/copyright\npath-include /usr/share/locale/locale.alias\n"
)

# The official Debian images' apt configuration (docker-clean): no .deb stays after install.
_APT_CLEAN_COMMAND = (
    '"rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb '
    '/var/cache/apt/*.bin || true"'
)
APT_CLEAN = (
    f"DPkg::Post-Invoke {{ {_APT_CLEAN_COMMAND}; }};\n"
    f"APT::Update::Post-Invoke {{ {_APT_CLEAN_COMMAND}; }};\n"
    'Dir::Cache::pkgcache "";\nDir::Cache::srcpkgcache "";\n'
)


class BaseError(RuntimeError):
    """A base image is neither here nor pullable, and no stand-in can be built."""


def present(engine: str, ref: str) -> bool:
    result = subprocess.run([engine, "image", "inspect", ref], capture_output=True)
    return result.returncode == 0


_PULL_FAILED: set[str] = set()


def pullable(engine: str, ref: str) -> bool:
    """Pulls ``ref``; False (once per process) when no registry answers."""
    if ref in _PULL_FAILED:
        return False
    print(f"+ {engine} pull {ref}", flush=True)
    try:
        result = subprocess.run([engine, "pull", ref], capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        result = None
    if result is not None and result.returncode == 0:
        return True
    reason = result.stderr.strip().splitlines()[-1] if result and result.stderr else "timed out"
    print(f"  cannot pull {ref}: {reason}", flush=True)
    _PULL_FAILED.add(ref)
    return False


def available(engine: str, ref: str) -> bool:
    """``ref`` is in the engine's store, or has just been pulled into it."""
    return present(engine, ref) or pullable(engine, ref)


def is_stand_in(engine: str, ref: str) -> bool:
    result = subprocess.run(
        [
            engine,
            "image",
            "inspect",
            "--format",
            f'{{{{index .Config.Labels "{STAND_IN_LABEL}"}}}}',
            ref,
        ],
        capture_output=True,
        text=True,
    )
    return result.returncode == 0 and result.stdout.strip() == "true"


def _mirror() -> str:
    if HOST_SOURCES.is_file():
        for line in HOST_SOURCES.read_text().splitlines():
            if line.startswith("URIs:"):
                return line.split()[1]
    return DEFAULT_MIRROR


def _slim(rootfs: Path) -> None:
    """As the official slim images: no documentation, manual pages or translations, now
    (files deleted) nor later (dpkg excludes them), and apt keeps no packages it installed."""
    (rootfs / "etc/dpkg/dpkg.cfg.d/slim").write_text(SLIM_DPKG)
    (rootfs / "etc/apt/apt.conf.d/docker-clean").write_text(APT_CLEAN)
    keep = {"usr/share/locale/locale.alias"}
    for folder in SLIM_FOLDERS:
        for path in sorted((rootfs / folder).glob("**/*"), reverse=True):
            relative = str(path.relative_to(rootfs))
            if relative in keep or (folder == "usr/share/doc" and path.name == "copyright"):
                continue
            if path.is_symlink() or path.is_file():
                path.unlink()
            elif path.is_dir() and not any(path.iterdir()):
                path.rmdir()


def build_debian(engine: str) -> None:
    """A minimal Debian bookworm from the host's mirror (debootstrap), imported as DEBIAN."""
    if not container_engine.ensure_debootstrap():
        raise BaseError(
            "debootstrap is missing: install it (apt-get install debootstrap, as root) to "
            "build the Debian stand-in base."
        )
    mirror = _mirror()
    with tempfile.TemporaryDirectory(prefix="testprio-debian-") as folder:
        rootfs = Path(folder) / "rootfs"
        print(f"+ debootstrap --variant=minbase bookworm {rootfs} {mirror}", flush=True)
        subprocess.run(
            ["debootstrap", "--variant=minbase", "bookworm", str(rootfs), mirror],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        # The image's apt sources are the host's (its mirror, reachable from here) or the
        # official image's; the package cache and lists of debootstrap do not go in.
        (rootfs / "etc/apt/sources.list").unlink(missing_ok=True)
        sources = rootfs / "etc/apt/sources.list.d/debian.sources"
        if HOST_SOURCES.is_file():
            shutil.copyfile(HOST_SOURCES, sources)
        else:
            sources.write_text(DEBIAN_SOURCES.format(mirror=mirror))
        _slim(rootfs)
        for cache in ("var/cache/apt", "var/lib/apt/lists"):
            for path in (rootfs / cache).glob("**/*"):
                if path.is_file() and path.name != "lock":
                    path.unlink()
        print(f"+ tar -C {rootfs} -c . | {engine} import - {DEBIAN}", flush=True)
        tar = subprocess.Popen(
            ["tar", "--numeric-owner", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE
        )
        subprocess.run(
            [
                engine,
                "import",
                "--change",
                f"LABEL {STAND_IN_LABEL}=true",
                "--change",
                'CMD ["bash"]',
                "-",
                DEBIAN,
            ],
            stdin=tar.stdout,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        tar.stdout.close()
        if tar.wait() != 0:
            raise BaseError("tar of the debootstrap root file system failed")


def build_python(engine: str) -> None:
    """The python:3.11-slim-bookworm stand-in, FROM the Debian stand-in."""
    command = [engine, "build"]
    if engine == "podman":
        command += ["--network", "host"]
    command += [
        "--file",
        str(HERE / "python.Dockerfile"),
        "--build-arg",
        f"BASE={DEBIAN}",
        "--tag",
        PYTHON,
        str(HERE),
    ]
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def _step(engine: str, ref: str, build) -> None:
    if present(engine, ref):
        print(f"{ref}: present, kept", flush=True)
        return
    print(f"{ref}: building a local stand-in", flush=True)
    start = time.monotonic()
    build(engine)
    print(f"{ref}: stand-in built in {time.monotonic() - start:.0f} s", flush=True)


def ensure(engine: str) -> None:
    """python:3.11-slim-bookworm is in the engine's store: present, pulled, or a stand-in."""
    if present(engine, PYTHON):
        kind = "a local stand-in" if is_stand_in(engine, PYTHON) else "pulled before"
        print(f"{PYTHON}: present ({kind}), kept", flush=True)
        return
    if pullable(engine, PYTHON):
        print(f"{PYTHON}: pulled", flush=True)
        return
    # The Debian base is only ever a stand-in's base: it is not looked for on a registry.
    _step(engine, DEBIAN, build_debian)
    _step(engine, PYTHON, build_python)
