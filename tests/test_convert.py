"""The convert stage without a framework in this process: format detection (on local disk and
on an emulated gs:// bucket), model checks, parity failures, operator and loading errors, the
converter process, and the pipeline built per framework."""

from __future__ import annotations

import logging
import pickle
import re
import uuid
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

from testprio import cli, convert, storage
from testprio.convert.checks import (
    CHECK_TOLERANCE,
    batch_independent,
    class_rows,
    deterministic,
    finite_outputs,
    max_difference,
)
from testprio.errors import TestprioError
from tests.conftest import BUCKET, linear_classifier, make_deterministic, write_pool
from tests.stagekit import run_stages

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def testprio_log(caplog):
    """caplog that also sees testprio's records: its logger stops propagating once a stage
    has configured it (testprio.log.configure), so caplog's handler goes on it directly."""
    logger = logging.getLogger("testprio")
    logger.addHandler(caplog.handler)
    with caplog.at_level("WARNING", logger="testprio"):
        yield caplog
    logger.removeHandler(caplog.handler)


@pytest.fixture
def pool(tmp_path):
    x = make_deterministic(7).uniform(0, 1, (80, 1, 8, 8)).astype(np.float32)
    return write_pool(tmp_path / "pool.npz", x), x


def _expect_failure(tmp_path, model, data, match, stage, **overrides):
    root = str(tmp_path / "runs")
    with pytest.raises(TestprioError, match=match):
        run_stages(model, data, root, "bad", **overrides)
    record = storage.read_json(storage.join(root, "bad", "run.json"))
    assert (record["status"], record["failed_stage"]) == ("failed", stage)
    assert record["error"] and "\n" not in record["error"]
    assert not storage.exists(storage.join(root, "bad", "model", "model.onnx"))
    return record


# --- detection ---------------------------------------------------------------------------


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


PIR_JSON = b'{"base_code":{"magic":"pir","trainable":true,"version":4},"program":{}}'


