"""TensorFlow/Keras models through the convert stage: a small seeded Keras CNN saved as
``.keras``, ``.h5`` and a SavedModel, and a Keras 3 Sequential CNN trained for an epoch and
saved as ``.keras`` and ``.h5`` (all in a child process: this process never imports
TensorFlow), converted by tf2onnx and checked against TensorFlow's own outputs."""

from __future__ import annotations

import shutil

import numpy as np
import onnxruntime as ort
import pytest

from testprio import cli, storage
from testprio.errors import TestprioError
from tests.framework_models import build
from tests.stagekit import run_stages


@pytest.fixture(scope="module")
def keras_models(tmp_path_factory):
    """The models, TensorFlow's outputs on the pool (``reference.npy``) and the pool (NHWC)."""
    from sklearn.datasets import load_digits

    folder = tmp_path_factory.mktemp("keras")
    digits = load_digits()
    x = (digits.images[:100] / 16.0).astype(np.float32)[..., None]
    np.save(folder / "x.npy", x)
    np.savez(folder / "pool.npz", x=x, y=digits.target[:100])
    build("keras", folder / "models", folder / "x.npy")
    return {
        "models": folder / "models",
        "pool": folder / "pool.npz",
        "x": x,
        "y": digits.target[:100],
        "reference": np.load(folder / "models" / "reference.npy"),
    }


@pytest.mark.parametrize(
    ("name", "fmt", "output"),
    [
        ("model.keras", "keras", "probabilities"),
        ("model.h5", "keras_h5", "probabilities"),
        ("saved_model", "saved_model", "output_0"),
    ],
)
def test_keras_model_converts_with_parity(tmp_path, keras_models, name, fmt, output):
    layout = run_stages(keras_models["models"] / name, keras_models["pool"], str(tmp_path / "r"))
    record = storage.read_json(layout.model_json)
    assert (record["source"]["framework"], record["source"]["format"]) == ("tensorflow", fmt)
    assert record["producer_name"] == "tf2onnx"
    assert record["conversion"]["converter"] == "tf2onnx"
    assert record["input"]["name"] == "image"
    assert not isinstance(record["input"]["shape"][0], int)  # dynamic batch axis
    assert record["class_output"]["name"] == output
    assert record["output_kind"] == "probabilities"  # the softmax is not applied twice
    assert record["parity"]["passed"] and record["parity"]["max_abs_diff"] < 1e-5
    assert record["checks_passed"]
    session = ort.InferenceSession(layout.model_onnx, providers=["CPUExecutionProvider"])
    for x, reference in (
        (keras_models["x"], keras_models["reference"]),
        (keras_models["x"][:1], keras_models["reference"][:1]),
    ):
        (probs,) = session.run([output], {"image": x})
        np.testing.assert_allclose(probs, reference, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    ("name", "fmt"), [("sequential.keras", "keras"), ("sequential.h5", "keras_h5")]
)
def test_trained_keras3_sequential_model_converts(tmp_path, keras_models, name, fmt):
    """A Sequential model trained with fit and saved with model.save in another process:
    tf2onnx's from_keras failed on it (KeyError: 'keras_tensor_5')."""
    layout = run_stages(keras_models["models"] / name, keras_models["pool"], str(tmp_path / "r"))
    record = storage.read_json(layout.model_json)
    assert (record["source"]["framework"], record["source"]["format"]) == ("tensorflow", fmt)
    assert record["input"]["name"] == "input_layer"
    assert not isinstance(record["input"]["shape"][0], int)
    assert record["class_output"]["name"] == "dense"  # a Sequential model's last layer
    assert record["output_kind"] == "probabilities"
    assert record["parity"]["passed"] and record["parity"]["max_abs_diff"] < 1e-5
    assert record["checks_passed"]
    reference = np.load(keras_models["models"] / "sequential_reference.npy")
    session = ort.InferenceSession(layout.model_onnx, providers=["CPUExecutionProvider"])
    (probs,) = session.run(["dense"], {"input_layer": keras_models["x"]})
    np.testing.assert_allclose(probs, reference, rtol=1e-4, atol=1e-6)
    gini = 1 - (reference.astype(np.float64) ** 2).sum(axis=1)
    ranking = storage.read_table(layout.ranking).sort_by("sample_id")
    np.testing.assert_allclose(ranking.column("gini").to_numpy(), gini, atol=1e-5)


def _expect_failure(tmp_path, model, data, match, stage):
    root = str(tmp_path / "runs")
    with pytest.raises(TestprioError, match=match):
        run_stages(model, data, root, "bad")
    record = storage.read_json(storage.join(root, "bad", "run.json"))
    assert (record["status"], record["failed_stage"]) == ("failed", stage)


def test_saved_model_without_its_variables(tmp_path, keras_models):
    copy = shutil.copytree(keras_models["models"] / "saved_model", tmp_path / "sm")
    shutil.rmtree(copy / "variables")
    _expect_failure(
        tmp_path,
        copy,
        keras_models["pool"],
        r"SavedModel .*sm has saved_model.pb but no variables/variables.index beside it",
        "start",
    )


def test_truncated_h5_file_fails_to_load(tmp_path, keras_models):
    whole = (keras_models["models"] / "model.h5").read_bytes()
    cut = tmp_path / "cut.h5"
    cut.write_bytes(whole[: len(whole) // 2])
    _expect_failure(
        tmp_path,
        cut,
        keras_models["pool"],
        r"TensorFlow could not load model cut.h5 \(.*\); check that it is complete .* and save "
        r"it again with model.save\('model.h5'\)\.",
        "convert",
    )


def test_truncated_keras_file(tmp_path, keras_models):
    whole = (keras_models["models"] / "model.keras").read_bytes()
    cut = tmp_path / "cut.keras"
    cut.write_bytes(whole[: len(whole) - 100])
    _expect_failure(
        tmp_path, cut, keras_models["pool"], r"model cut.keras is a damaged zip archive", "start"
    )


@pytest.mark.pipeline
def test_pipeline_runs_from_a_keras_file(tmp_path, keras_models):
    layout = cli.run_pipeline_locally(
        {
            "model": str(keras_models["models"] / "model.keras"),
            "data": str(keras_models["pool"]),
            "root": str(tmp_path / "runs"),
            "shard_size": 40,
        }
    )
    record = storage.read_json(layout.run_json)
    assert record["status"] == "succeeded", record
    model_json = storage.read_json(layout.model_json)
    assert model_json["source"]["format"] == "keras" and model_json["parity"]["passed"]
    ranking = storage.read_table(layout.ranking).sort_by("sample_id")
    reference = keras_models["reference"]
    gini = 1 - (reference.astype(np.float64) ** 2).sum(axis=1)
    np.testing.assert_allclose(ranking.column("gini").to_numpy(), gini, atol=1e-5)
    accuracy = float((reference.argmax(axis=1) == keras_models["y"]).mean())
    summary = storage.read_json(layout.summary)
    assert summary["labels"]["accuracy"] == pytest.approx(accuracy, abs=1e-6)
