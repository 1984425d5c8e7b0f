"""Entry points that the KFP components call: one function per pipeline task.

Each takes plain strings and numbers (what KFP passes), records the stage in ``run.json``
and ``stages/``, and calls the stage's module. Keeping this here leaves each component body
a single call, and lets the tests run every stage without KFP.
"""

from __future__ import annotations

import math
import os
from typing import Any

from testprio import convert, ingest, params, prioritizers, rank, reference, score, storage
from testprio.activations import check_reduction
from testprio.errors import TestprioError
from testprio.ingest import sources
from testprio.layout import RunLayout, finish_run, stage
from testprio.layout import start_run as layout_start_run
from testprio.log import configure

# KFP refuses an int (max_data_gb=5) for a float input; callers pass these as floats.
FLOAT_PARAMETERS = params.names_of_type(float)


_MINIMUM_SENTENCES = {0: "must be zero or positive.", 1: "must be a positive number."}


def validate_parameters(parameters: dict[str, Any]) -> None:
    """Check every run parameter up front, so a bad one fails the run before any work."""
    train_data = parameters.get("train_data") or ""
    metamorphic = score.parse_metamorphic(parameters.get("metamorphic") or "")
    prioritizers.check_available(
        parameters["metric"], families=computed_families(train_data, metamorphic is not None)
    )
    if parameters.get("layers") and not train_data:
        raise TestprioError(
            "--layers names the hidden layers that coverage and surprise read, which need a "
            "reference pool; give --train-data R too, or leave out --layers."
        )
    check_reduction(parameters.get("surprise_reduce") or "mean")
    rank.check_memory(parameters.get("rank_memory_mb", rank.DEFAULT_MEMORY_MB))
    convert.resolve_framework(parameters["model"], parameters["framework"])
    if parameters["output_kind"] not in convert.OUTPUT_KINDS:
        raise TestprioError(
            f"--output-kind '{parameters['output_kind']}' is not one of "
            f"{', '.join(convert.OUTPUT_KINDS)}."
        )
    for parameter in params.PARAMETERS:  # whole numbers with a floor (the table's minimum)
        value = parameters.get(parameter.name)
        if parameter.minimum is not None and value is not None and int(value) < parameter.minimum:
            raise TestprioError(f"{parameter.flag} {value} {_MINIMUM_SENTENCES[parameter.minimum]}")
        if parameter.maximum is not None and value is not None and int(value) > parameter.maximum:
            raise TestprioError(f"{parameter.flag} {value} must be at most {parameter.maximum:,}.")
    # inf and nan pass every comparison check below them and then break KFP's parameter
    # serialisation or a loop bound: refuse them for notebook and cluster callers too.
    for name in FLOAT_PARAMETERS:
        value = parameters.get(name)
        if value is not None and not math.isfinite(float(value)):
            raise TestprioError(
                f"--{name.replace('_', '-')} {value} is not a finite number; give one like 2.5."
            )
    sources.check_data_uri(parameters["data"])
    if train_data:
        sources.check_data_uri(train_data)
    ingest.check_options(ingest.ingest_options(parameters))
    convert.check_parity_tolerance(
        parameters.get("parity_tolerance", convert.DEFAULT_PARITY_TOLERANCE)
    )


def computed_families(train_data: str, metamorphic: bool) -> set[str]:
    """The optional prioritizer families a run with these options computes."""
    families = set()
    if train_data:
        families |= {prioritizers.COVERAGE_FAMILY, prioritizers.SURPRISE_FAMILY}
    if metamorphic:
        families.add(prioritizers.METAMORPHIC_FAMILY)
    return families


def start_run(root: str, run_id: str, parameters: dict[str, Any]) -> str:
    """First task: check every parameter, write ``run.json``; return the run URI."""
    configure()
    layout = RunLayout.create(root, run_id)
    parameters = {**parameters, "run_id": run_id}
    # run.json is read by whoever reads the run: never the URL's password or signature.
    recorded = {**parameters, "data": sources.redact_url(parameters["data"])}
    if parameters.get("train_data"):
        recorded["train_data"] = sources.redact_url(parameters["train_data"])
    layout_start_run(layout, recorded)  # refuses a folder that holds a finished run
    with stage(layout, "start"):
        validate_parameters(parameters)
    return layout.uri


# Run parameters that say how to read and preprocess the pool, as KFP passes them (the
# ingest task's but the data itself, its second positional argument). The reference task
# takes the same, to read --train-data like the pool.
INGEST_PARAMETERS = tuple(p.name for p in params.of_stage("ingest") if p.name != "data")


def ingest_pool(run_uri: str, data: str, **parameters: Any) -> list[str]:
    """``parameters``: any of ``INGEST_PARAMETERS``."""
    configure()
    layout = RunLayout(run_uri)
    with stage(layout, "ingest") as figures:
        shards = ingest.ingest(layout, data, ingest.ingest_options(parameters))
        manifest = storage.read_json(layout.data_manifest)
        figures.update(
            shards=len(shards),
            samples=manifest["samples"],
            quarantined=manifest["quarantined"],
            duplicates=manifest["duplicates"],
        )
    return shards


