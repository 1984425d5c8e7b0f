"""Per-task requests and limits, caching, retries and the score device, in the compiled YAML."""

import pytest
import yaml

from pipelines.prioritize import (
    DEFAULT_TIMEOUTS,
    LOCAL_SETTINGS,
    ClusterSettings,
    compile_pipeline,
    task_policies,
)

CACHED = {"ingest", "convert"}
NOT_RETRIED = {"start"}


def _compile(tmp_path, settings=None):
    path = compile_pipeline(str(tmp_path / "prioritize.yaml"), settings)
    pipeline, *_ = yaml.safe_load_all(open(path).read())
    return pipeline


def _tasks(pipeline) -> dict:
    """Every task of the pipeline, the score task inside the loop included, by name."""
    tasks = dict(pipeline["root"]["dag"]["tasks"])
    for component in pipeline["components"].values():
        tasks.update(component.get("dag", {}).get("tasks", {}))
    return {name: spec for name, spec in tasks.items() if not name.startswith("for-loop")}


def _resources(pipeline) -> dict:
    return {
        name.removeprefix("exec-"): spec["container"]["resources"]
        for name, spec in pipeline["deploymentSpec"]["executors"].items()
    }


def _deadlines(tmp_path, settings=None) -> dict:
    path = compile_pipeline(str(tmp_path / "prioritize.yaml"), settings)
    _, platform = yaml.safe_load_all(open(path).read())
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    return {
        name.removeprefix("exec-"): int(spec["activeDeadlineSeconds"])
        for name, spec in executors.items()
    }


def _policy_name(name: str, policies: dict) -> str:
    """``convert`` for ``convert`` and for a framework's ``convert-pytorch`` alike."""
    return max((key for key in policies if name.startswith(key)), key=len)


def test_every_task_has_requests_and_limits(tmp_path):
    pipeline = _compile(tmp_path)
    resources = _resources(pipeline)
    policies = task_policies(ClusterSettings())
    for name, res in resources.items():
        policy = policies[_policy_name(name, policies)]
        assert res["resourceCpuRequest"] == policy.cpu, name
        assert res["resourceCpuLimit"] == policy.cpu_limit, name
        assert res["resourceMemoryRequest"] == res["resourceMemoryLimit"] == policy.memory, name
    assert (resources["score"]["resourceCpuRequest"], resources["score"]["resourceCpuLimit"]) == (
        "4",
        "8",
    )
    assert resources["start"]["resourceMemoryLimit"] == "1G"


def test_caching_only_for_ingest_and_convert(tmp_path):
    tasks = _tasks(_compile(tmp_path))
    assert {"start", "ingest", "convert-onnx", "score", "rank"} <= set(tasks)
    policies = task_policies(ClusterSettings())
    cached = {
        _policy_name(name, policies)
        for name, spec in tasks.items()
        if spec["cachingOptions"].get("enableCache")
    }
    assert cached == CACHED


def test_retries_with_backoff_on_every_task_but_start(tmp_path):
    tasks = _tasks(_compile(tmp_path))
    for name, spec in tasks.items():
        if name in NOT_RETRIED:
            assert "retryPolicy" not in spec, name
        else:
            assert spec["retryPolicy"] == {
                "maxRetryCount": 2,
                "backoffDuration": "30s",
                "backoffFactor": 2.0,
                "backoffMaxDuration": "3600s",
            }, name


def test_retry_settings_reach_the_yaml(tmp_path):
    settings = ClusterSettings(retries=5, retry_backoff="10s", retry_backoff_factor=3.0)
    policy = _tasks(_compile(tmp_path, settings))["score"]["retryPolicy"]
    assert (policy["maxRetryCount"], policy["backoffDuration"], policy["backoffFactor"]) == (
        5,
        "10s",
        3.0,
    )


def test_local_pipeline_has_no_retries_and_scores_on_any_device(tmp_path):
    # KFP's local runner honours retry policies: a bad input must fail a local run at once.
    pipeline = _compile(tmp_path, LOCAL_SETTINGS)
    assert not [name for name, spec in _tasks(pipeline).items() if "retryPolicy" in spec]
    # Locally the shards are shared out among a few score tasks (score-shards).
    score_inputs = _tasks(pipeline)["score-shards"]["inputs"]["parameters"]
    assert score_inputs["device"]["runtimeValue"]["constant"] == "auto"


