"""testprio.params is the one table of run parameters: the CLI, the stages, the docs, the
pipeline's and the components' signatures and descriptions all agree with it."""

import re
from pathlib import Path

import pytest

from testprio import cli, params, stages
from testprio.errors import TestprioError
from testprio.ingest import IngestOptions

DOCS = Path(__file__).parent.parent / "docs" / "reference" / "cli.md"


def _signature(component) -> dict:
    """``{input name: (KFP type, default)}`` of a component's or pipeline's parameters."""
    return {
        name: (spec.type, None if spec.optional is False else spec.default)
        for name, spec in component.component_spec.inputs.items()
        if spec.type in params.KFP_TYPES.values()
    }


def _expected(stage: str) -> dict:
    return {
        p.name: (params.KFP_TYPES[p.type], None if p.required else p.default)
        for p in params.of_stage(stage)
    }


def test_the_pipeline_signature_is_the_registry():
    from pipelines.prioritize import prioritize

    expected = {
        p.name: (params.KFP_TYPES[p.type], None if p.required else p.default)
        for p in params.PARAMETERS
    }
    assert _signature(prioritize) == expected
    assert list(prioritize.component_spec.inputs) == [p.name for p in params.PARAMETERS]


@pytest.mark.parametrize("stage", params.STAGES)
def test_each_component_takes_its_run_parameters_as_the_registry_says(stage):
    from components.compile_yaml import COMPONENTS

    component = COMPONENTS["convert-onnx" if stage == "convert" else stage]
    # Inputs that are not run parameters (run_uri, shard, job_name, device, converter).
    own = {"run_uri", "shard", "job_name", "device", "converter"}
    taken = {name: value for name, value in _signature(component).items() if name not in own}
    assert taken == _expected(stage)


def test_every_pipeline_and_component_input_has_a_description():
    from components.compile_yaml import COMPONENTS
    from pipelines.prioritize import prioritize

    for component in [prioritize, *COMPONENTS.values()]:
        for name, spec in component.component_spec.inputs.items():
            assert spec.description, f"{component.name}: {name}"
    described = prioritize.component_spec.inputs["metric"].description
    assert described == params.BY_NAME["metric"].help


def test_describe_refuses_an_undescribed_input():
    def task(run_uri: str, metric: str = "gini"):
        """A task."""

    with pytest.raises(TypeError, match="input 'run_uri' has no description"):
        params.describe()(task)
    with pytest.raises(TypeError, match="'shard' is not one of its inputs"):
        params.describe(run_uri="the run", shard="a shard")(task)


def test_cli_defaults_and_flags_come_from_the_registry():
    assert cli.RUN_DEFAULTS == {
        p.name: p.default for p in params.PARAMETERS if p.cli and not p.required
    }
    run_parser = cli.build_parser()._subparsers._group_actions[0].choices["run"]
    flags = {
        action.option_strings[0]
        for action in run_parser._actions
        # Not run parameters: how the run is shown and where its tasks run.
        if action.option_strings and action.option_strings[0] not in ("-h", "--verbose", "--runner")
    }
    assert flags == {p.flag for p in params.PARAMETERS if p.cli}
    # Flags users and scripts rely on keep their spelling and defaults.
    args = run_parser.parse_args(["--model", "m", "--data", "d", "--root", "r"])
    assert (args.metric, args.shard_size, args.batch_size, args.top_k) == ("gini", 10_000, 256, 10)
    assert (args.parity_tolerance, args.max_data_gb, args.download_timeout_s) == (
        1e-3,
        20.0,
        14400.0,
    )
    assert args.allow_private_urls is False and args.strict_model_checks is False


def test_ingest_defaults_are_the_stage_own():
    defaults = IngestOptions()
    for name in stages.INGEST_PARAMETERS:
        if name not in ("input_shape", "value_range"):  # parsed from text by the stage
            assert params.BY_NAME[name].default == getattr(defaults, name), name
    assert stages.FLOAT_PARAMETERS == tuple(p.name for p in params.PARAMETERS if p.type is float)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("shard_size", 0, "--shard-size 0 must be a positive number."),
        ("batch_size", -1, "--batch-size -1 must be a positive number."),
        ("gpu_batch_size", -1, "--gpu-batch-size -1 must be zero or positive."),
        ("top_k", -2, "--top-k -2 must be zero or positive."),
        ("followups", 10**9, "--followups 1000000000 must be at most 1,000."),
    ],
)
def test_minimums_from_the_registry(tmp_path, name, value, message):
    from tests.conftest import linear_classifier

    model = linear_classifier(tmp_path / "model.onnx")
    parameters = {**cli.RUN_DEFAULTS, "model": str(model), "data": "pool.npz", "root": "r"}
    with pytest.raises(TestprioError, match=re.escape(message)):
        stages.validate_parameters({**parameters, name: value})


def test_docs_cli_md_holds_the_rendered_table():
    text = DOCS.read_text(encoding="utf-8")
    found = re.search(r"<!-- params:start -->\n(.*?)<!-- params:end -->", text, re.S)
    assert found, (
        "docs/reference/cli.md lacks the <!-- params:start --> / <!-- params:end --> markers"
    )
    assert found.group(1) == params.markdown_table(), (
        "docs/reference/cli.md's option table is stale: python -m testprio.params > the table"
    )


def test_metric_choices_are_the_one_prioritizer_table_evaluate_uses_too():
    from testprio.evaluation import PRIORITIZERS
    from testprio.prioritizers import NAMES

    assert params.BY_NAME["metric"].choices == tuple(NAMES)
    assert set(PRIORITIZERS) - {"random"} == set(NAMES)
    assert NAMES["kmnc"].column == "kmnc" and NAMES["kmnc"].order == "cam"


def test_prioritizer_parameters_reach_their_tasks():
    assert [p.name for p in params.of_stage("reference")][-3:] == [
        "train_data",
        "layers",
        "surprise_reduce",
    ]
    assert {"metamorphic", "followups"} <= {p.name for p in params.of_stage("score")}
    assert "data" not in {p.name for p in params.of_stage("reference")}


@pytest.mark.parametrize(
    ("argv", "expected"),
    [([], ""), (["--metamorphic"], "default"), (["--metamorphic", "blur,noise"], "blur,noise")],
)
def test_metamorphic_flag_alone_means_the_default_transforms(argv, expected):
    from testprio import cli

    args = cli.build_parser().parse_args(
        ["run", "--model", "m.onnx", "--data", "d.npz", "--root", "r", *argv]
    )
    assert args.metamorphic == expected