def convert_model(
    run_uri: str,
    model: str,
    framework: str,
    output_kind: str,
    output_name: str,
    input_shape: str = "",
    parity_tolerance: float = convert.DEFAULT_PARITY_TOLERANCE,
    strict_model_checks: bool = False,
    converter: str = "",
) -> str:
    """``converter``: the framework the calling component's image converts ('' for any)."""
    configure()
    layout = RunLayout(run_uri)
    with stage(layout, "convert") as figures:
        record = convert.convert(
            layout,
            model,
            framework=framework,
            output_kind=output_kind,
            output_name=output_name,
            input_shape=input_shape,
            parity_tolerance=float(parity_tolerance),
            strict_model_checks=bool(strict_model_checks),
            converter=converter,
        )
        figures.update(
            framework=record["source"]["framework"],
            parity_max_abs_diff=(record["parity"] or {}).get("max_abs_diff_probabilities"),
            checks_passed=record["checks_passed"],
        )
    return layout.model_onnx


def fit_reference(
    run_uri: str,
    train_data: str,
    layers: str = "",
    surprise_reduce: str = "mean",
    **parameters: Any,
) -> str:
    """The reference task: nothing without ``train_data`` (returns ''); else ingest it and
    write the coverage profile and surprise reference (``surprise_reduce``: how a feature map
    becomes surprise's vectors). ``parameters``: ``INGEST_PARAMETERS``.
    Returns the URI of ``reference/profile.json``."""
    if not train_data:
        return ""
    configure()
    layout = RunLayout(run_uri)
    with stage(layout, "reference") as figures:
        record = reference.fit_reference(
            layout,
            train_data,
            ingest.ingest_options(parameters),
            layers=layers,
            surprise_reduce=surprise_reduce,
        )
        figures.update(
            samples=record["samples"], layers=record["layers"], skipped=record["skipped"]
        )
    return reference.profile_uri(layout)


def score_shard(
    shard_uri: str,
    batch_size: int,
    gpu_batch_size: int = 0,
    device: str = "auto",
    metamorphic: str = "",
    followups: int = 10,
) -> str:
    configure()
    layout = RunLayout.of_data_shard(shard_uri)
    stage_name = "score-" + os.path.splitext(os.path.basename(shard_uri))[0]
    with stage(layout, stage_name) as figures:
        result = score.score_shard(
            layout,
            shard_uri,
            batch_size=int(batch_size),
            gpu_batch_size=int(gpu_batch_size),
            device=device,
            metamorphic=metamorphic,
            followups=int(followups),
        )
        figures.update(
            rows=result["rows"],
            skipped=result["skipped"],
            device=result.get("device"),
            batch_size=result.get("batch_size"),
            prioritizers=result.get("prioritizers"),
        )
    return result["uri"]


def score_shards(
    run_uri: str,
    group: int,
    groups: int,
    batch_size: int,
    gpu_batch_size: int = 0,
    device: str = "auto",
    metamorphic: str = "",
    followups: int = 10,
) -> list[str]:
    """Score the pool's shards ``group``, ``group + groups``, ... one after another, each
    as ``score_shard`` does (a stage of its own); returns their scores URIs. A local run's
    score task: there every task is a new process, which costs more than a small shard."""
    layout = RunLayout(run_uri)
    shards = storage.read_json(layout.data_manifest)["shards"]
    return [
        score_shard(
            layout.data_shard(index), batch_size, gpu_batch_size, device, metamorphic, followups
        )
        for index in range(int(group), len(shards), int(groups))
    ]


def rank_scores(
    run_uri: str,
    score_uris: list[str],
    metric: str,
    top_k: int,
    rank_memory_mb: int = rank.DEFAULT_MEMORY_MB,
) -> str:
    configure()
    layout = RunLayout(run_uri)
    with stage(layout, "rank"):
        rank.rank(
            layout,
            list(score_uris),
            metric=metric,
            top_k=int(top_k),
            memory_mb=int(rank_memory_mb),
        )
    return layout.ranking


def report_run(run_uri: str, top_k: int):
    """Last task: write ``report/`` and rewrite ``run.json`` (succeeded) last of all.

    Returns the ``testprio.report.ReportResult`` whose parts the component hands to KFP's
    HTML, Markdown, Metrics and ClassificationMetrics outputs.
    """
    from testprio import report  # charts and templates: only this task needs them

    configure()
    layout = RunLayout(run_uri)
    with stage(layout, "report"):
        result = report.build_report(layout, top_k=int(top_k))
    finish_run(layout)
    return result


def publish_artifact(artifact, run_uri: str, uri: str, **figures: Any) -> dict[str, Any]:
    """Make a KFP output ``artifact`` point at ``uri`` in the run folder; returns its metadata.

    The run layout stays the one place a run's files live: the artifact (any object with
    ``path`` and ``metadata``, e.g. ``dsl.Dataset``) holds a small JSON pointer, not a copy,
    and its metadata (which the Kubeflow UI shows beside the lineage) says the same:
    ``uri``, ``run_uri`` and ``figures``.
    """
    import json

    pointer = {"uri": uri, "run_uri": run_uri, **figures}
    artifact.metadata.update(pointer)
    with open(artifact.path, "w", encoding="utf-8") as handle:
        json.dump(pointer, handle, indent=2)
    return pointer


def artifact_uris(artifacts) -> list[str]:
    """The run-folder URIs that ``publish_artifact`` put in ``artifacts``' metadata: each
    artifact's ``uris`` figure where it points at several files (a local run's score task
    scores several shards), else its ``uri``."""
    return [
        uri
        for artifact in artifacts
        for uri in artifact.metadata.get("uris", [artifact.metadata["uri"]])
    ]
