"""Convert checks and the score stage: outputs, output kinds, and every error sentence."""

import logging

import numpy as np
import onnx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from onnx import TensorProto, helper, numpy_helper

from testprio import storage
from testprio.errors import TestprioError
from testprio.ingest import SHARD_FORMAT, SHARD_FORMAT_KEY, shard_format, shard_tensors
from testprio.metrics import softmax
from testprio.score import score_shard, scores_uri_for
from tests.conftest import linear_classifier, make_deterministic, reference_logits, write_pool
from tests.stagekit import run_stages


@pytest.fixture
def pool(tmp_path):
    rng = make_deterministic(5)
    x = rng.normal(0, 1, (90, 1, 8, 8)).astype(np.float32)
    return write_pool(tmp_path / "pool.npz", x, rng.integers(0, 10, 90)), x


def _scores(layout):
    tables = [
        storage.read_table(storage.join(layout.scores_dir, name))
        for name in storage.list_names(layout.scores_dir)
    ]
    return pa.concat_tables(tables).sort_by("sample_id")


def _folder_table(layout, folder):
    """Every shard file of ``{run}/{folder}/``, concatenated in shard order."""
    where = storage.join(layout.uri, folder)
    names = storage.list_names(where)
    return pa.concat_tables([storage.read_table(storage.join(where, name)) for name in names])


