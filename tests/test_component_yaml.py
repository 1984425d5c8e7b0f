"""components/yaml/: one committed YAML per component, equal to a fresh compile, loadable
into a user's own pipeline."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from kfp import components

from components.compile_yaml import COMPONENTS, YAML_FOLDER

REPO = Path(__file__).parent.parent


def test_committed_component_yaml_equals_a_fresh_compile(tmp_path):
    # In another process with the default registry and tag: the committed files name them.
    env = {k: v for k, v in os.environ.items() if not k.startswith("TESTPRIO_")}
    subprocess.run(
        [sys.executable, "-m", "components.compile_yaml", "--out", str(tmp_path)],
        check=True,
        cwd=REPO,
        env=env,
        capture_output=True,
    )
    fresh = sorted(path.name for path in tmp_path.iterdir())
    assert fresh == sorted(f"{name}.yaml" for name in COMPONENTS)
    assert sorted(os.listdir(YAML_FOLDER)) == fresh, "run `make components` and commit"
    for name in fresh:
        committed = (Path(YAML_FOLDER) / name).read_text(encoding="utf-8")
        assert committed == (tmp_path / name).read_text(encoding="utf-8"), (
            f"components/yaml/{name} is stale: run `make components` and commit it"
        )


@pytest.mark.parametrize("name", sorted(COMPONENTS))
def test_each_yaml_loads_with_described_inputs(name):
    path = os.path.join(YAML_FOLDER, f"{name}.yaml")
    loaded = components.load_component_from_file(path)
    assert loaded.name == name
    assert loaded.component_spec.inputs == COMPONENTS[name].component_spec.inputs
    # kfp's loader drops the inputs' descriptions; the YAML has them.
    definitions = yaml.safe_load(Path(path).read_text())["components"][f"comp-{name}"]
    inputs = definitions["inputDefinitions"]
    described = {**inputs.get("parameters", {}), **inputs.get("artifacts", {})}
    assert set(described) == set(loaded.component_spec.inputs)
    assert all(spec.get("description") for spec in described.values()), name


def _docs_example(tmp_path, monkeypatch) -> Path:
    """Run the user pipeline of docs/how-to/use-components-in-your-pipeline.md as written
    (from a folder holding components/yaml/); return the YAML it compiles."""
    page = REPO / "docs" / "how-to" / "use-components-in-your-pipeline.md"
    blocks = re.findall(r"^```python\n(.*?)^```", page.read_text(encoding="utf-8"), re.S | re.M)
    example = next(block for block in blocks if "configure_task(" in block)
    (tmp_path / "components").mkdir()
    (tmp_path / "components" / "yaml").symlink_to(YAML_FOLDER)
    monkeypatch.chdir(tmp_path)
    exec(compile(example, str(page), "exec"), {"__name__": "docs_example"})
    return tmp_path / "my-prioritize.yaml"


def _task_settings(path: Path) -> dict[str, dict]:
    """Per task of a compiled pipeline: what configure_task sets, from both YAML documents."""
    pipeline, platform = yaml.safe_load_all(path.read_text())
    tasks = dict(pipeline["root"]["dag"]["tasks"])
    for component in pipeline["components"].values():
        tasks.update(component.get("dag", {}).get("tasks", {}))
    kubernetes = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    settings = {}
    for name, task in tasks.items():
        if name.startswith("for-loop"):
            continue
        executor = pipeline["components"][task["componentRef"]["name"]]["executorLabel"]
        container = pipeline["deploymentSpec"]["executors"][executor]["container"]
        settings[name] = {
            "resources": container["resources"],
            "env": container.get("env"),
            "caching": task["cachingOptions"],
            "retry": task.get("retryPolicy"),
            **kubernetes[executor],
        }
    return settings


def test_the_docs_user_pipeline_gets_our_cluster_settings(tmp_path, monkeypatch):
    from pipelines.prioritize import TASK_POD_LABELS, compile_pipeline

    mine = _task_settings(_docs_example(tmp_path, monkeypatch))
    ours = _task_settings(Path(compile_pipeline(str(tmp_path / "ours.yaml"))))
    assert set(mine) == {"start", "ingest", "convert-onnx", "score", "rank", "report"}
    for name, settings in mine.items():
        expected = dict(ours[name])
        if name == "ingest":  # timeout_s=12 * 3600 in the example
            assert int(expected.pop("activeDeadlineSeconds")) == 6 * 3600
            expected["activeDeadlineSeconds"] = str(12 * 3600)
        if name == "score":  # node_selector={... "nvidia-l4"} in the example
            expected["nodeSelector"] = {"labels": {"cloud.google.com/gke-accelerator": "nvidia-l4"}}
        assert settings == expected, name
        assert settings["podMetadata"]["labels"] == TASK_POD_LABELS, name
        assert settings["securityContext"] == {
            "runAsUser": "10001",
            "runAsGroup": "10001",
            "runAsNonRoot": True,
        }, name
        assert int(settings["activeDeadlineSeconds"]) > 0, name
        assert settings["resources"]["resourceMemoryLimit"], name
    score = mine["score"]
    accelerator = score["resources"]["accelerator"]
    assert (accelerator["resourceType"], accelerator["resourceCount"]) == ("nvidia.com/gpu", "1")
    resources = score["resources"]
    assert (resources["resourceCpuRequest"], resources["resourceMemoryLimit"]) == ("4", "16G")
    assert score["nodeSelector"] == {"labels": {"cloud.google.com/gke-accelerator": "nvidia-l4"}}
    assert score["tolerations"] == [
        {"effect": "NoSchedule", "key": "nvidia.com/gpu", "operator": "Exists"}
    ]
    assert int(mine["ingest"]["activeDeadlineSeconds"]) == 12 * 3600
    assert not any("accelerator" in mine[name]["resources"] for name in mine if name != "score")


def test_what_kfp_keeps_of_the_descriptions(tmp_path, monkeypatch):
    # As docs/how-to/use-components-in-your-pipeline.md says: the loaded component keeps its
    # own description, not its inputs'; the user's compiled pipeline keeps neither.
    loaded = components.load_component_from_file(os.path.join(YAML_FOLDER, "score.yaml"))
    assert loaded.description.startswith("Score one sample shard")
    assert all(spec.description is None for spec in loaded.component_spec.inputs.values())
    pipeline = next(yaml.safe_load_all(_docs_example(tmp_path, monkeypatch).read_text()))
    for name, component in pipeline["components"].items():
        inputs = component.get("inputDefinitions", {})
        for spec in {**inputs.get("parameters", {}), **inputs.get("artifacts", {})}.values():
            assert "description" not in spec, name
    described = pipeline["root"]["inputDefinitions"]["parameters"]
    assert described["root"]["description"] == "where runs go, gs://bucket/runs"


def test_compiled_pipeline_describes_every_input_and_hands_typed_artifacts(tmp_path):
    from pipelines.prioritize import compile_pipeline

    path = compile_pipeline(str(tmp_path / "prioritize.yaml"))
    pipeline = next(yaml.safe_load_all(Path(path).read_text()))
    parameters = pipeline["root"]["inputDefinitions"]["parameters"]
    assert all(spec.get("description") for spec in parameters.values())
    for name, component in pipeline["components"].items():
        if name.startswith("comp-for-loop"):
            continue
        inputs = component["inputDefinitions"]
        for input_name, spec in {
            **inputs.get("parameters", {}),
            **inputs.get("artifacts", {}),
        }.items():
            assert spec.get("description"), f"{name}: {input_name}"
    outputs = {
        name: {key: spec["artifactType"]["schemaTitle"] for key, spec in
               component.get("outputDefinitions", {}).get("artifacts", {}).items()}
        for name, component in pipeline["components"].items()
    }  # fmt: skip
    assert outputs["comp-convert-onnx"] == {"onnx_model": "system.Model"}
    assert outputs["comp-ingest"] == {"pool": "system.Dataset"}
    assert outputs["comp-score"] == {"scores": "system.Dataset"}
    assert outputs["comp-rank"] == {"ranking": "system.Dataset"}