@pytest.mark.parametrize(("gpu", "device"), [(True, "cuda"), (False, "cpu")])
def test_score_device_follows_the_gpu_setting(tmp_path, gpu, device):
    pipeline = _compile(tmp_path, ClusterSettings(gpu=gpu, node_selector=()))
    inputs = _tasks(pipeline)["score"]["inputs"]["parameters"]
    assert inputs["device"]["runtimeValue"]["constant"] == device
    assert inputs["gpu_batch_size"]["componentInputParameter"] == "pipelinechannel--gpu_batch_size"
    parameters = pipeline["root"]["inputDefinitions"]["parameters"]
    assert parameters["gpu_batch_size"]["defaultValue"] == 1024


def test_tasks_use_the_kfp_in_their_image(tmp_path):
    # The images run as a non-root user with the pinned kfp installed: no task may try to
    # `pip install kfp` at start-up (that also needs PyPI from inside the cluster).
    pipeline = _compile(tmp_path)
    for name, spec in pipeline["deploymentSpec"]["executors"].items():
        command = " ".join(spec["container"]["command"] + spec["container"].get("args", []))
        assert "pip install" not in command, name
        assert "kfp.dsl.executor_main" in command, name


def test_negative_retries_are_refused():
    with pytest.raises(ValueError, match=r"^--retries -1 must be zero or more\.$"):
        ClusterSettings(retries=-1)


def test_every_task_has_its_stage_deadline(tmp_path):
    deadlines = _deadlines(tmp_path)
    assert set(deadlines) == {
        "start",
        "ingest",
        "convert-onnx",
        "reference",
        "score",
        "rank",
        "report",
    }
    policies = task_policies(ClusterSettings())
    for name, seconds in deadlines.items():
        assert seconds == policies[_policy_name(name, policies)].timeout_s, name
    assert deadlines == {
        "start": 600,
        "ingest": 21600,
        "convert-onnx": 7200,
        "reference": 21600,
        "score": 7200,
        "rank": 3600,
        "report": 3600,
    }


def test_timeout_settings_replace_the_defaults_of_their_tasks_only(tmp_path):
    settings = ClusterSettings(timeouts=(("ingest", 43200), ("score", 900)))
    deadlines = _deadlines(tmp_path, settings)
    assert (deadlines["ingest"], deadlines["score"]) == (43200, 900)
    assert deadlines["start"] == DEFAULT_TIMEOUTS["start"]
    assert deadlines["report"] == DEFAULT_TIMEOUTS["report"]


@pytest.mark.parametrize(
    ("timeouts", "message"),
    [
        ((("scoring", 60),), r"^--timeout scoring=60 names no task; use one of start, ingest, "),
        ((("rank", 0),), r"^--timeout rank=0 must be a whole number of seconds, at least 1\.$"),
        ((("rank", 1.5),), r"^--timeout rank=1\.5 must be a whole number of seconds, at least"),
    ],
)
def test_bad_timeouts_are_refused(timeouts, message):
    with pytest.raises(ValueError, match=message):
        ClusterSettings(timeouts=timeouts)


def test_compile_command_sets_task_deadlines(tmp_path, capsys):
    from testprio import cli

    out = tmp_path / "build"
    code = cli.main(
        ["compile", "--out", str(out), "--timeout", "ingest=43200", "--timeout", "score=900"]
    )
    assert code == 0
    _, platform = yaml.safe_load_all((out / "prioritize.yaml").read_text())
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert int(executors["exec-ingest"]["activeDeadlineSeconds"]) == 43200
    assert int(executors["exec-score"]["activeDeadlineSeconds"]) == 900
    assert int(executors["exec-rank"]["activeDeadlineSeconds"]) == DEFAULT_TIMEOUTS["rank"]


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("scoring=60", "--timeout scoring=60 names no task"),
        ("rank=0", "--timeout rank=0 must be a whole number of seconds"),
    ],
)
def test_compile_command_refuses_bad_timeouts(tmp_path, capsys, flag, message):
    from testprio import cli

    assert cli.main(["compile", "--out", str(tmp_path), "--timeout", flag]) == 1
    assert message in capsys.readouterr().err


def test_compile_command_refuses_a_timeout_without_seconds(tmp_path, capsys):
    from testprio import cli

    with pytest.raises(SystemExit):
        cli.main(["compile", "--out", str(tmp_path), "--timeout", "rank"])
    assert "'rank' is not TASK=SECONDS" in capsys.readouterr().err