def _save_graph(path, nodes, inputs, outputs, initializers=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def _float_input(name="input", shape=("N", 1, 8, 8)):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def test_probs_match_reference_softmax_of_logits(tmp_path, pool):
    path, x = pool
    model = linear_classifier(tmp_path / "m.onnx")
    layout = run_stages(model, path, str(tmp_path / "r"), shard_size=40)
    table = _scores(layout)
    expected = softmax(reference_logits(x, model))
    probs = np.stack(table.column("probs").to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(probs, expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(table.column("predicted").to_numpy(), expected.argmax(axis=1))
    model_json = storage.read_json(layout.model_json)
    assert model_json["output_kind"] == "logits"
    assert model_json["class_output"]["name"] == "logits"
    assert model_json["parameter_count"] == 64 * 10 + 10
    assert model_json["op_types"] == {"Add": 1, "Flatten": 1, "MatMul": 1}


def test_probabilities_model_is_not_softmaxed_twice(tmp_path, pool):
    path, x = pool
    model = linear_classifier(tmp_path / "p.onnx", softmax=True)
    layout = run_stages(model, path, str(tmp_path / "r"))
    probs = np.stack(_scores(layout).column("probs").to_numpy(zero_copy_only=False))
    once = softmax(reference_logits(x, model))
    np.testing.assert_allclose(probs, once, rtol=1e-4, atol=1e-6)
    assert not np.allclose(probs, softmax(once), atol=1e-3)
    model_json = storage.read_json(layout.model_json)
    assert (model_json["output_kind"], model_json["output_kind_source"]) == (
        "probabilities",
        "detected",
    )
    assert model_json["output_from_softmax_node"] is True


def test_output_kind_override_is_obeyed(tmp_path, pool):
    path, x = pool
    model = linear_classifier(tmp_path / "p.onnx", softmax=True)
    layout = run_stages(model, path, str(tmp_path / "r"), output_kind="logits")
    probs = np.stack(_scores(layout).column("probs").to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(probs, softmax(softmax(reference_logits(x, model))), rtol=1e-4)


def test_label_and_probabilities_outputs_pick_probabilities(tmp_path, pool):
    path, x = pool
    model = linear_classifier(tmp_path / "sk.onnx", label_output=True)
    layout = run_stages(model, path, str(tmp_path / "r"))
    model_json = storage.read_json(layout.model_json)
    assert model_json["class_output"]["name"] == "probabilities"
    assert model_json["output_kind"] == "probabilities"
    table = _scores(layout)
    expected = softmax(reference_logits(x, model))
    np.testing.assert_allclose(
        table.column("gini").to_numpy(), 1 - (expected**2).sum(axis=1), atol=1e-5
    )


def test_sklearn_classifier_exported_with_two_outputs(tmp_path, digits_pool):
    """A real scikit-learn export (label + probabilities) ranks without a second softmax."""
    import skl2onnx
    from sklearn.linear_model import LogisticRegression

    x, y = digits_pool
    clf = LogisticRegression(max_iter=500).fit(x.reshape(len(x), -1), y)
    onx = skl2onnx.to_onnx(clf, x.reshape(len(x), -1)[:1], options={"zipmap": False})
    model = tmp_path / "sk.onnx"
    model.write_bytes(onx.SerializeToString())
    pool = write_pool(tmp_path / "flat.npz", x.reshape(len(x), -1), y)
    layout = run_stages(model, pool, str(tmp_path / "r"))
    probs = np.stack(_scores(layout).column("probs").to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(probs, clf.predict_proba(x.reshape(len(x), -1)), atol=1e-5)


def test_retried_score_task_skips_a_complete_shard(tmp_path, pool):
    from testprio import stages

    layout = run_stages(linear_classifier(tmp_path / "m.onnx"), pool[0], str(tmp_path / "r"))
    target = storage.join(layout.scores_dir, "shard-00000.parquet")
    before = storage.read_bytes(target)
    assert stages.score_shard(storage.join(layout.data_dir, "shard-00000.parquet"), 64) == target
    assert storage.read_bytes(target) == before


def test_provider_is_logged(tmp_path, pool, caplog):
    with caplog.at_level(logging.INFO, logger="testprio"):
        run_stages(linear_classifier(tmp_path / "m.onnx"), pool[0], str(tmp_path / "r"))
    assert "onnxruntime providers: CPUExecutionProvider" in caplog.text


# --- errors ------------------------------------------------------------------------------


def _expect_failure(tmp_path, model, data, match, **overrides):
    root = str(tmp_path / "runs")
    with pytest.raises(TestprioError, match=match):
        run_stages(model, data, root, "bad", **overrides)
    record = storage.read_json(storage.join(root, "bad", "run.json"))
    assert record["status"] == "failed"
    assert record["error"]
    assert not storage.exists(storage.join(root, "bad", "ranking.parquet"))
    return record


def test_shape_mismatch_names_both_shapes(tmp_path):
    x = make_deterministic(0).random((10, 1, 4, 4), np.float32)
    data = write_pool(tmp_path / "small.npz", x)
    model = linear_classifier(tmp_path / "m.onnx")
    record = _expect_failure(
        tmp_path,
        model,
        data,
        r"model input 'input' of m.onnx expects shape \(N, 1, 8, 8\) but the data samples "
        r"have shape \(N, 1, 4, 4\)",
    )
    assert record["failed_stage"] == "convert"


def test_output_without_class_scores(tmp_path, pool):
    model = _save_graph(
        tmp_path / "sum.onnx",
        [helper.make_node("ReduceSum", ["input"], ["total"], keepdims=1)],
        [_float_input()],
        [helper.make_tensor_value_info("total", TensorProto.FLOAT, ["N", 1, 1, 1])],
    )
    _expect_failure(
        tmp_path,
        model,
        pool[0],
        r"model sum.onnx has no output of per-class scores \(outputs: 'total'",
    )


def test_output_that_is_not_n_by_k(tmp_path, pool):
    w = numpy_helper.from_array(np.ones((64, 1), np.float32), "W")
    model = _save_graph(
        tmp_path / "one.onnx",
        [
            helper.make_node("Flatten", ["input"], ["flat"]),
            helper.make_node("MatMul", ["flat", "W"], ["score"]),
        ],
        [_float_input()],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 1])],
        [w],
    )
    _expect_failure(
        tmp_path,
        model,
        pool[0],
        r"output 'score' of model one.onnx has shape \(64, 1\) for a batch of 64; "
        r"class scores must have shape \(N, K\) with K >= 2",
    )


def test_nan_outputs_name_the_sample_ids(tmp_path):
    x = make_deterministic(6).uniform(0, 1, (100, 1, 8, 8)).astype(np.float32)
    x[[70, 93], 0, 0, 0] = -1.0  # Sqrt of a negative value gives NaN for these two samples
    data = write_pool(tmp_path / "pool.npz", x)
    w = numpy_helper.from_array(np.ones((64, 3), np.float32), "W")
    model = _save_graph(
        tmp_path / "sqrt.onnx",
        [
            helper.make_node("Flatten", ["input"], ["flat"]),
            helper.make_node("Sqrt", ["flat"], ["root"]),
            helper.make_node("MatMul", ["root", "W"], ["logits"]),
        ],
        [_float_input()],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        [w],
    )
    record = _expect_failure(
        tmp_path,
        model,
        data,
        r"NaN or Inf outputs for 2 sample\(s\) \(sample_id 70, 93\)",
        shard_size=50,
    )
    assert record["failed_stage"] == "score-shard-00001"


def test_model_with_two_inputs_is_refused(tmp_path, pool):
    model = _save_graph(
        tmp_path / "two.onnx",
        [helper.make_node("Add", ["a", "b"], ["out"])],
        [_float_input("a", ("N", 3)), _float_input("b", ("N", 3))],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 3])],
    )
    _expect_failure(tmp_path, model, pool[0], r"has 2 inputs \('a', 'b'\)")


