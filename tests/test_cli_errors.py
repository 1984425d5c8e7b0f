"""Command-line mistakes that used to end in a traceback or a misleading line: each is now one
sentence (no KFP run needed, except where the run's own record is checked)."""

import socket

import numpy as np
import pytest

from testprio import cli, local_run, storage
from testprio.errors import TestprioError
from testprio.layout import RunLayout
from testprio.stages import validate_parameters
from tests.conftest import linear_classifier, write_pool
from tests.stagekit import parameters, run_stages

FLOAT_OPTIONS = [
    ("run", "--max-data-gb"),
    ("run", "--custom-op-cpu-seconds"),
    ("run", "--custom-op-batch-timeout-s"),
    ("run", "--parity-tolerance"),
    ("runs logs x", "--interval"),
]


@pytest.fixture
def run_args(tmp_path) -> list[str]:
    model = linear_classifier(tmp_path / "m.onnx")
    data = write_pool(tmp_path / "p.npy", np.random.default_rng(0).random((5, 1, 8, 8), np.float32))
    return ["--model", str(model), "--data", str(data), "--root", str(tmp_path / "runs")]


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "NaN"])
@pytest.mark.parametrize(("command", "option"), FLOAT_OPTIONS)
def test_every_float_option_refuses_inf_and_nan(run_args, capsys, command, option, value):
    words = command.split()
    extra = run_args if words[0] == "run" else []
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*words, *extra, f"{option}={value}"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (
        f"testprio: error: argument {option}: '{value}' is not a finite number; give one like 2.5."
    )


# One convention for every command: a mistake on the command line, like any other error,
# exits 1 with "testprio: error: <sentence>" as the last line (argparse's usage line above).
USAGE_MISTAKES = [
    ["bogus"],
    ["run"],
    ["run", "--model", "m", "--data", "d", "--root", "r", "--top-k", "x"],
    ["evaluate", "--split", "x"],
    ["evaluate", "--model", "m", "--data", "d", "--train-data", "t", "--root", "r", "--seeds",
     "many"],
    ["compile", "--gpu-count", "x"],
    ["compile", "--timeout", "rank"],
    ["report"],
    ["labels"],
    ["labels", "import", "--run", "r"],
    ["submit", "--model", "m"],
    ["runs", "logs"],
    ["runs", "logs", "x", "--interval", "nan"],
]  # fmt: skip


@pytest.mark.parametrize("argv", USAGE_MISTAKES, ids=" ".join)
def test_usage_mistakes_of_every_command_exit_1_with_one_sentence(capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("testprio: error: ") and lines[-1].endswith("."), lines
    assert all(": error:" not in line for line in lines[:-1])
    assert all(line.startswith(("usage:", " ")) for line in lines[:-1]), lines


def test_usage_mistakes_are_redacted(capsys):
    with pytest.raises(SystemExit):
        cli.main(["compile", "--gpu-count", "https://u:pw@h/x?sig=SECRET"])
    err = capsys.readouterr().err
    assert "SECRET" not in err and "pw" not in err and "https://h/x" in err


def test_every_float_option_of_every_command_uses_the_finite_type():
    """A new float option added with type=float would bypass the check: none exists."""
    import argparse

    def float_actions(parser):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    yield from float_actions(sub)
            elif action.type is float:
                yield action.option_strings

    assert list(float_actions(cli.build_parser())) == []


@pytest.mark.parametrize("name", ["max_data_gb", "parity_tolerance", "custom_op_cpu_seconds"])
def test_library_callers_get_the_same_refusal(tmp_path, name):
    model = linear_classifier(tmp_path / "m.onnx")
    p = parameters(model, tmp_path / "p.npy", str(tmp_path), "r", **{name: float("inf")})
    with pytest.raises(TestprioError, match=rf"--{name.replace('_', '-')} inf is not a finite"):
        validate_parameters(p)


def test_compile_out_that_is_a_file_is_one_sentence(tmp_path, capsys):
    target = tmp_path / "build"
    target.write_text("not a folder")
    assert cli.main(["compile", "--out", str(target)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"testprio: error: --out {target} cannot hold the compiled pipeline (File exists); "
        "give a folder you can write to."
    ]


def test_compile_out_under_a_file_is_one_sentence(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert cli.main(["compile", "--out", str(tmp_path / "file" / "build")]) == 1
    (err,) = capsys.readouterr().err.strip().splitlines()
    assert "cannot hold the compiled pipeline (Not a directory)" in err


def test_report_on_a_busy_port_is_one_sentence(tmp_path, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = cli.main(["report", "--root", str(tmp_path), "--port", str(port)])
    out, err = capsys.readouterr()
    assert code == 1 and out == ""  # no URL of a server that would not start
    assert err.strip() == (
        f"testprio: error: cannot serve the report on 127.0.0.1:{port} (Address already in "
        "use); the port is in use or not allowed: choose another with --port."
    )


def test_top_k_zero_prints_no_empty_top_list(tmp_path):
    model = linear_classifier(tmp_path / "m.onnx")
    data = write_pool(
        tmp_path / "p.npy", np.random.default_rng(1).random((12, 1, 8, 8), np.float32)
    )
    layout = run_stages(model, data, str(tmp_path / "runs"), "k0", top_k=0)
    text = cli.format_run_result(layout)
    assert "no samples ranked" not in text and "Most uncertain first" not in text
    assert text.startswith("Ranked 12 of 12 samples by gini (0 quarantined).\n")


def test_unknown_notebook_parameter_is_one_sentence(tmp_path):
    with pytest.raises(TestprioError, match=r"unknown run parameter\(s\) colour; use those of"):
        cli.run_pipeline_locally({"model": "m", "data": "d", "root": str(tmp_path), "colour": 1})


def test_an_error_before_kfp_starts_reaches_run_json(run_args, tmp_path):
    """A notebook's inf would break KFP's serialisation: it stops the run with its sentence."""
    values = dict(zip(run_args[::2], run_args[1::2], strict=True))
    p = {key.lstrip("-"): value for key, value in values.items()}
    with pytest.raises(TestprioError, match=r"--max-data-gb inf is not a finite number"):
        cli.run_pipeline_locally({**p, "run_id": "inf", "max_data_gb": float("inf")})
    layout = RunLayout.create(p["root"], "inf")
    record = storage.read_json(layout.run_json)
    assert (record["status"], record["failed_stage"]) == ("failed", "start")
    assert "--max-data-gb inf is not a finite number" in record["error"]
    assert not storage.exists(layout.owner)  # the lock is released


def test_progress_filter_keeps_the_stage_in_progress_and_the_task_error():
    import io

    target = io.StringIO()
    progress = local_run._ProgressFilter(target)
    progress.write("10:00 - INFO - Executing task 'score'\n")
    assert progress.stage == "score"
    progress.write("    testprio INFO stage score-shard-00002 started\n")
    progress.write("    testprio.errors.TestprioError: the shard is broken; rerun ingest.\n")
    assert (progress.stage, progress.error) == (
        "score-shard-00002",
        "the shard is broken; rerun ingest.",
    )
    progress.write("    testprio INFO stage score-shard-00002 finished in 1.0 s\n")
    progress.write("10:01 - INFO - Task 'score' finished with status SUCCESS\n")
    assert progress.stage == "score-shard-00002"  # between two tasks: the last that ran
    assert "Executing task 'score'" in target.getvalue()
