"""The pipeline in its real images: every task of ``testprio run --runner docker`` runs in the
image the compiled pipeline names, through KFP's DockerRunner and a real engine (Docker, or
podman's Docker API here). ``make test-containers`` builds the images and runs this file; it
never passes by skipping: a missing engine or image fails with the sentence that says why.

The rankings are compared with the subprocess runner's on the same inputs: the same sample
ids in the same order, and every score equal to float32 precision.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from components import images
from testprio import cli, containers, storage
from testprio.errors import TestprioError
from tests.conftest import _free_port, write_pool
from tests.test_browser import CHROMIUM_FLAGS

pytestmark = [pytest.mark.containers, pytest.mark.pipeline]

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("TESTPRIO_CHROMIUM", "/usr/bin/chromium")
SCORE_COLUMNS = ("predicted", "confidence", "gini", "entropy", "margin", "least_confidence")


@pytest.fixture(scope="module")
def engine():
    with containers.engine() as client:
        yield client


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory):
    from demo.train_digits import train_and_export

    return train_and_export(tmp_path_factory.mktemp("digits"), seed=0)


def _parameters(model, data, root, run_id, **overrides) -> dict:
    from tests.stagekit import parameters

    values = parameters(str(model), str(data), str(root), run_id, shard_size=300)
    values.pop("job_name")
    values.update(overrides)
    return values


def _both_runners(tmp_path, model, data, **overrides):
    """The same run through the subprocess runner and in containers: both layouts."""
    root = tmp_path / "runs"
    plain = cli.run_pipeline_locally(_parameters(model, data, root, "plain", **overrides))
    boxed = cli.run_pipeline_locally(
        _parameters(model, data, root, "boxed", **overrides), runner="docker"
    )
    return plain, boxed


def _assert_same_ranking(plain, boxed) -> None:
    left, right = storage.read_table(plain.ranking), storage.read_table(boxed.ranking)
    assert left.num_rows == right.num_rows > 0
    np.testing.assert_array_equal(
        left.column("sample_id").to_numpy(), right.column("sample_id").to_numpy()
    )
    for column in set(left.column_names) & set(right.column_names):
        if column in ("probs",) or left.schema.field(column).type == "string":
            continue
        a, b = left.column(column).to_numpy(), right.column(column).to_numpy()
        if np.issubdtype(a.dtype, np.floating):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7, err_msg=column)
        else:
            np.testing.assert_array_equal(a, b, err_msg=column)


def _assert_images_recorded(layout, engine, convert_image: str) -> None:
    record = storage.read_json(layout.run_json)
    assert record["status"] == "succeeded", record
    expected = {"convert": convert_image, "score": images.RUNTIME_GPU}
    for stage in record["stages"]:
        family = stage["stage"].split("-", 1)[0]
        reference = expected.get(family, images.RUNTIME)
        assert stage["image"] == reference, stage
        assert stage["image_id"] == engine.images.get(reference).id, stage
    plain = storage.read_json(layout.run_json.replace("boxed", "plain"))
    assert not any("image" in stage for stage in plain["stages"])


def _train_data(tmp_path) -> str:
    from demo.train_digits import load_split

    x_train, y_train, _, _ = load_split(0)
    return str(write_pool(tmp_path / "train.npz", x_train[:200], y_train[:200]))


def test_onnx_run_in_containers_equals_subprocess(engine, digits_model, tmp_path):
    """ONNX model, --train-data, --metamorphic and a custom op (run in the ingest sandbox,
    inside the container): every task in its image, the same ranking."""
    custom = tmp_path / "clip_op.py"
    custom.write_text("import numpy as np\n\ndef op(x):\n    return np.clip(x, 0.0, 0.9)\n")
    plain, boxed = _both_runners(
        tmp_path,
        digits_model["model"],
        digits_model["pool"],
        train_data=_train_data(tmp_path),
        metamorphic="default",
        followups=2,
        custom_ops=str(custom),
    )
    _assert_same_ranking(plain, boxed)
    _assert_images_recorded(boxed, engine, images.RUNTIME)
    summary = storage.read_json(boxed.summary)
    assert {"dsa", "kmnc-ctm", "instability"} <= set(summary["prioritizers"])
    assert storage.read_json(boxed.summary)["labels"] == storage.read_json(plain.summary)["labels"]


def test_pytorch_run_in_containers_equals_subprocess(engine, digits_model, tmp_path):
    """A TorchScript model converts in the convert-pytorch image; with --train-data and
    --metamorphic, ranked by DSA, the ranking is the same."""
    import torch

    from demo.train_digits import build_model

    torch.manual_seed(0)
    model = build_model().eval()
    path = tmp_path / "cnn.pt"
    torch.jit.save(torch.jit.trace(model, torch.zeros(2, 1, 8, 8)), path)
    plain, boxed = _both_runners(
        tmp_path,
        path,
        digits_model["pool"],
        train_data=_train_data(tmp_path),
        metamorphic="rotate,noise",
        followups=2,
        metric="dsa",
    )
    _assert_same_ranking(plain, boxed)
    _assert_images_recorded(boxed, engine, images.CONVERT_PYTORCH)
    assert storage.read_json(boxed.summary)["prioritizer"] == "dsa"


def run_to_exit(engine, image: str, command: list[str], **arguments) -> str:
    """What ``command`` printed on its stdout in a container of ``image``, read once it
    exited: podman can log a container's last lines after it reports the exit, as the task
    runner knows."""
    container = engine.containers.run(image, command, detach=True, **arguments)
    try:
        code = container.wait()["StatusCode"]
        output = containers.settled_logs(container, stderr=False).decode(errors="replace")
    finally:
        container.remove(force=True)
    assert code == 0, output
    return output


def test_task_cannot_write_outside_its_mounts(engine, tmp_path):
    """A task runs as the non-root image user on a read-only root file system: it writes
    its run folder and /tmp, and nothing else, its read-only inputs included."""
    run_folder, pipeline_root = tmp_path / "runs" / "r1", tmp_path / "kfp"
    run_folder.mkdir(parents=True)
    pipeline_root.mkdir()
    pool = write_pool(tmp_path / "pool.npz", np.zeros((2, 3), np.float32))
    plan = containers.ContainerPlan(
        run_folder=str(run_folder),
        inputs={"data": str(pool), "model": str(tmp_path / "model.onnx")},
        user=containers.container_user(),
        environment={},
    )
    arguments = plan.run_arguments("ingest", images.RUNTIME, str(pipeline_root))
    assert str(tmp_path / "model.onnx") not in {v["bind"] for v in arguments["volumes"].values()}
    containers._grant(str(run_folder), plan.user)
    containers._grant(str(pipeline_root), plan.user)
    script = "; ".join(
        [
            "id -u",
            *(
                f"if touch {target}/probe 2>/dev/null; then echo WROTE {target}; "
                f"else echo REFUSED {target}; fi"
                for target in ("/", "/opt/venv", "/home/testprio", "/etc", str(tmp_path))
            ),
            f"if echo x >> {pool} 2>/dev/null; then echo WROTE pool; else echo REFUSED pool; fi",
            f"touch {run_folder}/ok && echo WROTE run",
            f"touch {pipeline_root}/ok && echo WROTE kfp",
            "touch /tmp/ok && echo WROTE tmp",
        ]
    )
    output = run_to_exit(engine, images.RUNTIME, ["sh", "-c", script], **arguments)
    uid, *lines = output.strip().split("\n")
    outcome = dict(reversed(line.split(" ", 1)) for line in lines)
    assert uid.strip() != "0", output
    assert outcome == {
        "/": "REFUSED",
        "/opt/venv": "REFUSED",
        "/home/testprio": "REFUSED",
        "/etc": "REFUSED",
        str(tmp_path): "REFUSED",
        "pool": "REFUSED",
        "run": "WROTE",
        "kfp": "WROTE",
        "tmp": "WROTE",
    }, output
    assert (run_folder / "ok").exists() and not (tmp_path / "probe").exists()
    assert pool.read_bytes()[-1:] != b"x"


def test_missing_image_is_named_with_how_to_build_it(engine):
    with pytest.raises(TestprioError, match=r"needs image\(s\) .*:no-such-tag.*make images"):
        containers.image_facts(engine, [f"{images.REGISTRY}/runtime:no-such-tag"])


def test_gpu_image_lists_cuda_and_falls_back_to_cpu(engine, tmp_path):
    """runtime-gpu's onnxruntime has the CUDA provider; without a GPU a session asked for
    CUDA first runs on the CPU instead of failing."""
    from tests.conftest import linear_classifier

    model = linear_classifier(tmp_path / "m.onnx")
    os.chmod(tmp_path, 0o755)
    script = (
        "import numpy as np, onnxruntime as ort\n"
        "print('available', ort.get_available_providers())\n"
        f"s = ort.InferenceSession('{model}', providers=['CUDAExecutionProvider', "
        "'CPUExecutionProvider'])\n"
        "print('used', s.get_providers())\n"
        "print('out', s.run(None, {'input': np.ones((2, 1, 8, 8), np.float32)})[0].shape)\n"
    )
    output = run_to_exit(
        engine,
        images.RUNTIME_GPU,
        ["python3", "-c", script],
        volumes={str(model): {"bind": str(model), "mode": "ro"}},
        user=containers.container_user(),
        read_only=True,
        tmpfs={"/tmp": "rw"},
    )
    assert "CUDAExecutionProvider" in output.split("available", 1)[1].split("\n")[0], output
    assert "used ['CPUExecutionProvider']" in output, output
    assert "out (2, 10)" in output, output


def test_report_app_image_serves_a_run(engine, digits_model, tmp_path):
    """The report-app image serves a run folder; Chromium loads the run's page."""
    from playwright.sync_api import sync_playwright

    root = tmp_path / "runs"
    layout = cli.run_pipeline_locally(
        _parameters(digits_model["model"], digits_model["pool"], root, "shown")
    )
    os.chmod(tmp_path, 0o755)
    port = _free_port()
    container = engine.containers.run(
        images.REPORT_APP,
        [
            "streamlit",
            "run",
            "report_app/app.py",
            f"--server.port={port}",
            "--server.address=127.0.0.1",
        ],
        detach=True,
        environment={"TESTPRIO_REPORT_ROOT": str(root)},
        volumes={str(root): {"bind": str(root), "mode": "ro"}},
        user=containers.container_user(),
        read_only=True,
        tmpfs={"/tmp": "rw"},
        network_mode="host",
    )
    try:
        _wait_for_port(port, container)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
            page = browser.new_page(viewport={"width": 1400, "height": 4000})
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            # The Run page's Scores tab: its top-k table and its charts.
            page.goto(f"http://127.0.0.1:{port}/?page=run&run={layout.run_id}&section=Scores")
            page.get_by_role("heading", name="Scores", exact=True).wait_for(timeout=60_000)
            page.get_by_text("Top 10: label these first").wait_for(timeout=30_000)
            page.wait_for_function(
                'document.querySelectorAll(\'[data-testid="stVegaLiteChart"] canvas, '
                '[data-testid="stVegaLiteChart"] svg\').length >= 2',
                timeout=30_000,
            )
            browser.close()
        assert not errors, errors
    finally:
        logs = container.logs().decode(errors="replace")
        container.remove(force=True)
    assert "Traceback" not in logs, logs