def test_integer_input_is_refused(tmp_path, pool):
    model = _save_graph(
        tmp_path / "int.onnx",
        [helper.make_node("Cast", ["input"], ["out"], to=TensorProto.FLOAT)],
        [helper.make_tensor_value_info("input", TensorProto.INT64, ["N", 3])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 3])],
    )
    _expect_failure(tmp_path, model, pool[0], r"has type tensor\(int64\)")


def test_corrupt_model_file(tmp_path, pool):
    model = tmp_path / "broken.onnx"
    good = linear_classifier(tmp_path / "good.onnx").read_bytes()
    model.write_bytes(good[: len(good) // 3])
    _expect_failure(tmp_path, model, pool[0], r"model broken.onnx is not a readable ONNX file")


def test_unknown_model_format(tmp_path, pool):
    model = tmp_path / "model.bin"
    model.write_bytes(b"\x00" * 10)
    with pytest.raises(TestprioError, match=r"cannot tell which framework saved .*model.bin"):
        run_stages(model, pool[0], str(tmp_path / "runs"))


def test_output_name_that_does_not_exist(tmp_path, pool):
    model = linear_classifier(tmp_path / "m.onnx")
    _expect_failure(
        tmp_path, model, pool[0], r"--output-name 'scores' is not an output", output_name="scores"
    )


def test_several_candidate_outputs_ask_for_output_name(tmp_path, pool):
    w = numpy_helper.from_array(np.ones((64, 3), np.float32), "W")
    model = _save_graph(
        tmp_path / "twin.onnx",
        [
            helper.make_node("Flatten", ["input"], ["flat"]),
            helper.make_node("MatMul", ["flat", "W"], ["head_a"]),
            helper.make_node("Neg", ["head_a"], ["head_b"]),
        ],
        [_float_input()],
        [
            helper.make_tensor_value_info("head_a", TensorProto.FLOAT, ["N", 3]),
            helper.make_tensor_value_info("head_b", TensorProto.FLOAT, ["N", 3]),
        ],
        [w],
    )
    _expect_failure(tmp_path, model, pool[0], r"several outputs .* name one with --output-name")
    layout = run_stages(model, pool[0], str(tmp_path / "ok"), output_name="head_b")
    assert storage.read_json(layout.model_json)["class_output"]["name"] == "head_b"


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"metric": "accuracy"}, r"unknown metric 'accuracy'"),
        ({"output_kind": "scores"}, r"--output-kind 'scores' is not one of"),
        ({"framework": "caffe"}, r"--framework 'caffe' is not supported"),
        ({"shard_size": 0}, r"--shard-size 0 must be a positive number"),
        ({"batch_size": -1}, r"--batch-size -1 must be a positive number"),
        ({"top_k": -2}, r"--top-k -2 must be zero or positive"),
        ({"input_shape": "1,a"}, r"--input-shape '1,a' is not a list of positive integers"),
    ],
)
def test_bad_parameters_fail_the_run_at_start(tmp_path, pool, overrides, match):
    record = _expect_failure(
        tmp_path, linear_classifier(tmp_path / "m.onnx"), pool[0], match, **overrides
    )
    assert record["failed_stage"] == "start"


