"""The ``evaluate`` pipeline's entry points: its parameters (plain strings and numbers, as
KFP passes them) checked before a run is submitted, made into ``EvaluateOptions``, and run.
"""

from __future__ import annotations

from typing import Any

from testprio import convert, ingest
from testprio.evaluation.experiment import run_evaluation
from testprio.evaluation.options import (
    DEFAULT_EPOCHS,
    DEFAULT_SEEDS,
    EvaluateOptions,
    check_options,
    check_test_split,
    parse_budgets,
    parse_coverage_params,
    parse_names,
    parse_prioritizers,
)
from testprio.evaluation.prioritizers import INSTABILITY_FOLLOWUPS
from testprio.evaluation_file import evaluation_uri
from testprio.ingest import sources
from testprio.layout import RunLayout

# The ingest options a pipeline run may set; each is a testprio run option of that name.
PIPELINE_INGEST_PARAMETERS = ("preset", "ops", "input_shape", "shard_size", "label_column")


def options_from_parameters(
    *,
    budgets: str = "1,2,5,10",
    prioritizers: str = "",
    seeds: int = DEFAULT_SEEDS,
    split: float = 0.0,
    splits: int = 1,
    epochs: int = DEFAULT_EPOCHS,
    framework: str = "auto",
    output_kind: str = "auto",
    layers: str = "",
    surprise_layer: str = "",
    surprise_reduce: str = "mean",
    coverage_params: str = "",
    metamorphic_transforms: str = "",
    followups: int = INSTABILITY_FOLLOWUPS,
    **ingest_parameters: Any,
) -> EvaluateOptions:
    """The checked ``EvaluateOptions`` of the pipeline's parameters (plain strings and
    numbers); ``ingest_parameters``: any of ``PIPELINE_INGEST_PARAMETERS``."""
    return check_options(
        EvaluateOptions(
            budgets=parse_budgets(str(budgets)),
            prioritizers=parse_prioritizers(str(prioritizers)),
            seeds=int(seeds),
            split=float(split),
            splits=splits,
            epochs=int(epochs),
            framework=framework,
            output_kind=output_kind,
            input_shape=ingest_parameters.get("input_shape", ""),
            layers=parse_names(str(layers)),
            surprise_layer=str(surprise_layer).strip(),
            surprise_reduce=str(surprise_reduce).strip(),
            coverage_params=parse_coverage_params(str(coverage_params)),
            metamorphic_transforms=parse_names(str(metamorphic_transforms)),
            followups=int(followups),
            ingest=ingest.ingest_options(ingest_parameters),
        )
    )


# The pipeline parameters that are not options (where the data is and the run goes).
_LOCATION_PARAMETERS = ("root", "run_id", "model", "data", "train_data", "test_data")


def validate_parameters(parameters: dict[str, Any]) -> None:
    """Check the ``evaluate`` pipeline's parameters before a run is submitted (what
    ``testprio submit --pipeline evaluate`` checks); one sentence on the first bad one."""
    convert.resolve_framework(str(parameters["model"]), parameters.get("framework") or "auto")
    for name in ("data", "train_data", "test_data"):
        if parameters.get(name):
            sources.check_data_uri(str(parameters[name]))
    options = options_from_parameters(
        **{k: v for k, v in parameters.items() if k not in _LOCATION_PARAMETERS}
    )
    check_test_split(bool(parameters.get("test_data")), options.split, options.splits, cli=False)


def run_from_parameters(
    root: str,
    run_id: str,
    *,
    model: str,
    data: str,
    train_data: str,
    test_data: str = "",
    **parameters: Any,
) -> str:
    """``run_evaluation`` from the pipeline's parameters; returns the evaluation.json URI.

    ``parameters``: those of :func:`options_from_parameters`. An empty ``run_id`` gets a
    new timestamped one.
    """
    from testprio.layout import new_run_id
    from testprio.log import configure

    configure()
    run_id = run_id or new_run_id()
    run_evaluation(
        root,
        run_id,
        model=model,
        data=data,
        train_data=train_data,
        test_data=test_data,
        options=options_from_parameters(**parameters),
    )
    return evaluation_uri(RunLayout.create(root, run_id))