def _write(folder: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


# Each layout: files written under a folder, the --model path inside it, the format.
DETECTED_LAYOUTS = {
    "onnx": ({"m.onnx": b"\x08\x07"}, "m.onnx", "onnx"),
    "torchscript": (
        {},
        "ts.pt",
        "torchscript",
    ),
    "exported_program": ({}, "ep.pt2", "exported_program"),
    "keras": ({}, "model.keras", "keras"),
    "keras_h5": ({"model.h5": b"\x89HDF\r\n\x1a\n" + bytes(64)}, "model.h5", "keras_h5"),
    "saved_model": (
        {
            "sm/saved_model.pb": b"pb",
            "sm/variables/variables.index": b"i",
            "sm/variables/variables.data-00000-of-00001": b"d",
        },
        "sm",
        "saved_model",
    ),
    "paddle_json_file": (
        {"pd/inference.json": PIR_JSON, "pd/inference.pdiparams": b"w"},
        "pd/inference.json",
        "paddle_json",
    ),
    "paddle_json_folder": (
        {"pd/inference.json": PIR_JSON, "pd/inference.pdiparams": b"w", "pd/x.txt": b""},
        "pd",
        "paddle_json",
    ),
    "paddle_pdmodel": (
        {"old/m.pdmodel": b"\n\x02", "old/m.pdiparams": b"w"},
        "old/m.pdmodel",
        "paddle_pdmodel",
    ),
}


def _lay_out(folder: Path, case: str) -> str:
    files, model, _ = DETECTED_LAYOUTS[case]
    _write(folder, files)
    if case == "torchscript":
        _zip(folder / model, {"ts/data.pkl": b"", "ts/code/__torch__/m.py": b"", "ts/version": b""})
    elif case == "exported_program":
        _zip(folder / model, {"ep/archive_format": b"pt2", "ep/models/model.json": b"{}"})
    elif case == "keras":
        _zip(folder / model, {"metadata.json": b"{}", "config.json": b"{}"})
    return model


@pytest.mark.parametrize("case", sorted(DETECTED_LAYOUTS))
def test_formats_are_detected_from_content(tmp_path, case):
    model = _lay_out(tmp_path, case)
    detected = convert.detect(str(tmp_path / model))
    expected = convert.MODEL_FORMATS[DETECTED_LAYOUTS[case][2]]
    assert detected.format == expected
    assert convert.resolve_framework(str(tmp_path / model), "auto") == expected.framework
    assert convert.resolve_framework(str(tmp_path / model), expected.framework)
    if expected.weights:  # the weights travel with the graph
        assert len(detected.files) >= 2


@pytest.mark.parametrize("case", ["saved_model", "paddle_json_file", "torchscript"])
def test_detection_and_fetching_on_gcs(gcs_emulator, tmp_path, case):
    local = tmp_path / "local"
    local.mkdir()
    model = _lay_out(local, case)
    remote = f"gs://{BUCKET}/models-{case}-{uuid.uuid4().hex[:6]}"
    for path in local.rglob("*"):
        if path.is_file():
            storage.write_bytes(
                storage.join(remote, str(path.relative_to(local))), path.read_bytes()
            )
    detected = convert.detect(storage.join(remote, model))
    assert detected.format.name == DETECTED_LAYOUTS[case][2]
    with storage.local_folder(detected.base, list(detected.files)) as folder:
        for name in detected.files:
            relative = Path(storage.join(detected.base, name)[len(remote) + 1 :])
            assert (Path(folder) / name).read_bytes() == (local / relative).read_bytes()


def test_list_tree_and_is_folder(root):
    folder = storage.join(root, "tree")
    for name in ("a.txt", "sub/b.txt", "sub/deeper/c.txt"):
        storage.write_bytes(storage.join(folder, name), b"x")
    assert storage.list_tree(folder) == ["a.txt", "sub/b.txt", "sub/deeper/c.txt"]
    assert storage.is_folder(folder) and storage.is_folder(storage.join(folder, "sub"))
    assert not storage.is_folder(storage.join(folder, "a.txt"))


def test_pickled_module_is_told_from_a_state_dict(tmp_path):
    module = _zip(tmp_path / "m.pt", {"m/data.pkl": b"ctorch.nn.modules.linear\nLinear\n"})
    weights = _zip(tmp_path / "w.pt", {"w/data.pkl": pickle.dumps({"weight": 1})})
    with pytest.raises(TestprioError, match=r"is a pickled PyTorch nn.Module"):
        convert.detect(str(module))
    with pytest.raises(TestprioError, match=r"is a PyTorch state_dict .* holds weights only"):
        convert.detect(str(weights))


@pytest.mark.parametrize(
    ("files", "model", "match"),
    [
        (
            {"sm/saved_model.pb": b"pb", "sm/assets/a.txt": b""},
            "sm",
            r"SavedModel .*sm has saved_model.pb but no variables/variables.index beside it; "
            r"copy the whole folder",
        ),
        (
            {"pd/inference.json": PIR_JSON},
            "pd/inference.json",
            r"model inference.json has no weights file inference.pdiparams beside it",
        ),
        (
            {"old/m.pdmodel": b"\n\x02", "old/other.pdiparams": b"w"},
            "old",
            r"model old has no weights file m.pdiparams beside it",
        ),
        (
            {"two/a.pdmodel": b"", "two/b.json": PIR_JSON},
            "two",
            r"holds several Paddle inference models \(a.pdmodel, b.json\)",
        ),
        ({"model.bin": b"\x00" * 10}, "model.bin", r"cannot tell which framework saved"),
        (
            {"docs/readme.txt": b"hi"},
            "docs",
            r"folder .*docs given as --model is not a model folder \(it holds readme.txt\); "
            r"--model takes a TensorFlow SavedModel folder .* or a Paddle inference model folder "
            r".*, so point --model at the folder or file your framework's save call wrote\.",
        ),
        (
            {"model.h5": b"not hdf5 at all"},
            "model.h5",
            r"model model.h5 has the extension .h5 of a Keras HDF5 model file \(.h5\) but not "
            r"its content, so it is truncated or corrupt; save it again with model.save",
        ),
        (
            {"model.keras": b"PK\x03\x04" + bytes(40)},
            "model.keras",
            r"model model.keras is a damaged zip archive",
        ),
    ],
)
def test_detection_errors(tmp_path, files, model, match):
    _write(tmp_path, files)
    with pytest.raises(TestprioError, match=match):
        convert.detect(str(tmp_path / model))


def test_empty_model_folder_is_one_sentence(tmp_path, pool):
    """An empty folder used to fail with IsADirectoryError and a traceback."""
    (tmp_path / "model").mkdir()
    _expect_failure(
        tmp_path,
        tmp_path / "model",
        pool[0],
        r"^folder .*model given as --model is empty; --model takes a TensorFlow SavedModel "
        r"folder \(saved_model.pb with variables/, as model.export or tf.saved_model.save "
        r"writes it\) or a Paddle inference model folder \(NAME.json or NAME.pdmodel with "
        r"NAME.pdiparams, as paddle.jit.save writes it\), or an ONNX \(.onnx\), PyTorch "
        r"TorchScript \(.pt\), PyTorch exported program \(.pt2\) or Keras \(.keras, .h5\) "
        r"file, so point --model at the folder or file your framework's save call wrote\.$",
        "start",
    )


def test_folder_without_a_model_names_the_models_inside(root):
    """A folder that holds a model file or a SavedModel one level down: the sentence names
    them as what to pass (on local disk and on gs://, where folders are prefixes)."""
    outer = storage.join(root, "outer")
    for name in ("notes.txt", "model.onnx", "export/saved_model.pb", "logs/events.txt"):
        storage.write_bytes(storage.join(outer, name), b"x")
    with pytest.raises(
        TestprioError,
        match=rf"^folder {re.escape(outer)} given as --model is not a model folder \(it holds "
        r"model.onnx, notes.txt, export/, logs/\); --model takes .*, so pass "
        rf"{re.escape(outer)}/model.onnx or {re.escape(outer)}/export as --model instead\.$",
    ):
        convert.detect(outer)


def test_framework_mismatch_and_unknown_framework(tmp_path):
    _write(tmp_path, {"model.h5": b"\x89HDF\r\n\x1a\n" + bytes(8)})
    with pytest.raises(
        TestprioError,
        match=r"--framework pytorch does not match model model.h5, which is a Keras HDF5 model "
        r"file \(.h5\); pass --framework tensorflow or auto\.",
    ):
        convert.detect(str(tmp_path / "model.h5"), "pytorch")
    with pytest.raises(TestprioError, match=r"--framework 'mxnet' is not supported"):
        convert.detect(str(tmp_path / "model.h5"), "mxnet")


def test_onnx_under_another_extension_when_named(tmp_path, pool):
    model = tmp_path / "model.bin"
    model.write_bytes(linear_classifier(tmp_path / "m.onnx").read_bytes())
    layout = run_stages(model, pool[0], str(tmp_path / "runs"), framework="onnx")
    assert storage.read_json(layout.model_json)["source"]["format"] == "onnx"


# --- model.json, model checks ------------------------------------------------------------


def test_onnx_model_json_has_facts_checks_and_no_parity(tmp_path, pool):
    layout = run_stages(linear_classifier(tmp_path / "m.onnx"), pool[0], str(tmp_path / "r"))
    record = storage.read_json(layout.model_json)
    assert record["source"]["format"] == "onnx" and record["conversion"] is None
    assert record["parity"] is None
    for key in (
        "producer_name",
        "producer_version",
        "opsets",
        "ir_version",
        "inputs",
        "outputs",
        "node_count",
        "op_types",
        "parameter_count",
        "size_bytes",
        "conversion_seconds",
    ):
        assert key in record, key
    assert record["checks_passed"] is True
    assert record["checks"]["class_rows"]["classes"] == 10
    assert record["checks"]["batch_independent"]["samples"] == 8


def _batch_dependent(path: Path) -> Path:
    """Logits minus their mean over the batch: a sample's output depends on its batch."""
    w = numpy_helper.from_array(make_deterministic(2).normal(0, 1, (64, 3)).astype("f"), "W")
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["input"], ["flat"]),
            helper.make_node("MatMul", ["flat", "W"], ["raw"]),
            helper.make_node("ReduceMean", ["raw"], ["mean"], axes=[0], keepdims=1),
            helper.make_node("Sub", ["raw", "mean"], ["logits"]),
        ],
        "batchy",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_failed_model_check_warns_and_is_recorded(tmp_path, pool, testprio_log):
    model = _batch_dependent(tmp_path / "batchy.onnx")
    layout = run_stages(model, pool[0], str(tmp_path / "r"))
    record = storage.read_json(layout.model_json)
    assert record["checks_passed"] is False
    assert record["checks"]["batch_independent"]["passed"] is False
    assert record["checks"]["deterministic"]["passed"] is True
    assert "failed model check(s): batch_independent" in testprio_log.text
    assert storage.exists(layout.ranking)