def test_prefetch_keeps_order_raises_errors_and_stops_early():
    from testprio.score import _prefetched

    assert list(_prefetched(iter(range(50)))) == list(range(50))

    def failing():
        yield 1
        raise ValueError("decode failed")

    consumed = []
    with pytest.raises(ValueError, match="decode failed"):
        for item in _prefetched(failing()):
            consumed.append(item)
    assert consumed == [1]
    for item in _prefetched(iter(range(10**6))):  # the consumer leaves early: no hang
        if item == 3:
            break


def test_pipelined_runs_in_order_and_raises_the_previous_error():
    from testprio.score import _Pipelined

    done = []
    with _Pipelined() as post:
        for i in range(20):
            post.submit(done.append, i)
        post.drain()
    assert done == list(range(20))

    def fail(i):
        if i == 1:
            raise ValueError("write failed")
        done.append(i)

    done.clear()
    with pytest.raises(ValueError, match="write failed"), _Pipelined() as post:
        for i in range(5):
            post.submit(fail, i)
    assert done == [0]  # nothing after the failed call ran


def test_many_chunks_keep_sample_order(tmp_path, pool, monkeypatch):
    import testprio.score as score

    monkeypatch.setattr(score, "CHUNK_BYTES", 1)  # one inference batch per chunk
    path, x = pool
    model = linear_classifier(tmp_path / "m.onnx")
    layout = run_stages(model, path, str(tmp_path / "r"), shard_size=90, batch_size=7)
    table = _folder_table(layout, "scores")
    assert table.column("sample_id").to_pylist() == list(range(90))
    expected = softmax(reference_logits(x, model))
    np.testing.assert_array_equal(table.column("predicted").to_numpy(), expected.argmax(axis=1))
    scores_file = pq.ParquetFile(storage.join(layout.scores_dir, "shard-00000.parquet"))
    assert scores_file.num_row_groups == 13  # one per chunk of one batch


def test_failure_while_writing_publishes_no_scores_file(tmp_path, pool, monkeypatch):
    import testprio.score as score

    monkeypatch.setattr(score, "CHUNK_BYTES", 1)
    real = score._scores_batch
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(score, "_scores_batch", failing)
    path, _x = pool
    model = linear_classifier(tmp_path / "m.onnx")
    with pytest.raises(OSError, match="disk full"):
        run_stages(model, path, str(tmp_path / "r"), shard_size=90, batch_size=10)
    assert not list((tmp_path / "r").rglob("scores/shard-*.parquet"))


# --- shard formats -----------------------------------------------------------------------


