"""The GPU path of scoring, on a machine without a GPU.

Provider choice and the CPU fallback are decided by ``testprio.model`` from
``onnxruntime.get_available_providers()``; faking that one function (as an onnxruntime-gpu
build on a node whose GPU cannot be used would answer) exercises every branch. The IO
binding code is the same on every device type, so it runs here with ``"cpu"``.
"""

import logging

import numpy as np
import onnxruntime as ort
import pytest

from testprio import score, stages, storage
from testprio.errors import TestprioError
from testprio.layout import RunLayout
from testprio.model import BoundRunner, create_session, execution_providers, session_device
from tests.conftest import linear_classifier, make_deterministic, write_pool
from tests.stagekit import parameters, run_stages

CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"


@pytest.fixture
def gpu_build(monkeypatch):
    """onnxruntime-gpu's answer: the CUDA provider is built in (whether or not it can start)."""
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])


@pytest.fixture
def cpu_build(monkeypatch):
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["AzureExecutionProvider", CPU])


@pytest.fixture
def model(tmp_path):
    return str(linear_classifier(tmp_path / "m.onnx"))


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


@pytest.mark.parametrize(
    ("device", "expected"),
    [("auto", [CUDA, CPU]), ("cuda", [CUDA, CPU]), ("cpu", [CPU])],
)
def test_providers_with_a_gpu_build(gpu_build, device, expected):
    assert execution_providers(device) == expected


@pytest.mark.parametrize("device", ["auto", "cuda", "cpu"])
def test_providers_with_a_cpu_build_are_cpu_only(cpu_build, device):
    assert execution_providers(device) == [CPU]


def test_unknown_device_is_refused():
    with pytest.raises(TestprioError, match=r"^device 'tpu' is not one of auto, cuda, cpu; "):
        execution_providers("tpu")


def test_cuda_requested_without_cuda_provider_warns_and_scores_on_cpu(cpu_build, model, caplog):
    with caplog.at_level(logging.INFO, logger="testprio"):
        session = create_session(model, device="cuda")
    assert session_device(session) == "cpu"
    assert _warnings(caplog) == [
        "CUDA was requested but this onnxruntime has no CUDA execution provider (install "
        "onnxruntime-gpu); scoring on the CPU instead."
    ]


def test_cuda_provider_that_cannot_start_warns_and_scores_on_cpu(gpu_build, model, caplog, recwarn):
    # The real onnxruntime here cannot start CUDA, as on a node without a usable GPU.
    with caplog.at_level(logging.INFO, logger="testprio"):
        session = create_session(model, device="cuda")
    assert session.get_providers() == [CPU]
    assert _warnings(caplog) == [
        "CUDA was requested but the CUDA execution provider could not start (no visible GPU, "
        "or the NVIDIA driver or CUDA/cuDNN libraries are missing); scoring on the CPU instead."
    ]
    assert not [w for w in recwarn if "provider" in str(w.message)]  # said once, by us


@pytest.mark.parametrize("device", ["auto", "cpu"])
def test_no_warning_when_cuda_was_not_required(gpu_build, model, caplog, device):
    with caplog.at_level(logging.INFO, logger="testprio"):
        session = create_session(model, device=device)
    assert session_device(session) == "cpu"
    assert _warnings(caplog) == []


def test_io_binding_gives_the_outputs_of_session_run(model):
    session = create_session(model, device="cpu")
    runner = BoundRunner(session, "input", "logits", "cpu")
    rng = make_deterministic(3)
    # Equal shapes reuse the bound input buffer; the short last batch gets a new one.
    for n in (16, 16, 16, 5, 16):
        x = rng.normal(0, 1, (n, 1, 8, 8)).astype(np.float32)
        (expected,) = session.run(["logits"], {"input": x})
        np.testing.assert_allclose(runner(x), expected, rtol=1e-6, atol=1e-6)


@pytest.fixture
def pool(tmp_path):
    rng = make_deterministic(11)
    x = rng.normal(0, 1, (70, 1, 8, 8)).astype(np.float32)
    return write_pool(tmp_path / "pool.npz", x, rng.integers(0, 10, 70))


@pytest.fixture
def reference(tmp_path, pool):
    """The model, and the scores of the pool on the plain CPU path in batches of 16."""
    model = linear_classifier(tmp_path / "m.onnx")
    return model, _scores(run_stages(model, pool, str(tmp_path / "cpu"), batch_size=16))


def _converted_run(root, model, pool) -> str:
    """A run folder after start, ingest and convert; returns its one shard's URI."""
    uri = stages.start_run(root, "run", parameters(model, pool, root, "run"))
    (shard,) = stages.ingest_pool(uri, str(pool), shard_size=10_000)
    stages.convert_model(uri, str(model), "auto", "auto", "")
    return shard


def _scores(layout):
    return storage.read_table(layout.scores_shard(0)).sort_by("sample_id")


def _stage_record(layout):
    return storage.read_json(storage.join(layout.stages_dir, "score-shard-00000.json"))


def test_score_on_cuda_uses_io_binding_and_the_gpu_batch_size(
    tmp_path, pool, reference, monkeypatch
):
    model, expected = reference
    # Only the device's identity is faked: the session is told it runs on CUDA and the IO
    # binding it gets works on host memory; everything else is the real scoring path.
    bound = []

    def host_runner(session, input_name, output_name, device_type):
        bound.append(device_type)
        return BoundRunner(session, input_name, output_name, "cpu")

    monkeypatch.setattr(score, "session_device", lambda session: "cuda")
    monkeypatch.setattr(score, "BoundRunner", host_runner)
    shard = _converted_run(str(tmp_path / "gpu"), model, pool)
    stages.score_shard(shard, 16, 32, "cuda")

    layout = RunLayout.of_data_shard(shard)
    assert bound == ["cuda"]
    assert (_stage_record(layout)["device"], _stage_record(layout)["batch_size"]) == ("cuda", 32)
    assert _scores(layout).equals(expected)


def test_score_requested_on_cuda_falls_back_to_cpu_with_the_cpu_batch_size(
    tmp_path, pool, reference, cpu_build, caplog
):
    model, expected = reference
    shard = _converted_run(str(tmp_path / "fallback"), model, pool)
    with caplog.at_level(logging.INFO, logger="testprio"):
        stages.score_shard(shard, 16, 32, "cuda")
    layout = RunLayout.of_data_shard(shard)
    assert (_stage_record(layout)["device"], _stage_record(layout)["batch_size"]) == ("cpu", 16)
    assert any("scoring on the CPU instead" in message for message in _warnings(caplog))
    assert _scores(layout).equals(expected)


def test_negative_gpu_batch_size_is_refused(tmp_path, pool):
    model = linear_classifier(tmp_path / "m.onnx")
    shard = _converted_run(str(tmp_path / "r"), model, pool)
    with pytest.raises(TestprioError, match=r"^--gpu-batch-size -1 must be a positive number"):
        stages.score_shard(shard, 16, -1, "cuda")
