"""The compiled KFP YAML: GPU placement on the score task only, resources, fan-out width."""

from pathlib import Path

import pytest
import yaml

from testprio import cli


def _compile(tmp_path, *args):
    out = tmp_path / "build"
    assert cli.main(["compile", "--out", str(out), *args]) == 0
    pipeline, platform = yaml.safe_load_all((out / "prioritize.yaml").read_text())
    return pipeline, platform


def _executors(pipeline):
    return {
        name.removeprefix("exec-"): spec["container"]
        for name, spec in pipeline["deploymentSpec"]["executors"].items()
    }


def _k8s(platform):
    return platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def test_default_compile_puts_only_scoring_on_gpu_nodes(tmp_path):
    pipeline, platform = _compile(tmp_path)
    executors = _executors(pipeline)
    assert set(executors) == {
        "start",
        "ingest",
        "convert-onnx",
        "reference",
        "score",
        "rank",
        "report",
    }
    resources = executors["score"]["resources"]
    assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert resources["accelerator"]["resourceCount"] == "1"
    assert resources["resourceCpuRequest"] == "4"
    assert resources["resourceMemoryRequest"] == "16G"
    assert executors["score"]["image"].endswith("/runtime-gpu:0.1.0")
    for name in ("start", "ingest", "convert-onnx", "reference", "rank", "report"):
        assert "accelerator" not in executors[name]["resources"], name
        assert executors[name]["image"].endswith("/runtime:0.1.0")
    k8s = _k8s(platform)
    placed = {name for name, spec in k8s.items() if "nodeSelector" in spec or "tolerations" in spec}
    assert placed == {"exec-score"}
    assert k8s["exec-score"]["nodeSelector"]["labels"] == {
        "cloud.google.com/gke-accelerator": "nvidia-tesla-t4"
    }
    assert k8s["exec-score"]["tolerations"] == [
        {"effect": "NoSchedule", "key": "nvidia.com/gpu", "operator": "Exists"}
    ]
    loop = pipeline["root"]["dag"]["tasks"]["for-loop-1"]
    assert loop["iteratorPolicy"]["parallelismLimit"] == 8
    assert set(pipeline["root"]["inputDefinitions"]["parameters"]) >= {
        "model",
        "data",
        "root",
        "run_id",
        "metric",
        "shard_size",
        "batch_size",
        "top_k",
    }


def test_compile_options_change_the_gpu_settings(tmp_path):
    pipeline, platform = _compile(
        tmp_path,
        "--gpu-count",
        "2",
        "--node-selector",
        "pool=l4-gpus",
        "--node-selector",
        "cloud.google.com/gke-accelerator=nvidia-l4",
        "--score-cpu",
        "8",
        "--score-memory",
        "32G",
        "--parallelism",
        "3",
    )
    resources = _executors(pipeline)["score"]["resources"]
    assert resources["accelerator"]["resourceCount"] == "2"
    assert (resources["resourceCpuRequest"], resources["resourceMemoryLimit"]) == ("8", "32G")
    assert _k8s(platform)["exec-score"]["nodeSelector"]["labels"] == {
        "pool": "l4-gpus",
        "cloud.google.com/gke-accelerator": "nvidia-l4",
    }
    assert pipeline["root"]["dag"]["tasks"]["for-loop-1"]["iteratorPolicy"]["parallelismLimit"] == 3


def test_no_gpu_compile_has_no_accelerator_anywhere(tmp_path):
    out = tmp_path / "build"
    assert cli.main(["compile", "--out", str(out), "--no-gpu"]) == 0
    text = (out / "prioritize.yaml").read_text()
    assert "accelerator" not in text
    assert "nvidia" not in text


def test_registry_override_reaches_the_images(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "build"
    subprocess.run(
        [sys.executable, "-m", "testprio.cli", "compile", "--out", str(out)],
        check=True,
        env={"TESTPRIO_REGISTRY": "europe-docker.pkg.dev/acme/ml", "PATH": "/usr/bin:/bin"},
    )
    pipeline = next(yaml.safe_load_all((out / "prioritize.yaml").read_text()))
    images = {c["image"] for c in _executors(pipeline).values()}
    assert images == {
        "europe-docker.pkg.dev/acme/ml/runtime:0.1.0",
        "europe-docker.pkg.dev/acme/ml/runtime-gpu:0.1.0",
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--parallelism", "0"], "--parallelism 0 must be at least 1."),
        (["--gpu-count", "0"], "--gpu-count 0 must be at least 1."),
    ],
)
def test_bad_compile_options(tmp_path, capsys, args, message):
    assert cli.main(["compile", "--out", str(tmp_path), *args]) == 1
    assert capsys.readouterr().err.strip() == f"testprio: error: {message}"


def test_every_task_pod_is_hardened_in_the_platform_spec(tmp_path):
    # What kfp-kubernetes 2.17 emits and a KFP backend applies to each task pod: the
    # deadline, the labels the NetworkPolicies of manifests/ select, a non-root identity
    # (the images' USER), and /tmp on an emptyDir (writable even on a read-only root).
    from pipelines.prioritize import TASK_POD_LABELS

    pipeline, platform = _compile(tmp_path, "--no-gpu")
    k8s = _k8s(platform)
    assert set(k8s) == {f"exec-{name}" for name in _executors(pipeline)}
    policy = yaml.safe_load(
        (Path(__file__).parent.parent / "manifests/base/pipeline-networkpolicy.yaml").read_text()
    )
    selected = policy["spec"]["podSelector"]["matchLabels"]
    for name, spec in k8s.items():
        assert int(spec["activeDeadlineSeconds"]) > 0, name
        assert spec["podMetadata"]["labels"] == TASK_POD_LABELS, name
        assert selected.items() <= spec["podMetadata"]["labels"].items(), name
        assert spec["securityContext"] == {
            "runAsUser": "10001",
            "runAsGroup": "10001",
            "runAsNonRoot": True,
        }, name
        assert spec["emptyDirMounts"] == [{"mountPath": "/tmp", "volumeName": "tmp"}], name


@pytest.mark.parametrize(
    ("stage", "settings", "message"),
    [
        ("scoring", {}, r"^stage 'scoring' is not one of start, ingest, convert, reference, "),
        ("rank", {"gpu_count": 1}, r"^gpu_count is set for a rank task, but only score "),
        ("rank", {"node_selector": {}}, r"^node_selector is set for a rank task, but only "),
        ("score", {"gpu_count": -1}, r"^gpu_count=-1 must be a whole number, 0 or more\.$"),
        ("score", {"timeout_s": 0}, r"^timeout_s=0 must be a whole number of seconds, at "),
        ("score", {"timeout_s": 1.5}, r"^timeout_s=1\.5 must be a whole number of seconds, "),
    ],
)
def test_configure_task_refuses_bad_settings(stage, settings, message):
    from kfp import dsl

    from components import configure_task
    from components.start import start

    with pytest.raises(ValueError, match=message):

        @dsl.pipeline(name="bad")
        def bad():
            configure_task(start(model="m.onnx", data="pool.npz", root="runs"), stage, **settings)