def _rewrite_in_format_1(uri: str) -> None:
    """Rewrite a sample shard as ingest wrote it before shard format 2: ``x`` as fixed-size
    lists of float32 and no format key in the schema metadata; same row groups."""
    with storage.open_parquet(uri) as parquet:
        schema = parquet.schema_arrow
        groups = [parquet.read_row_group(i) for i in range(parquet.num_row_groups)]
    width = schema.field("x").type.byte_width // 4
    metadata = {k: v for k, v in schema.metadata.items() if k != SHARD_FORMAT_KEY}
    column = schema.get_field_index("x")
    old = schema.set(column, pa.field("x", pa.list_(pa.float32(), width), False))
    old = old.with_metadata(metadata)
    with storage.parquet_writer(uri, old) as writer:
        for group in groups:
            flat = pa.array(shard_tensors(group.column("x"), schema).reshape(-1))
            arrays = group.columns
            arrays[column] = pa.FixedSizeListArray.from_arrays(flat, width)
            writer.write_table(pa.Table.from_arrays(arrays, schema=old))


def _data_shards(layout):
    return [
        storage.join(layout.data_dir, name)
        for name in storage.list_names(layout.data_dir)
        if name.startswith("shard-")
    ]


def test_format_1_shard_is_scored_like_format_2(tmp_path, pool):
    layout = run_stages(
        linear_classifier(tmp_path / "m.onnx"), pool[0], str(tmp_path / "r"), shard_size=40
    )
    assert storage.read_json(layout.data_manifest)["shard_format"] == SHARD_FORMAT == 2
    written_in_format_2 = _scores(layout)
    for shard in _data_shards(layout):
        _rewrite_in_format_1(shard)
        storage.delete(scores_uri_for(layout, shard))
    with storage.open_parquet(layout.data_shard(0)) as parquet:
        assert shard_format(parquet.schema_arrow) == 1
        assert parquet.schema_arrow.field("x").type == pa.list_(pa.float32(), 64)
    for shard in _data_shards(layout):
        score_shard(layout, shard, batch_size=16)
    assert _scores(layout).equals(written_in_format_2)


def test_shard_in_an_unknown_format_is_refused(tmp_path, pool):
    layout = run_stages(linear_classifier(tmp_path / "m.onnx"), pool[0], str(tmp_path / "r"))
    shard = layout.data_shard(0)
    table = pq.read_table(shard)
    pq.write_table(
        table.replace_schema_metadata({**table.schema.metadata, SHARD_FORMAT_KEY: "9"}), shard
    )
    storage.delete(scores_uri_for(layout, shard))
    with pytest.raises(
        TestprioError,
        match=r"data shard .*shard-00000.parquet is in shard format 9, which this testprio "
        r"cannot read \(it reads formats 1, 2\); score it with the testprio version",
    ):
        score_shard(layout, shard)


def test_bound_runner_on_cpu_never_writes_into_the_callers_batches(tmp_path):
    from testprio.model import BoundRunner, create_session

    model = linear_classifier(tmp_path / "m.onnx")
    session = create_session(str(model), device="cpu")
    runner = BoundRunner(session, "input", "logits", "cpu")
    rng = make_deterministic(3)
    first, second = (rng.normal(0, 1, (4, 1, 8, 8)).astype(np.float32) for _ in range(2))
    kept = first.copy()
    read_only = second.copy()
    read_only.setflags(write=False)  # like a format-2 shard's Arrow view
    np.testing.assert_allclose(runner(first), reference_logits(first, model), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        runner(read_only), reference_logits(second, model), rtol=1e-4, atol=1e-5
    )
    np.testing.assert_array_equal(first, kept)  # the second batch went elsewhere


# --- coverage, surprise and instability from the same pass -------------------------------


@pytest.fixture(scope="module")
def hidden_digits(tmp_path_factory):
    """The evaluate tests' digits MLP (Gemm-Relu-Gemm) and its train/pool splits on disk."""
    from tests import evalkit

    folder = tmp_path_factory.mktemp("hidden")
    splits = evalkit.digits()
    paths = evalkit.save_splits(folder / "data", splits)
    model = evalkit.save_mlp(folder / "mlp.onnx", evalkit.mlp_weights(*splits["train"]))
    return {"model": model, "paths": paths, "splits": splits}


