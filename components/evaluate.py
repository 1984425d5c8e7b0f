"""The ``evaluate`` pipeline's components: run the evaluation, then hand its figures, tables
and charts to the Kubeflow UI. Bodies are calls into ``testprio.evaluation``.

The evaluate task fine-tunes the user's model, so it runs in the image of the model's
framework (``EVALUATE_IMAGES``): the runtime for ONNX (head retraining in NumPy), the
PyTorch or TensorFlow convert image otherwise.
"""

from kfp import dsl
from kfp.dsl import HTML, Markdown, Metrics, Output

from components.images import CONVERT_PYTORCH, CONVERT_TENSORFLOW, RUNTIME

EVALUATE_IMAGES = {"onnx": RUNTIME, "pytorch": CONVERT_PYTORCH, "tensorflow": CONVERT_TENSORFLOW}


def evaluate_pool(
    root: str,
    run_id: str,
    model: str,
    data: str,
    train_data: str,
    test_data: str = "",
    budgets: str = "1,2,5,10",
    prioritizers: str = "",
    seeds: int = 5,
    split: float = 0.0,
    splits: int = 1,
    epochs: int = 3,
    framework: str = "auto",
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
) -> str:
    """Evaluate the prioritizers; returns the URI of {root}/{run_id}/evaluation.json."""
    from testprio.evaluation import run_from_parameters

    return run_from_parameters(
        root, run_id, model=model, data=data, train_data=train_data, test_data=test_data,
        budgets=budgets, prioritizers=prioritizers, seeds=seeds, split=split, splits=splits,
        epochs=epochs, framework=framework, output_kind=output_kind, preset=preset, ops=ops,
        input_shape=input_shape, shard_size=shard_size, label_column=label_column,
        layers=layers, surprise_layer=surprise_layer, surprise_reduce=surprise_reduce,
        coverage_params=coverage_params,
        metamorphic_transforms=metamorphic_transforms, followups=followups,
    )  # fmt: skip


EVALUATE_COMPONENTS = {
    framework: dsl.component(base_image=image, install_kfp_package=False)(evaluate_pool)
    for framework, image in EVALUATE_IMAGES.items()
}


@dsl.component(base_image=RUNTIME, install_kfp_package=False)
def evaluate_report(
    evaluation: str,
    metrics: Output[Metrics],
    markdown: Output[Markdown],
    html: Output[HTML],
):
    """Per prioritizer KFP metrics (normalized APFD, faults found and retrained accuracy per
    budget), the tables in Markdown and a page with the charts."""
    from testprio.evaluation import report_outputs

    report = report_outputs(evaluation)
    for name, value in report.metrics.items():
        metrics.log_metric(name, value)
    with open(markdown.path, "w", encoding="utf-8") as handle:
        handle.write(report.markdown)
    with open(html.path, "w", encoding="utf-8") as handle:
        handle.write(report.html)
