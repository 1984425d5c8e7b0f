"""The public API (testprio.run, evaluate, export_labels, import_labels): the same results as
the command line, which calls it, and one sentence for each wrong input."""

import json
import subprocess
import sys

import numpy as np
import pytest

import testprio
from testprio import api, cli, storage
from testprio.errors import TestprioError
from tests.conftest import linear_classifier, write_pool
from tests.evalkit import digits, mlp_weights, save_mlp, save_splits


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from sklearn.datasets import load_digits

    folder = tmp_path_factory.mktemp("api")
    found = load_digits()
    x = (found.images[:120] / 16.0).astype(np.float32)[:, None]
    return {
        "model": str(linear_classifier(folder / "m.onnx", seed=3)),
        "data": str(write_pool(folder / "pool.npz", x, found.target[:120].astype(np.int64))),
        "root": str(folder / "runs"),
    }


@pytest.fixture(scope="module")
def api_run(inputs):
    return testprio.run(**inputs, run_id="api", top_k=5, shard_size=50)


@pytest.mark.pipeline
def test_run_gives_the_same_ranking_as_the_command_line(inputs, api_run):
    args = ["run", "--model", inputs["model"], "--data", inputs["data"], "--root", inputs["root"]]
    assert cli.main([*args, "--run-id", "cli", "--top-k", "5", "--shard-size", "50"]) == 0
    from_cli = testprio.RunResult.open(storage.join(inputs["root"], "cli")).ranking()
    from_api = api_run.ranking()
    metric = api_run.summary["metric"]
    assert len(from_api) == 120
    assert from_api["sample_id"].tolist() == from_cli["sample_id"].tolist()
    np.testing.assert_array_equal(from_api[metric].to_numpy(), from_cli[metric].to_numpy())


@pytest.mark.pipeline
def test_run_result_points_at_what_the_run_wrote(inputs, api_run):
    assert api_run.run_id == "api"
    assert api_run.uri == storage.join(storage.normalize_root(inputs["root"]), "api")
    assert api_run.summary == storage.read_json(api_run.layout.summary)
    assert api_run.record["status"] == "succeeded"
    assert storage.exists(api_run.report_path)
    top = api_run.ranking(columns=["rank", "sample_id"], top=3)
    assert list(top.columns) == ["rank", "sample_id"] and top["rank"].tolist() == [1, 2, 3]
    assert top["sample_id"].tolist() == [row["sample_id"] for row in api_run.summary["top"][:3]]
    with pytest.raises(TestprioError, match="top -1 must be zero or positive"):
        api_run.ranking(top=-1)


@pytest.mark.pipeline
def test_export_and_import_labels_of_a_run(api_run, tmp_path):
    export = testprio.export_labels(api_run, str(tmp_path / "out"), ranks="2-4")
    assert (str(export.ranks), len(export.rows), export.uri) == ("2-4", 3, str(tmp_path / "out"))
    assert [row["rank"] for row in export.rows] == [2, 3, 4]
    report = api_run.layout.report_html
    assert 'id="imported-labels"' not in storage.read_bytes(report).decode()
    result = testprio.import_labels(api_run.uri, str(tmp_path / "out" / "labels.csv"))
    assert (result.read, result.added) == (3, 3)
    assert api_run.record["labelled"]["samples"] == 3
    # The run's report.html is rendered again and shows them.
    assert result.report == report and result.sentence().endswith(f"{report} shows them.")
    html = storage.read_bytes(report).decode()
    figures = result.labelled
    assert 'id="imported-labels"' in html and 'href="#imported-labels"' in html
    assert "3 samples labelled (ranks 2 to 4)" in html
    assert f"accuracy {figures['accuracy']:.4f}, {figures['misclassified']} misclassified" in html
    with pytest.raises(TestprioError, match="already holds a labelling export"):
        testprio.export_labels(api_run, str(tmp_path / "out"), top_k=2)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"metrik": "gini"}, r"unknown run parameter\(s\) metrik; use those of testprio run"),
        ({"model": "missing.onnx"}, "--model missing.onnx does not exist; check the path."),
        ({"runner": "podman"}, "--runner podman is not one of subprocess, docker."),
        ({"run_id": "../x"}, "run id '../x' is not allowed"),
        ({"shard_size": 0}, "--shard-size 0"),
    ],
)
def test_run_refuses_bad_inputs_before_running(inputs, change, message):
    with pytest.raises(TestprioError, match=message):
        testprio.run(**{**inputs, **change})


def test_labels_of_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(TestprioError, match="holds no run.json, so it is not a run"):
        testprio.export_labels(str(tmp_path), str(tmp_path / "out"), top_k=2)
    with pytest.raises(TestprioError, match="holds no run.json, so it is not a run"):
        testprio.import_labels(str(tmp_path), str(tmp_path / "labels.csv"))


# --- evaluate ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def eval_inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("api-eval")
    splits = digits()
    paths = save_splits(folder, splits)
    return {
        "model": str(save_mlp(folder / "mlp.onnx", mlp_weights(*splits["train"]))),
        "data": str(paths["pool"]),
        "train_data": str(paths["train"]),
        "test_data": str(paths["test"]),
        "root": str(folder / "runs"),
    }


def test_evaluate_writes_and_returns_the_evaluation(eval_inputs):
    result = testprio.evaluate(
        **eval_inputs, run_id="e", prioritizers="gini,random", seeds=2, budgets=(5, 10), epochs=1
    )
    assert result.run_id == "e" and result.uri.endswith("/e")
    assert json.loads(json.dumps(result.evaluation)) == storage.read_json(result.evaluation_path)
    assert sorted(result.evaluation["prioritizers"]) == ["gini", "random"]
    apfd = result.table()
    assert sorted(apfd["prioritizer"]) == ["gini", "random"]
    assert set(result.table("faults")["budget"]) == {5.0, 10.0}
    assert "<h1>Evaluation e</h1>" in result.html()
    with pytest.raises(TestprioError, match="no table 'nope'; choose from apfd, faults"):
        result.table("nope")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"seedz": 2}, r"unknown evaluate option\(s\) seedz; use those of testprio evaluate"),
        ({"seeds": 0}, "--seeds 0 must be a whole number from 1 to 100"),
        ({"budgets": "0"}, "--budgets 0 must be percents of the pool above 0"),
        ({"prioritizers": ("gini", "nope")}, r"unknown prioritizer\(s\) nope; choose from"),
        ({"train_data": "missing.npz"}, "--train-data missing.npz does not exist"),
        ({"run_id": "../x"}, "run id '../x' is not allowed"),
    ],
)
def test_evaluate_refuses_bad_inputs(eval_inputs, change, message):
    with pytest.raises(TestprioError, match=message):
        testprio.evaluate(**{**eval_inputs, **change})


def test_evaluate_options_are_those_of_the_command_line():
    parser = cli.build_parser()
    evaluate = parser._subparsers._group_actions[0].choices["evaluate"]
    inputs = {"help", "model", "data", "train_data", "test_data", "root", "run_id"}
    assert {action.dest for action in evaluate._actions} - inputs == set(api.EVALUATE_OPTIONS)


def test_import_testprio_loads_neither_the_runner_nor_pandas():
    code = (
        "import sys, testprio; "
        "print(sorted(m for m in ('kfp', 'pandas', 'onnxruntime', 'pyarrow', 'testprio.api') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert sorted(testprio.__all__) == sorted(
        [
            "run",
            "evaluate",
            "export_labels",
            "import_labels",
            "push_labels",
            "pull_labels",
            "RunResult",
            "EvaluationResult",
        ]
    )
