"""components/yaml/: one committed YAML per component, equal to a fresh compile, loadable
into a user's own pipeline."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from kfp import compiler, components, dsl

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
    # kfp's loader drops descriptions; the YAML (what the Kubeflow UI reads) has them.
    definitions = yaml.safe_load(Path(path).read_text())["components"][f"comp-{name}"]
    inputs = definitions["inputDefinitions"]
    described = {**inputs.get("parameters", {}), **inputs.get("artifacts", {})}
    assert set(described) == set(loaded.component_spec.inputs)
    assert all(spec.get("description") for spec in described.values()), name


def test_loaded_components_wire_into_a_user_pipeline(tmp_path):
    load = {
        name: components.load_component_from_file(os.path.join(YAML_FOLDER, f"{name}.yaml"))
        for name in ("start", "ingest", "convert-onnx", "score", "rank")
    }

    @dsl.pipeline(name="my-prioritize")
    def mine(model: str, data: str, root: str):
        run = load["start"](model=model, data=data, root=root, run_id="mine").output
        ingest = load["ingest"](run_uri=run, data=data)
        convert = load["convert-onnx"](run_uri=run, model=model, converter="onnx")
        convert.after(ingest)
        with dsl.ParallelFor(ingest.outputs["Output"]) as shard:
            score = load["score"](shard=shard, device="cpu").after(convert)
        load["rank"](
            run_uri=run,
            onnx_model=convert.outputs["onnx_model"],
            pool=ingest.outputs["pool"],
            scores=dsl.Collected(score.outputs["scores"]),
            metric="entropy",
        )

    path = tmp_path / "mine.yaml"
    compiler.Compiler().compile(mine, package_path=str(path))
    spec = yaml.safe_load(path.read_text())
    tasks = spec["root"]["dag"]["tasks"]
    assert {"start", "ingest", "convert-onnx", "for-loop-1", "rank"} <= set(tasks)
    artifacts = tasks["rank"]["inputs"]["artifacts"]
    assert artifacts["onnx_model"]["taskOutputArtifact"] == {
        "outputArtifactKey": "onnx_model",
        "producerTask": "convert-onnx",
    }


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
