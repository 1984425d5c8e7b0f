"""The ``evaluate`` pipeline: evaluate (ingest pool, test and training data, convert, order
the pool by every prioritizer, retrain per budget and seed) -> evaluate-report (KFP Metrics
per prioritizer, Markdown tables, an HTML page with the charts).

``testprio evaluate`` runs the same library function in its own process; this pipeline is
for running it on a cluster (``compile_pipeline``) or through KFP's local runner.
"""

# No `from __future__ import annotations`: KFP reads the pipeline's annotations as types.
from kfp import compiler, dsl

from components.evaluate import EVALUATE_COMPONENTS, evaluate_report

PIPELINE_NAME = "evaluate"


def pipeline_name(framework: str = "onnx") -> str:
    """``evaluate`` for ONNX models, ``evaluate-<framework>`` for the others."""
    return PIPELINE_NAME if framework == "onnx" else f"{PIPELINE_NAME}-{framework}"


def build_pipeline(framework: str = "onnx"):
    """The ``evaluate`` pipeline whose evaluate task runs in ``framework``'s image (one of
    ``EVALUATE_COMPONENTS``: it fine-tunes models of that framework)."""
    if framework not in EVALUATE_COMPONENTS:
        raise ValueError(
            f"--framework {framework} cannot be evaluated; use one of "
            f"{', '.join(EVALUATE_COMPONENTS)}."
        )
    evaluate_pool = EVALUATE_COMPONENTS[framework]

    @dsl.pipeline(name=pipeline_name(framework), description="Compare test prioritizers.")
    def evaluate(
        root: str,
        model: str,
        data: str,
        train_data: str,
        run_id: str = "",  # empty: a new timestamped id (testprio submit always sets one)
        test_data: str = "",
        budgets: str = "1,2,5,10",
        prioritizers: str = "",
        seeds: int = 5,
        split: float = 0.0,
        splits: int = 1,
        epochs: int = 3,
        output_kind: str = "auto",
        preset: str = "",
        ops: str = "",
        input_shape: str = "",
        shard_size: int = 10_000,
        label_column: str = "",
        layers: str = "",
        surprise_layer: str = "",
        surprise_reduce: str = "mean",
        coverage_params: str = "",
        metamorphic_transforms: str = "",
        followups: int = 10,
    ):
        task = evaluate_pool(
            root=root, run_id=run_id, model=model, data=data, train_data=train_data,
            test_data=test_data, budgets=budgets, prioritizers=prioritizers, seeds=seeds,
            split=split, splits=splits, epochs=epochs, framework="auto", output_kind=output_kind,
            preset=preset, ops=ops, input_shape=input_shape, shard_size=shard_size,
            label_column=label_column, layers=layers, surprise_layer=surprise_layer,
            surprise_reduce=surprise_reduce,
            coverage_params=coverage_params, metamorphic_transforms=metamorphic_transforms,
            followups=followups,
        )  # fmt: skip
        task.set_display_name("evaluate").set_caching_options(False)
        task.set_cpu_request("2").set_memory_request("8G").set_memory_limit("8G")
        report = evaluate_report(evaluation=task.output)
        report.set_display_name("evaluate-report").set_caching_options(False)

    return evaluate


def compile_pipeline(package_path: str, framework: str = "onnx") -> str:
    """Write the KFP YAML of the ``evaluate`` pipeline for ``framework`` models."""
    compiler.Compiler().compile(build_pipeline(framework), package_path=package_path)
    return package_path
