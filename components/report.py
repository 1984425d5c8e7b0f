from kfp import dsl
from kfp.dsl import HTML, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Output

from components.images import RUNTIME
from testprio.params import describe


@dsl.component(base_image=RUNTIME, install_kfp_package=False)
@describe(
    run_uri="the run folder {root}/{run_id} (the start task's output)",
    ranking="the rank task's Dataset artifact (read from the run folder)",
    html="report.html, shown by the Kubeflow UI",
    markdown="the report's summary in Markdown",
    metrics="the run's figures (samples, accuracy, APFD, ...)",
    confusion="the confusion matrix, when the pool has labels",
)
def report(
    run_uri: str,
    ranking: Input[Dataset],
    html: Output[HTML],
    markdown: Output[Markdown],
    metrics: Output[Metrics],
    confusion: Output[ClassificationMetrics],
    top_k: int = 10,
) -> str:
    """Write the run's report/ and finish the run; the Kubeflow UI shows the four outputs.

    Returns the URI of report/report.html.
    """
    from testprio.stages import report_run

    result = report_run(run_uri, top_k)
    with open(html.path, "w", encoding="utf-8") as handle:
        handle.write(result.html)
    with open(markdown.path, "w", encoding="utf-8") as handle:
        handle.write(result.markdown)
    for name, value in result.metrics.items():
        metrics.log_metric(name, value)
    if result.confusion:
        confusion.log_confusion_matrix(result.confusion["categories"], result.confusion["matrix"])
    return result.uri
