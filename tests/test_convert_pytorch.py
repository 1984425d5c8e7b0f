"""PyTorch models through the convert stage: TorchScript and exported programs, saved in the
test from a small seeded CNN, converted to ONNX and checked against PyTorch's own outputs."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pytest
import torch
from torch import nn

from testprio import cli, storage
from testprio.errors import TestprioError
from testprio.metrics import softmax
from tests.conftest import write_pool
from tests.stagekit import run_stages

# Saving TorchScript is what these tests are about, deprecated in torch 2.13 or not.
pytestmark = pytest.mark.filterwarnings(r"ignore:`torch\.jit.*deprecated:DeprecationWarning")


def _cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 8 * 8, 10),
    ).eval()


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    from sklearn.datasets import load_digits

    return (load_digits().images[:120] / 16.0).astype(np.float32)[:, None]


@pytest.fixture(scope="module")
def saved(tmp_path_factory, digits):
    """The CNN saved four ways, its logits on the digits, and the digits as a pool."""
    folder = tmp_path_factory.mktemp("torch")
    model = _cnn()
    example = torch.from_numpy(digits[:2])
    batch = torch.export.Dim("batch", min=1)
    torch.jit.save(torch.jit.trace(model, example), folder / "traced.pt")
    torch.jit.save(torch.jit.script(model), folder / "scripted.pt")
    exported = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    torch.export.save(exported, folder / "dynamic.pt2")
    fixed = torch.export.export(model, (example[:1],))
    torch.export.save(fixed, folder / "fixed.pt2")
    with torch.no_grad():
        logits = model(torch.from_numpy(digits)).numpy()
    return {
        "folder": folder,
        "logits": logits,
        "pool": write_pool(folder / "pool.npz", digits),
        "x": digits,
    }


def _onnx_logits(layout, x: np.ndarray) -> np.ndarray:
    record = storage.read_json(layout.model_json)
    session = ort.InferenceSession(layout.model_onnx, providers=["CPUExecutionProvider"])
    return session.run([record["class_output"]["name"]], {record["input"]["name"]: x})[0]


def _scored_probs(layout) -> np.ndarray:
    tables = [
        storage.read_table(storage.join(layout.scores_dir, name))
        for name in storage.list_names(layout.scores_dir)
    ]
    table = pa.concat_tables(tables).sort_by("sample_id")
    return np.stack(table.column("probs").to_numpy(zero_copy_only=False))


@pytest.mark.parametrize(
    ("name", "fmt", "example_from"),
    [
        ("traced.pt", "torchscript", "model"),
        ("scripted.pt", "torchscript", "pool"),
        ("dynamic.pt2", "exported_program", "model"),
    ],
)
def test_pytorch_model_converts_with_parity(tmp_path, saved, name, fmt, example_from):
    layout = run_stages(saved["folder"] / name, saved["pool"], str(tmp_path / "runs"))
    record = storage.read_json(layout.model_json)
    assert record["source"]["framework"] == "pytorch"
    assert record["source"]["format"] == fmt
    assert record["conversion"]["example_input_from"] == example_from
    assert record["conversion"]["example_input_shape"] == [4, 1, 8, 8]
    assert record["producer_name"] == "pytorch"
    assert record["opsets"]["ai.onnx"] == 18
    assert not isinstance(record["input"]["shape"][0], int)  # dynamic batch axis
    assert record["output_kind"] == "logits"
    parity = record["parity"]
    assert parity["passed"] and parity["samples"] == 64 and parity["random_samples"] == 0
    assert parity["max_abs_diff"] < 1e-4 and not parity["predicted_class_differs"]
    assert record["checks_passed"] and set(record["checks"]) == {
        "deterministic",
        "batch_independent",
        "finite_outputs",
        "class_rows",
    }
    # The ONNX model against PyTorch on every sample, in batches of 120 and of 1.
    np.testing.assert_allclose(
        _onnx_logits(layout, saved["x"]), saved["logits"], rtol=1e-4, atol=1e-5
    )
    np.testing.assert_allclose(
        _onnx_logits(layout, saved["x"][:1]), saved["logits"][:1], rtol=1e-4, atol=1e-5
    )
    np.testing.assert_allclose(_scored_probs(layout), softmax(saved["logits"]), atol=1e-5)


def test_exported_program_with_a_fixed_batch_gets_a_dynamic_one(tmp_path, saved):
    layout = run_stages(saved["folder"] / "fixed.pt2", saved["pool"], str(tmp_path / "runs"))
    record = storage.read_json(layout.model_json)
    assert record["conversion"]["batch_made_dynamic"] is True
    assert record["parity"]["passed"]
    np.testing.assert_allclose(
        _onnx_logits(layout, saved["x"]), saved["logits"], rtol=1e-4, atol=1e-5
    )


def test_input_shape_gives_the_example_input(tmp_path, saved):
    flat = write_pool(tmp_path / "flat.npz", saved["x"].reshape(len(saved["x"]), -1))
    layout = run_stages(
        saved["folder"] / "scripted.pt", flat, str(tmp_path / "runs"), input_shape="1,8,8"
    )
    record = storage.read_json(layout.model_json)
    assert record["conversion"]["example_input_from"] == "--input-shape"
    np.testing.assert_allclose(_scored_probs(layout), softmax(saved["logits"]), atol=1e-5)


def test_small_pool_is_topped_up_with_random_samples_for_parity(tmp_path, saved):
    pool = write_pool(tmp_path / "five.npz", saved["x"][:5])
    layout = run_stages(saved["folder"] / "traced.pt", pool, str(tmp_path / "runs"))
    parity = storage.read_json(layout.model_json)["parity"]
    assert (parity["samples"], parity["pool_samples"], parity["random_samples"]) == (16, 5, 11)
    assert parity["passed"]


# --- errors ------------------------------------------------------------------------------


def _expect_failure(tmp_path, model, data, match, stage, **overrides):
    root = str(tmp_path / "runs")
    with pytest.raises(TestprioError, match=match):
        run_stages(model, data, root, "bad", **overrides)
    record = storage.read_json(storage.join(root, "bad", "run.json"))
    assert (record["status"], record["failed_stage"]) == ("failed", stage)
    assert not storage.exists(storage.join(root, "bad", "model", "model.onnx"))
    return record


def test_pickled_module_is_refused_with_how_to_save_it(tmp_path, saved):
    model = tmp_path / "pickled.pt"
    torch.save(_cnn(), model)
    _expect_failure(
        tmp_path,
        model,
        saved["pool"],
        r"model pickled.pt is a pickled PyTorch nn.Module \(torch.save\), which needs its "
        r"Python class to load and is not portable; save it as TorchScript with "
        r"torch.jit.save\(.*\) or as an exported program with torch.export.save\(",
        "start",
    )


def test_state_dict_is_refused(tmp_path, saved):
    model = tmp_path / "weights.pth"
    torch.save(_cnn().state_dict(), model)
    _expect_failure(
        tmp_path,
        model,
        saved["pool"],
        r"model weights.pth is a PyTorch state_dict \(torch.save\), which holds weights only",
        "start",
    )


def test_truncated_torchscript_file(tmp_path, saved):
    model = tmp_path / "cut.pt"
    whole = (saved["folder"] / "traced.pt").read_bytes()
    model.write_bytes(whole[: len(whole) // 2])
    _expect_failure(
        tmp_path, model, saved["pool"], r"model cut.pt is a damaged zip archive", "start"
    )


def test_framework_named_but_not_matching_the_file(tmp_path, saved):
    _expect_failure(
        tmp_path,
        saved["folder"] / "traced.pt",
        saved["pool"],
        r"--framework tensorflow does not match model traced.pt, which is a PyTorch "
        r"TorchScript file; pass --framework pytorch or auto\.",
        "start",
        framework="tensorflow",
    )


class _Digamma(nn.Module):
    def forward(self, x):
        return torch.special.digamma(x.flatten(1)[:, :3] + 1.0)


def test_unsupported_operator_is_named_with_the_opset(tmp_path, saved):
    model = tmp_path / "digamma.pt"
    torch.jit.save(torch.jit.trace(_Digamma(), torch.ones(2, 1, 8, 8)), model)
    _expect_failure(
        tmp_path,
        model,
        saved["pool"],
        r"model digamma.pt uses the PyTorch operator 'aten::digamma', which torch.onnx "
        r"cannot convert to ONNX opset 18",
        "convert",
    )


class _Total(nn.Module):
    def forward(self, x):
        return x.flatten(1).sum(1)


def test_model_without_class_scores(tmp_path, saved):
    model = tmp_path / "total.pt"
    torch.jit.save(torch.jit.trace(_Total(), torch.ones(2, 1, 8, 8)), model)
    _expect_failure(
        tmp_path,
        model,
        saved["pool"],
        r"model total.pt has no output of per-class scores \(outputs: 'output'",
        "convert",
    )


def test_model_that_does_not_fit_the_pool(tmp_path, saved):
    wide = np.random.default_rng(0).random((10, 1, 8, 9), dtype=np.float32)
    wrong = write_pool(tmp_path / "wide.npz", wide)
    _expect_failure(
        tmp_path,
        saved["folder"] / "dynamic.pt2",
        wrong,
        r"model input 'input' of dynamic.pt2 expects shape \(N, 1, 8, 8\) but the data "
        r"samples have shape \(N, 1, 8, 9\)",
        "convert",
    )


def test_cli_names_the_framework_mismatch_in_one_sentence(tmp_path, saved, capsys):
    code = cli.main(
        [
            "run",
            "--model",
            str(saved["folder"] / "traced.pt"),
            "--data",
            str(saved["pool"]),
            "--root",
            str(tmp_path / "runs"),
            "--framework",
            "paddle",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err == [
        "testprio: error: --framework paddle does not match model traced.pt, which is a "
        "PyTorch TorchScript file; pass --framework pytorch or auto."
    ]


# --- the whole pipeline ------------------------------------------------------------------


@pytest.mark.pipeline
def test_pipeline_runs_from_a_torchscript_file(tmp_path):
    """The demo's digits CNN, trained briefly, saved as TorchScript and ranked by KFP."""
    from demo.train_digits import build_model, load_split, set_determinism, train

    set_determinism(0)
    x_train, y_train, x_pool, y_pool = load_split(0)
    model = train(build_model(), x_train, y_train, epochs=3, seed=0)
    path = tmp_path / "digits.pt"
    torch.jit.save(torch.jit.script(model), path)
    with torch.no_grad():
        logits = model(torch.from_numpy(x_pool)).numpy()
    torch.use_deterministic_algorithms(False)
    pool = write_pool(tmp_path / "pool.npz", x_pool, y_pool)

    layout = cli.run_pipeline_locally(
        {"model": str(path), "data": str(pool), "root": str(tmp_path / "runs"), "shard_size": 500}
    )
    record = storage.read_json(layout.run_json)
    assert record["status"] == "succeeded", record
    assert record["parameters"]["framework"] == "auto"
    model_json = storage.read_json(layout.model_json)
    assert model_json["source"]["format"] == "torchscript"
    assert model_json["parity"]["passed"]
    np.testing.assert_allclose(_scored_probs(layout), softmax(logits), atol=1e-5)
    summary = storage.read_json(layout.summary)
    accuracy = float((logits.argmax(axis=1) == y_pool).mean())
    assert summary["labels"]["accuracy"] == pytest.approx(accuracy, abs=1e-6)