def run_with_prioritizers(model, data, root, *, shard_size=400, metric="gini", **overrides):
    """start -> ingest -> convert -> reference -> score -> rank, as the pipeline runs them
    (tests/stagekit.py's run_stages without the reference task and its options)."""
    from testprio import stages
    from testprio.layout import RunLayout
    from tests.stagekit import parameters

    p = parameters(model, data, str(root), "run", shard_size=shard_size, metric=metric)
    p.update(overrides)
    run_uri = stages.start_run(p["root"], p["run_id"], p)
    ingest_args = {name: p[name] for name in stages.INGEST_PARAMETERS}
    shards = stages.ingest_pool(run_uri, p["data"], **ingest_args)
    stages.convert_model(
        run_uri, p["model"], p["framework"], p["output_kind"], p["output_name"], p["input_shape"]
    )
    stages.fit_reference(run_uri, p["train_data"], p["layers"], **ingest_args)
    scores = [
        stages.score_shard(shard, p["batch_size"], 0, "cpu", p["metamorphic"], p["followups"])
        for shard in shards
    ]
    stages.rank_scores(run_uri, scores, p["metric"], p["top_k"])
    return RunLayout(run_uri)


def run_digits(hidden_digits, root, **overrides):
    return run_with_prioritizers(
        hidden_digits["model"], hidden_digits["paths"]["pool"], root, **overrides
    )


def _with_reference(hidden_digits, **overrides):
    return {
        "train_data": str(hidden_digits["paths"]["train"]),
        "metamorphic": "default",
        "followups": 3,
        **overrides,
    }


def _direct_activations(hidden_digits, x):
    """The MLP's hidden ReLU activations, computed by ONNX Runtime directly."""
    from testprio.activations import hidden_layer_names, layer_activations, with_layer_outputs
    from testprio.model import create_session

    model = onnx.load(str(hidden_digits["model"]))
    layers = hidden_layer_names(model)
    session = create_session(with_layer_outputs(model, layers).SerializeToString(), device="cpu")
    (logits,), acts = layer_activations(session, {"input": x}, layers, outputs=["logits"])
    return layers, logits, acts


def test_new_columns_equal_the_libraries_on_direct_activations(tmp_path, hidden_digits):
    from testprio import coverage, surprise
    from testprio.metamorphic import (
        default_transforms,
        image_layout,
        metamorphic_ranges,
        run_metamorphic,
    )

    layout = run_digits(
        hidden_digits, tmp_path / "r", shard_size=150, **_with_reference(hidden_digits)
    )
    table = _scores(layout)
    assert table.schema.metadata[b"testprio.scores_format"] == b"2"
    x_pool = hidden_digits["splits"]["pool"][0]
    x_train = hidden_digits["splits"]["train"][0]
    layers, _, train_acts = _direct_activations(hidden_digits, x_train)
    assert layers == ["hidden"]
    _, pool_logits, pool_acts = _direct_activations(hidden_digits, x_pool)
    profile = coverage.NeuronProfile(layers).update(train_acts).finish()
    for name, fn in coverage.COVERAGE_METRICS.items():
        expected, covered = fn(pool_acts, profile, **coverage.COVERAGE_DEFAULTS[name])
        np.testing.assert_array_equal(table.column(name).to_numpy(), expected, err_msg=name)
        cells = _folder_table(layout, "cells")
        packed = np.frombuffer(b"".join(cells.column(name).to_pylist()), np.uint8)
        np.testing.assert_array_equal(packed.reshape(len(x_pool), -1), np.packbits(covered, 1))
    predicted_train = _direct_activations(hidden_digits, x_train)[1].argmax(axis=1)
    reference = surprise.fit_reference(train_acts[-1], predicted_train)
    for name, fn in surprise.SURPRISE_METRICS.items():
        expected = fn(reference, pool_acts[-1], pool_logits.argmax(axis=1)).astype(np.float32)
        np.testing.assert_allclose(table.column(name).to_numpy(), expected, rtol=1e-5, err_msg=name)
    shape = x_pool.shape[1:]
    layout_name = image_layout(shape)
    ranges = metamorphic_ranges(shape, layout_name)
    from testprio.model import create_session

    session = create_session(str(hidden_digits["model"]), device="cpu")
    result = run_metamorphic(
        lambda b: session.run(["logits"], {"input": b})[0],
        x_pool,
        transforms=default_transforms(layout_name),
        followups=3,
        seed=0,
        layout=layout_name,
        ranges=ranges,
        sample_ids=np.arange(len(x_pool)),
    )
    np.testing.assert_array_equal(
        table.column("instability").to_numpy(), result.instability.astype(np.float32)
    )
    design = _folder_table(layout, "metamorphic")
    assert design.num_rows == 3 * len(x_pool)
    np.testing.assert_array_equal(
        design.sort_by([("sample_id", "ascending"), ("followup", "ascending")])
        .column("violated")
        .to_numpy(),
        result.design["violated"],
    )


