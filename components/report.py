from kfp import dsl
from kfp.dsl import HTML, ClassificationMetrics, Markdown, Metrics, Output

from components.images import RUNTIME


@dsl.component(base_image=RUNTIME, install_kfp_package=False)
def report(
    run_uri: str,
    ranking: str,
    top_k: int,
    html: Output[HTML],
    markdown: Output[Markdown],
    metrics: Output[Metrics],
    confusion: Output[ClassificationMetrics],
) -> str:
    """Write the run's report/ and finish the run; the Kubeflow UI shows the four outputs.

    ``ranking`` (the rank task's output) only orders this task after rank. Returns the URI
    of report/report.html.
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
