"""Shared fixtures: a real GCS emulator, roots on local disk and on gs://, tiny ONNX models.

Models are built with ``onnx.helper`` so each test knows exactly what the model computes:
``logits = flatten(x) @ W + b`` (optionally followed by Softmax).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

BUCKET = "testprio-test"


# The quick tier (`make test-fast`) leaves out what needs a browser, a framework converter
# or a whole pipeline run; these files are that by nature, so their tests carry the marker
# without each test saying so. `make test` runs everything.
MARKERS_BY_FILE = {
    "test_browser.py": "browser",
    "test_convert_paddle.py": "converters",
    "test_convert_pytorch.py": "converters",
    "test_convert_tensorflow.py": "converters",
    "test_retrain.py": "converters",  # fine-tunes real PyTorch and Keras models
    "test_images.py": "slow",  # installs each image's lock into a fresh environment
    "test_task_policies.py": "slow",  # compiles the pipeline once per setting
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        marker = MARKERS_BY_FILE.get(item.path.name)
        if marker:
            item.add_marker(marker)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def gcs_emulator():
    """``gcp-storage-emulator`` on a loopback port, as a separate process; yields its URL.

    Sets ``STORAGE_EMULATOR_HOST`` so that this process and the KFP local runner's task
    subprocesses talk to it.
    """
    port = _free_port()
    executable = shutil.which("gcp-storage-emulator", path=os.path.dirname(sys.executable))
    process = subprocess.Popen(
        [
            executable,
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--in-memory",
            "--default-bucket",
            BUCKET,
            "--quiet",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if time.time() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError("gcp-storage-emulator did not start") from None
            time.sleep(0.1)
    url = f"http://127.0.0.1:{port}"
    previous = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = url
    from testprio import storage

    storage._gcs_client.cache_clear()
    yield url
    process.terminate()
    process.wait(timeout=10)
    if previous is None:
        os.environ.pop("STORAGE_EMULATOR_HOST", None)
    else:
        os.environ["STORAGE_EMULATOR_HOST"] = previous
    storage._gcs_client.cache_clear()


@pytest.fixture(params=["local", "gcs"])
def root(request, tmp_path) -> str:
    """A runs root: a local folder, or a fresh prefix in the emulator's bucket."""
    if request.param == "local":
        return str(tmp_path / "runs")
    request.getfixturevalue("gcs_emulator")
    return f"gs://{BUCKET}/runs-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def local_root(tmp_path) -> str:
    return str(tmp_path / "runs")


def make_deterministic(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def linear_classifier(
    path: Path,
    *,
    sample_shape: tuple[int, ...] = (1, 8, 8),
    classes: int = 10,
    softmax: bool = False,
    seed: int = 0,
    weights: np.ndarray | None = None,
    label_output: bool = False,
    input_name: str = "input",
) -> Path:
    """Save ``flatten(x) @ W + b`` (then Softmax if asked) as an ONNX model; return the path.

    With ``label_output`` the model has two outputs like scikit-learn's exports: ``label``
    (int64 arg-max) first, then ``probabilities``.
    """
    width = int(np.prod(sample_shape))
    rng = make_deterministic(seed)
    w = weights if weights is not None else rng.normal(0, 0.5, (width, classes))
    b = np.zeros(classes)
    nodes = [
        helper.make_node("Flatten", [input_name], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "W"], ["mm"]),
        helper.make_node("Add", ["mm", "b"], ["logits"]),
    ]
    out_name = "logits"
    if softmax or label_output:
        nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1))
        out_name = "probabilities"
    outputs = [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, ["N", classes])]
    if label_output:
        nodes.append(helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=0))
        outputs.insert(0, helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]))
    graph = helper.make_graph(
        nodes,
        "linear",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", *sample_shape])],
        outputs,
        initializer=[
            numpy_helper.from_array(w.astype(np.float32), "W"),
            numpy_helper.from_array(b.astype(np.float32), "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return path


def reference_logits(x: np.ndarray, path: Path) -> np.ndarray:
    """What ``linear_classifier`` computes, in NumPy (float64)."""
    model = onnx.load(path)
    weights = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    flat = x.reshape(len(x), -1).astype(np.float64)
    return flat @ weights["W"].astype(np.float64) + weights["b"].astype(np.float64)


def write_pool(path: Path, x: np.ndarray, y: np.ndarray | None = None) -> Path:
    """Save a pool as ``.npz`` (x, optional y) or ``.npy`` (x only) by the path's suffix."""
    if path.suffix == ".npy":
        np.save(path, x)
    elif y is None:
        np.savez(path, x=x)
    else:
        np.savez(path, x=x, y=y)
    return path


@pytest.fixture
def digits_pool(tmp_path) -> tuple[np.ndarray, np.ndarray]:
    """120 real 8x8 digits from scikit-learn, as (N, 1, 8, 8) float32 in [0, 1], labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images[:120] / 16.0).astype(np.float32)[:, None]
    return x, digits.target[:120].astype(np.int64)