def test_without_options_scores_keep_only_the_class_metrics(tmp_path, pool):
    path, _ = pool
    layout = run_stages(linear_classifier(tmp_path / "m.onnx"), path, str(tmp_path / "r"))
    names = _scores(layout).column_names
    assert names == [
        "sample_id",
        "predicted",
        "confidence",
        "gini",
        "entropy",
        "margin",
        "least_confidence",
        "probs",
        "label",
    ]
    assert not storage.exists(storage.join(layout.uri, "cells"))
    assert not storage.exists(storage.join(layout.uri, "reference"))


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"metric": "dsa"}, r"^--metric dsa is not computed in this run; give --train-data R"),
        ({"metric": "kmnc"}, r"^--metric kmnc is not computed in this run; give --train-data"),
        (
            {"metric": "instability"},
            r"^--metric instability is not computed in this run; give --metamorphic default",
        ),
        ({"metric": "nac"}, r"^unknown metric 'nac'; choose one of gini, .*nac-ctm, nac-cam"),
        ({"metamorphic": "wobble"}, r"^--metamorphic names an unknown transform 'wobble'"),
        ({"layers": "hidden"}, r"^--layers names the hidden layers .* give --train-data R too"),
        ({"metamorphic": "default", "followups": 0}, r"^--followups 0 must be a positive"),
    ],
)
def test_prioritizer_options_are_checked_at_start(tmp_path, pool, overrides, match):
    path, _ = pool
    with pytest.raises(TestprioError, match=match):
        run_stages(linear_classifier(tmp_path / "m.onnx"), path, str(tmp_path / "r"), **overrides)


def test_unknown_layer_and_model_without_hidden_layers_are_refused(tmp_path, hidden_digits):
    with pytest.raises(TestprioError, match=r"^layer 'nope' in --layers is not a tensor"):
        run_digits(hidden_digits, tmp_path / "a", **_with_reference(hidden_digits, layers="nope"))
    linear = {**hidden_digits, "model": linear_classifier(tmp_path / "linear.onnx")}
    with pytest.raises(TestprioError, match=r"^the ONNX model has no hidden layer .* --layers"):
        run_digits(linear, tmp_path / "b", **_with_reference(linear))


def test_image_transforms_on_flat_samples_fail_the_score_task(tmp_path):
    rng = make_deterministic(2)
    data = write_pool(tmp_path / "flat.npz", rng.normal(0, 1, (30, 64)).astype(np.float32))
    model = linear_classifier(tmp_path / "flat.onnx", sample_shape=(64,))
    with pytest.raises(TestprioError, match=r"rotate"):
        run_with_prioritizers(model, data, tmp_path / "r", metamorphic="rotate")
    # noise works on any tensor: the default for flat samples
    layout = run_with_prioritizers(
        model, data, tmp_path / "ok", metamorphic="default", metric="instability"
    )
    assert 0 <= _scores(layout).column("instability").to_numpy().max() <= 1