def _with_fixed_batch(source: Path, target: Path, batch: int) -> Path:
    """The model of ``source`` with its input's and outputs' batch axis fixed at ``batch``."""
    model = onnx.load(source)
    for value in [*model.graph.input, *model.graph.output]:
        value.type.tensor_type.shape.dim[0].dim_value = batch
    onnx.save(model, target)
    return target


@pytest.mark.parametrize("batch", [1, 7])
def test_onnx_model_with_a_fixed_batch_scores_that_many_at_a_time(
    tmp_path, pool, testprio_log, batch
):
    """ONNX Runtime refuses any other batch size for such a model; it used to fail the run
    ("Got invalid dimensions for input"). 80 samples in batches of 7 pad the last one."""
    dynamic = linear_classifier(tmp_path / "dynamic.onnx")
    fixed = _with_fixed_batch(dynamic, tmp_path / "fixed.onnx", batch)
    expected = run_stages(dynamic, pool[0], str(tmp_path / "runs"), "dynamic")
    layout = run_stages(fixed, pool[0], str(tmp_path / "runs"), "fixed")
    record = storage.read_json(layout.model_json)
    assert record["input"]["shape"] == [batch, 1, 8, 8] and record["fixed_batch_size"] == batch
    assert record["checks_passed"]
    assert storage.read_json(expected.model_json)["fixed_batch_size"] is None
    assert storage.read_table(layout.ranking).equals(storage.read_table(expected.ranking))
    assert (
        f"model fixed.onnx fixes the batch axis of input 'input' at {batch}, so testprio runs "
        f"it {batch} sample(s) at a time (slower); for full speed save it with a dynamic batch "
        "axis, e.g. torch.onnx.export(model, (example,), 'model.onnx', dynamo=True, "
        "dynamic_shapes=({0: torch.export.Dim('batch')},)) from PyTorch, or python -m "
        "tf2onnx.convert --saved-model DIR"
    ) in testprio_log.text