def _wait_for_port(port: int, container, timeout: float = 60.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        container.reload()
        if container.status not in ("created", "running"):
            raise AssertionError(container.logs().decode(errors="replace"))
        time.sleep(0.5)
    raise AssertionError(f"the report app did not listen on {port} in {timeout} s")


def test_the_cli_runs_in_containers_and_prints_the_ranking(digits_model, tmp_path):
    """``testprio run --runner docker`` from the command line, as a user types it."""
    root = tmp_path / "runs"
    result = subprocess.run(
        [shutil.which("testprio") or str(REPO / ".venv/bin/testprio"), "run"]
        + ["--model", str(digits_model["model"]), "--data", str(digits_model["pool"])]
        + ["--root", str(root), "--run-id", "cli", "--runner", "docker"],
        capture_output=True,
        text=True,
        cwd=tempfile.gettempdir(),
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert "Ranked 899 of 899 samples by gini" in result.stdout
    assert storage.read_json(str(root / "cli" / "run.json"))["status"] == "succeeded"


def test_gs_root_and_inputs_are_reached_over_the_network(engine, digits_model, gcs_emulator):
    """A gs:// root and gs:// inputs (the GCS emulator): nothing local is mounted but KFP's
    output folder, and the tasks reach the bucket as a cluster's pods would."""
    from tests.conftest import BUCKET

    root = f"gs://{BUCKET}/containers"
    model, data = f"{root}/inputs/model.onnx", f"{root}/inputs/pool.npz"
    storage.copy_file(str(digits_model["model"]), model)
    storage.copy_file(str(digits_model["pool"]), data)
    layout = cli.run_pipeline_locally(_parameters(model, data, root, "remote"), runner="docker")
    record = storage.read_json(layout.run_json)
    assert record["status"] == "succeeded", record
    assert all(stage["image"].startswith(images.REGISTRY) for stage in record["stages"])
    assert storage.read_table(layout.ranking).num_rows == 899
