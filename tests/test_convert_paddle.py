"""PaddlePaddle models through the convert stage: a small seeded CNN saved by
``paddle.jit.save`` as Paddle 3's ``.json`` + ``.pdiparams`` and the older ``.pdmodel`` +
``.pdiparams`` (each in a child process: this process never imports Paddle), converted by
paddle2onnx and checked against Paddle's own outputs."""

from __future__ import annotations

import logging
import uuid

import numpy as np
import onnxruntime as ort
import pytest

from testprio import storage
from testprio.errors import TestprioError
from testprio.metrics import softmax
from tests.conftest import BUCKET
from tests.framework_models import build
from tests.stagekit import run_stages


@pytest.fixture
def testprio_log(caplog):
    """caplog that also sees testprio's records: its logger stops propagating once a stage
    has configured it (testprio.log.configure), so caplog's handler goes on it directly."""
    logger = logging.getLogger("testprio")
    logger.addHandler(caplog.handler)
    with caplog.at_level("WARNING", logger="testprio"):
        yield caplog
    logger.removeHandler(caplog.handler)


@pytest.fixture(scope="module")
def paddle_models(tmp_path_factory):
    from sklearn.datasets import load_digits

    folder = tmp_path_factory.mktemp("paddle")
    x = (load_digits().images[:100] / 16.0).astype(np.float32)[:, None]
    np.save(folder / "x.npy", x)
    np.savez(folder / "pool.npz", x=x)
    build("paddle", folder / "json", folder / "x.npy")
    build("paddle", folder / "pdmodel", folder / "x.npy", env={"FLAGS_enable_pir_api": "0"})
    return {"folder": folder, "pool": folder / "pool.npz", "x": x}


def _check_against_paddle(layout, x: np.ndarray, reference: np.ndarray) -> dict:
    record = storage.read_json(layout.model_json)
    session = ort.InferenceSession(layout.model_onnx, providers=["CPUExecutionProvider"])
    (logits,) = session.run([record["class_output"]["name"]], {record["input"]["name"]: x})
    np.testing.assert_allclose(logits, reference, rtol=1e-4, atol=1e-5)
    return record


@pytest.mark.parametrize(
    ("model", "fmt"),
    [
        ("json/inference.json", "paddle_json"),
        ("json", "paddle_json"),  # the folder paddle.jit.save wrote
        ("pdmodel/inference.pdmodel", "paddle_pdmodel"),
    ],
)
def test_paddle_model_converts_with_parity(tmp_path, paddle_models, model, fmt):
    folder = paddle_models["folder"]
    layout = run_stages(folder / model, paddle_models["pool"], str(tmp_path / "r"))
    reference = np.load(folder / model.split("/")[0] / "reference.npy")
    record = _check_against_paddle(layout, paddle_models["x"], reference)
    assert (record["source"]["framework"], record["source"]["format"]) == ("paddle", fmt)
    assert record["conversion"]["converter"] == "paddle2onnx"
    assert record["input"]["name"] == "image"
    assert not isinstance(record["input"]["shape"][0], int)  # dynamic batch axis
    assert record["output_kind"] == "logits"
    parity = record["parity"]
    assert parity["passed"] and parity["max_abs_diff"] < 1e-4
    assert not parity["predicted_class_differs"]
    assert record["checks_passed"]
    _check_against_paddle(layout, paddle_models["x"][:1], reference[:1])
    scores = storage.read_table(layout.scores_dir + "/shard-00000.parquet")
    probs = np.stack(scores.column("probs").to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(probs, softmax(reference), atol=1e-5)


def test_paddle_model_on_gcs(gcs_emulator, tmp_path, paddle_models):
    """Graph and weights are fetched together from the bucket."""
    remote = f"gs://{BUCKET}/paddle-{uuid.uuid4().hex[:8]}"
    for name in ("inference.json", "inference.pdiparams"):
        storage.copy_file(str(paddle_models["folder"] / "json" / name), f"{remote}/{name}")
    layout = run_stages(f"{remote}/inference.json", paddle_models["pool"], str(tmp_path / "r"))
    reference = np.load(paddle_models["folder"] / "json" / "reference.npy")
    assert _check_against_paddle(layout, paddle_models["x"], reference)["parity"]["passed"]


def _expect_failure(tmp_path, model, data, match, stage):
    root = str(tmp_path / "runs")
    with pytest.raises(TestprioError, match=match):
        run_stages(model, data, root, "bad")
    record = storage.read_json(storage.join(root, "bad", "run.json"))
    assert (record["status"], record["failed_stage"]) == ("failed", stage)


def test_missing_weights_file(tmp_path, paddle_models):
    lonely = tmp_path / "inference.json"
    lonely.write_bytes((paddle_models["folder"] / "json" / "inference.json").read_bytes())
    _expect_failure(
        tmp_path,
        lonely,
        paddle_models["pool"],
        r"model inference.json has no weights file inference.pdiparams beside it; copy the "
        r"inference.pdiparams that paddle.jit.save wrote next to inference.json into the same "
        r"folder\.",
        "start",
    )


def test_fixed_batch_model_converts_and_scores_one_sample_at_a_time(
    tmp_path, paddle_models, testprio_log
):
    """Saved with InputSpec([1, 1, 8, 8]): Paddle and ONNX Runtime run it one sample at a
    time (parity too), and a warning names the fix. The run used to be refused."""
    folder = build("paddle", tmp_path / "fixed", paddle_models["folder"] / "x.npy", "--fixed-batch")
    layout = run_stages(folder / "inference.json", paddle_models["pool"], str(tmp_path / "r"))
    record = storage.read_json(layout.model_json)
    assert record["input"]["shape"] == [1, 1, 8, 8] and record["fixed_batch_size"] == 1
    assert record["parity"]["passed"] and record["parity"]["samples"] == 64
    assert record["checks_passed"]
    assert (
        "model inference.json fixes the batch axis of input 'image' at 1, so testprio runs it 1 "
        "sample(s) at a time (slower); for full speed save it with a dynamic batch axis, e.g. "
        "paddle.jit.save(layer, 'model/inference', input_spec=[paddle.static.InputSpec([None, "
    ) in testprio_log.text
    reference = np.load(folder / "reference.npy")
    gini = 1 - (softmax(reference.astype(np.float64)) ** 2).sum(axis=1)
    ranking = storage.read_table(layout.ranking).sort_by("sample_id")
    np.testing.assert_allclose(ranking.column("gini").to_numpy(), gini, atol=1e-5)