def test_fixed_batch_model_that_fails_names_its_batch_size(tmp_path, pool):
    """A model that fixes its batch at 2 in its input but at 3 inside: a Reshape to a shape
    computed from the data, which no shape inference or constant folding can see."""
    f32 = {"zero": 0.0, "three": 3.0}
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMax", ["input"], ["peak"], keepdims=0),
            helper.make_node("Mul", ["peak", "zero"], ["nothing"]),
            helper.make_node("Add", ["nothing", "three"], ["rows_float"]),
            helper.make_node("Cast", ["rows_float"], ["rows"], to=TensorProto.INT64),
            helper.make_node("Unsqueeze", ["rows", "axis0"], ["rows_1d"]),
            helper.make_node("Concat", ["rows_1d", "rest"], ["shape"], axis=0),
            helper.make_node("Reshape", ["input", "shape"], ["flat"]),
            helper.make_node("MatMul", ["flat", "W"], ["logits"]),
        ],
        "fixed",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [2, 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 4])],
        initializer=[
            *(numpy_helper.from_array(np.array(v, np.float32), n) for n, v in f32.items()),
            numpy_helper.from_array(np.array([0], np.int64), "axis0"),
            numpy_helper.from_array(np.array([-1], np.int64), "rest"),
            numpy_helper.from_array(np.ones((64, 4), np.float32), "W"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "odd.onnx")
    _expect_failure(
        tmp_path,
        tmp_path / "odd.onnx",
        pool[0],
        r"model odd.onnx failed on a batch of shape \(2, 1, 8, 8\) \(.*\); its input fixes "
        r"the batch size at 2; check that the data matches the model's input\.",
        "convert",
    )


def test_strict_model_checks_fail_the_run(tmp_path, pool):
    _expect_failure(
        tmp_path,
        _batch_dependent(tmp_path / "batchy.onnx"),
        pool[0],
        r"model batchy.onnx failed 1 model check\(s\) \(batch_independent: 8 samples alone "
        r"and inside a batch of 64 differ by at most .*\); fix the model .* or run without "
        r"--strict-model-checks to only warn\.",
        "convert",
        strict_model_checks=True,
    )


def test_checks_on_planted_predictors():
    x = make_deterministic(3).normal(0, 1, (12, 4)).astype(np.float32)
    ids = np.arange(100, 112)
    w = make_deterministic(4).normal(0, 1, (4, 3))

    def probs(batch):
        logits = batch @ w
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    assert all(check(probs, x, ids)["passed"] for check in (deterministic, batch_independent))
    assert finite_outputs(probs, x, ids)["passed"] and class_rows(probs, x, ids)["classes"] == 3

    rng = make_deterministic(5)
    noisy = deterministic(lambda b: probs(b + rng.normal(0, 0.1, b.shape)), x, ids)
    assert not noisy["passed"] and noisy["max_difference"] > CHECK_TOLERANCE

    batchy = batch_independent(lambda b: probs(b - b.mean(axis=0)), x, ids)
    assert not batchy["passed"] and batchy["samples"] == 8 and batchy["batch"] == 12

    def nan_for_two(batch):
        out = probs(batch)
        out[np.isin(batch[:, 0], x[[2, 7], 0])] = np.nan
        return out

    finite = finite_outputs(nan_for_two, x, ids)
    assert not finite["passed"] and finite["sample_ids"] == [102, 107]
    assert "sample_id 102, 107" in finite["detail"]
    # NaN in the same places on both runs is the same output; in one of them, infinitely not.
    assert deterministic(nan_for_two, x, ids)["passed"]
    assert max_difference(np.array([np.nan, 1.0]), np.array([0.5, 1.0])) == np.inf

    not_probabilities = class_rows(lambda b: probs(b) * 2, x, ids)
    assert not not_probabilities["passed"]
    single_class = class_rows(lambda b: probs(b)[:, :1], x, ids)
    assert not single_class["passed"]


# --- parity ------------------------------------------------------------------------------


def test_compare_outputs_figures():
    source = np.array([[2.0, 1.0, 0.0], [0.0, 0.1, 0.0]])
    converted = source + np.array([[0.0, 0.0, 0.0], [0.0, -0.2, 0.0]])
    figures = convert.compare_outputs(converted, source, "logits", 1e-3)
    assert figures["max_abs_diff"] == pytest.approx(0.2)
    assert figures["max_rel_diff"] == pytest.approx(2.0)  # -0.1 against 0.1
    assert figures["predicted_class_differences"] == 1 and figures["predicted_class_differs"]
    assert figures["max_abs_diff_probabilities"] > 1e-3 and not figures["passed"]
    assert convert.compare_outputs(source, source, "logits", 0.0)["passed"]


def test_parity_failure_fails_the_run_with_the_figures(tmp_path, pool, monkeypatch):
    """A converter that drops every bias: parity against PyTorch itself catches it."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 5), nn.ReLU(), nn.Linear(5, 4)).eval()
    with torch.no_grad():
        for layer in (net[1], net[3]):
            layer.bias.fill_(0.5)
    model = tmp_path / "biased.pt"
    torch.jit.save(torch.jit.script(net), model)
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the converter process imports tests.*
    lossy = convert.Converter("pytorch", "PyTorch", "tests.lossy_converter")
    monkeypatch.setitem(convert.CONVERTERS, "pytorch", lossy)
    record = _expect_failure(
        tmp_path,
        model,
        pool[0],
        r"the ONNX conversion of model biased.pt does not match PyTorch: on 64 samples its "
        r"class probabilities differ by up to [0-9.e-]+ \(tolerance 0.001; raw outputs by up "
        r"to [0-9.e-]+, relative [0-9.e+-]+\) and the predicted class differs for \d+; check "
        r"the model's layers",
        "convert",
    )
    assert not storage.exists(storage.join(str(tmp_path / "runs"), "bad", "model", "model.json"))
    # With the tolerance raised past the difference the same conversion passes, recorded.
    layout = run_stages(model, pool[0], str(tmp_path / "ok"), parity_tolerance=1.0)
    parity = storage.read_json(layout.model_json)["parity"]
    assert parity["passed"] and parity["max_abs_diff_probabilities"] > 1e-3
    assert record["error"].startswith("the ONNX conversion of model biased.pt")


# --- other errors ------------------------------------------------------------------------


def test_unknown_operator_is_named_with_its_opset(tmp_path, pool):
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["input"], ["flat"]),
            helper.make_node("Sparkle", ["flat"], ["logits"], name="sparkle_1"),
        ],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 64])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "odd.onnx")
    _expect_failure(
        tmp_path,
        tmp_path / "odd.onnx",
        pool[0],
        r"model odd.onnx uses the operator 'Sparkle' \(node 'sparkle_1'\), which ONNX opset 17 "
        r"does not define, so the converter could not translate it",
        "convert",
    )


def test_operator_onnx_runtime_cannot_run(tmp_path, pool):
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["input"], ["flat"]),
            helper.make_node("Glow", ["flat"], ["logits"], domain="com.example"),
        ],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 64])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)]
    )
    model.ir_version = 8
    onnx.save(model, tmp_path / "custom.onnx")
    _expect_failure(
        tmp_path,
        tmp_path / "custom.onnx",
        pool[0],
        r"ONNX Runtime [0-9.]+ cannot load model custom.onnx \(.*\); the model may use an "
        r"operator this ONNX Runtime does not implement",
        "convert",
    )


def test_bad_parity_tolerance_fails_at_start(tmp_path, pool):
    _expect_failure(
        tmp_path,
        linear_classifier(tmp_path / "m.onnx"),
        pool[0],
        r"--parity-tolerance -1 must be a finite number, zero or more",
        "start",
        parity_tolerance=-1,
    )


def test_converter_process_that_dies_gives_one_sentence(tmp_path, pool, monkeypatch):
    folder = tmp_path / "pkg"
    folder.mkdir()
    (folder / "dying_converter.py").write_text(
        "import os\n\n\ndef convert(*args, **kwargs):\n    os._exit(7)\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(folder))
    model = _zip(tmp_path / "m.pt", {"m/constants.pkl": b"", "m/data.pkl": b""})
    monkeypatch.setitem(
        convert.CONVERTERS, "pytorch", convert.Converter("pytorch", "PyTorch", "dying_converter")
    )
    _expect_failure(
        tmp_path,
        model,
        pool[0],
        r"the PyTorch converter stopped without a result \(exit status 7\) while converting "
        r"model m.pt",
        "convert",
    )


def test_pipeline_built_for_one_framework_refuses_another(tmp_path, pool):
    from testprio import stages

    layout = run_stages(linear_classifier(tmp_path / "m.onnx"), pool[0], str(tmp_path / "r"))
    _lay_out(tmp_path, "keras")
    with pytest.raises(
        TestprioError,
        match=r"model model.keras is a Keras model file \(.keras\), but this pipeline was built "
        r"to convert PyTorch models; build it for tensorflow \(testprio compile --framework "
        r"tensorflow\)",
    ):
        stages.convert_model(
            layout.uri, str(tmp_path / "model.keras"), "auto", "auto", "", converter="pytorch"
        )


# --- the pipeline per framework ----------------------------------------------------------


def _compiled(tmp_path, framework):
    out = tmp_path / framework
    assert cli.main(["compile", "--out", str(out), "--framework", framework]) == 0
    name = "prioritize" if framework == "onnx" else f"prioritize-{framework}"
    pipeline = next(yaml.safe_load_all((out / f"{name}.yaml").read_text()))
    return pipeline


@pytest.mark.parametrize(
    ("framework", "image"),
    [
        ("onnx", "/runtime:"),
        ("pytorch", "/convert-pytorch:"),
        ("tensorflow", "/convert-tensorflow:"),
        ("paddle", "/convert-paddle:"),
    ],
)
def test_compile_picks_the_convert_component_and_image(tmp_path, framework, image):
    pipeline = _compiled(tmp_path, framework)
    executors = pipeline["deploymentSpec"]["executors"]
    convert_executors = [name for name in executors if name.startswith("exec-convert")]
    assert convert_executors == [f"exec-convert-{framework}"]
    assert image in executors[f"exec-convert-{framework}"]["container"]["image"]
    parameters = pipeline["root"]["inputDefinitions"]["parameters"]
    for name in ("parity_tolerance", "strict_model_checks"):  # as testprio run's defaults
        assert parameters[name]["defaultValue"] == cli.RUN_DEFAULTS[name], name
    assert cli.RUN_DEFAULTS["parity_tolerance"] == convert.DEFAULT_PARITY_TOLERANCE


def test_compile_refuses_an_unknown_framework(tmp_path, capsys):
    assert cli.main(["compile", "--out", str(tmp_path), "--framework", "caffe"]) == 1
    assert "--framework caffe is not one of onnx, pytorch, tensorflow, paddle." in (
        capsys.readouterr().err
    )


def test_the_framework_worker_loads_no_runtime_or_arrow():
    """The child process that imports TensorFlow or Paddle gets only the worker module: the
    package's stage (ONNX Runtime, Arrow, the ingest helpers) stays out of it."""
    import subprocess
    import sys

    probe = (
        "import sys, testprio.convert.worker, testprio.convert.checks; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('onnxruntime', 'pyarrow', 'PIL', 'onnx') or m.startswith('testprio.')))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == "['testprio.convert', 'testprio.convert.checks', 'testprio.convert.worker']"
    # The stage's names still resolve through the package.
    assert convert.convert is convert.stage.convert
    assert "resolve_framework" in dir(convert)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        convert.nope  # noqa: B018
