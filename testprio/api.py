"""The public API, for notebooks and scripts: ``run``, ``evaluate``, ``export_labels``,
``import_labels``, and ``push_labels``/``pull_labels`` (the same through Label Studio's
API). The ``testprio`` command line calls the same functions, so a notebook and the CLI
given the same inputs make the same run.

Each public function checks its inputs and raises ``TestprioError`` with one sentence; the
work is done by the private function after it (and by ``testprio.local_run``,
``testprio.evaluation`` and ``testprio.labels``, imported only when called).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from testprio import storage
from testprio.errors import TestprioError
from testprio.evaluation_file import EVALUATION_NAME
from testprio.layout import RunLayout, check_run_id, new_run_id
from testprio.local_run import RUN_DEFAULTS, check_run_options

if TYPE_CHECKING:
    import pandas as pd

    from testprio.labels import ImportResult, LabelExport
    from testprio.labels.label_studio import PushResult

__all__ = [
    "EVALUATE_OPTIONS",
    "EvaluationResult",
    "RunResult",
    "evaluate",
    "export_labels",
    "import_labels",
    "pull_labels",
    "push_labels",
    "run",
]


class _RunFolder:
    """What every result has: the run folder it lives in (``layout``, set by the dataclass)."""

    layout: RunLayout

    @property
    def run_id(self) -> str:
        """The run folder's name."""
        return self.layout.run_id

    @property
    def uri(self) -> str:
        """The run folder, ``ROOT/RUN_ID``."""
        return self.layout.uri


# --- run ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunResult(_RunFolder):
    """A finished ``prioritize`` run: its folder and what it wrote there.

    Attributes:
        layout: the run folder's layout (``testprio.layout.RunLayout``).
        summary: the content of ``summary.json`` (counts, metric, the top-k rows, label
            figures when the pool has labels).
    """

    layout: RunLayout
    summary: dict

    @classmethod
    def open(cls, run: str) -> RunResult:
        """The result of an earlier run.

        Args:
            run: the run folder ``ROOT/RUN_ID`` (local path or ``gs://``).

        Returns:
            Its ``RunResult``.

        Raises:
            TestprioError: the folder holds no ``run.json`` or no ``summary.json``.
        """
        layout = _run_layout(run)
        if not storage.exists(layout.summary):
            raise TestprioError(f"run {run} has no summary.json; it has not finished ranking.")
        return cls(layout, storage.read_json(layout.summary))

    @property
    def report_path(self) -> str:
        """The run's static HTML report."""
        return self.layout.report_html

    @property
    def record(self) -> dict:
        """``run.json`` as it is now (status, parameters, stages, imported label figures)."""
        return storage.read_json(self.layout.run_json)

    def ranking(self, columns: list[str] | None = None, top: int | None = None) -> pd.DataFrame:
        """The ranking (``ranking.parquet``) as a DataFrame, most uncertain sample first.

        Args:
            columns: the columns to read (default: all; ``rank``, ``sample_id``, the
                metric's score, ``predicted``, ``confidence``, ...).
            top: only the first ``top`` ranks (default: every ranked sample).

        Returns:
            One row per ranked sample, in rank order.

        Raises:
            TestprioError: ``top`` is negative.
        """
        if top is not None and top < 0:
            raise TestprioError(f"top {top} must be zero or positive.")
        table = storage.read_table(self.layout.ranking, columns=columns)
        if top is not None:
            table = table.slice(0, top)
        return table.to_pandas()


def run(
    *,
    model: str,
    data: str,
    root: str,
    runner: str = "subprocess",
    verbose: bool = False,
    **options: Any,
) -> RunResult:
    """Rank a pool by how unsure the model is: the ``prioritize`` pipeline, run on this
    machine through the KFP local runner, as ``testprio run`` does.

    Args:
        model: the model file (ONNX, TorchScript/``.pt2``, Keras, ...): local path or URI.
        data: the unlabeled (or labeled) pool: local path or URI.
        root: the runs folder; the run is written to ``ROOT/RUN_ID``.
        runner: ``subprocess`` (every task in this Python environment) or ``docker``
            (every task in its own image).
        verbose: show every KFP task log line, not only the progress lines.
        **options: any other ``testprio run`` parameter by its name (``run_id``, ``metric``,
            ``top_k``, ``shard_size``, ``preset``, ...; ``testprio.params``); the others
            take their defaults (``testprio.local_run.RUN_DEFAULTS``).

    Returns:
        The finished run.

    Raises:
        TestprioError: an unknown option, an input that does not exist, a parameter out of
            range, a bad run id, or a stage that failed (its own sentence).
    """
    check_run_options(options, runner)
    parameters = {
        "model": model,
        "data": data,
        "root": storage.normalize_root(root),
        **RUN_DEFAULTS,
        **options,
    }
    parameters["run_id"] = parameters["run_id"] or new_run_id()
    for key in ("model", "data", "custom_ops"):
        parameters[key] = _existing_input(key, parameters[key])
    from testprio.stages import validate_parameters

    validate_parameters(parameters)
    check_run_id(parameters["run_id"])
    return _run(parameters, runner=runner, verbose=verbose)


def _run(parameters: dict, *, runner: str, verbose: bool) -> RunResult:
    from testprio.local_run import run_pipeline_locally

    print(
        f"testprio run {parameters['run_id']} -> "
        f"{storage.join(parameters['root'], parameters['run_id'])}",
        file=sys.stderr,
    )
    layout = run_pipeline_locally(parameters, verbose=verbose, runner=runner)
    return RunResult(layout, storage.read_json(layout.summary))


def _existing_input(name: str, value: str) -> str:
    """A local input as an absolute path that exists (URIs are checked by their stage)."""
    if not value or "://" in value:
        return value
    path = storage.normalize_root(str(value))
    if not storage.exists(path):
        raise TestprioError(f"--{name.replace('_', '-')} {value} does not exist; check the path.")
    return path


# --- evaluate -------------------------------------------------------------------------------

# testprio run's ingest options that say how the pool, the test split and the training data
# are read (testprio.evaluate_cli.INGEST_FLAGS, the same names as flags).
_INGEST_OPTIONS = (
    "preset",
    "ops",
    "custom_ops",
    "input_shape",
    "value_range",
    "tensor_column",
    "label_column",
    "on_bad_sample",
)
# ``testprio evaluate``'s options besides the inputs, the root and the run id.
EVALUATE_OPTIONS = (
    "budgets",
    "prioritizers",
    "seeds",
    "split",
    "splits",
    "epochs",
    "framework",
    "output_kind",
    "output_name",
    "shard_size",
    "layers",
    "surprise_layer",
    "surprise_reduce",
    "coverage_params",
    "metamorphic_transforms",
    "followups",
    *_INGEST_OPTIONS,
)


@dataclass(frozen=True)
class EvaluationResult(_RunFolder):
    """A finished evaluation of prioritizers (``testprio evaluate``).

    Attributes:
        layout: the run folder's layout.
        evaluation: the content of ``evaluation.json`` (per prioritizer: APFD, faults found
            per budget, accuracy after retraining; the winners per budget).
    """

    layout: RunLayout
    evaluation: dict

    @property
    def evaluation_path(self) -> str:
        """``ROOT/RUN_ID/evaluation.json``."""
        return storage.join(self.layout.uri, EVALUATION_NAME)

    def table(self, name: str = "apfd") -> pd.DataFrame:
        """One table of the evaluation as a DataFrame (``evaluation_file.evaluation_frames``).

        Args:
            name: ``apfd`` (default), ``faults``, ``retrain``, ``baseline``, ``winners``,
                ``curves`` or ``curve_references``.

        Returns:
            The table, one row per prioritizer (and budget, or curve point).

        Raises:
            TestprioError: ``name`` is not one of the tables.
        """
        import pandas as pd

        from testprio.evaluation_file import evaluation_frames

        frames = evaluation_frames(self.evaluation)
        if name not in frames:
            raise TestprioError(f"no table '{name}'; choose from {', '.join(frames)}.")
        return pd.DataFrame(frames[name])

    def html(self) -> str:
        """The evaluation as one HTML page (the tables and the fault-detection curves), as
        the ``evaluate`` pipeline shows it; e.g. ``IPython.display.HTML(result.html())``."""
        from testprio.evaluation import evaluation_html

        return evaluation_html(self.evaluation)


def evaluate(
    *,
    model: str,
    data: str,
    train_data: str,
    root: str,
    test_data: str = "",
    run_id: str = "",
    **options: Any,
) -> EvaluationResult:
    """Compare prioritizers on a labeled pool, as ``testprio evaluate`` does: APFD, faults
    found in the top b% and the test accuracy of the model retrained on its training data
    plus the top b%. Writes ``ROOT/RUN_ID/evaluation.json``.

    Args:
        model: the model file: local path or URI.
        data: the labeled pool to prioritize.
        train_data: the model's labeled training data.
        root: the runs folder.
        test_data: held-out labeled test data (empty: give ``split``).
        run_id: the run folder's name (default: a timestamp).
        **options: ``testprio evaluate``'s options by name (``EVALUATE_OPTIONS``), as
            Python values or as the command line's text: ``budgets=(1, 5)`` or ``"1,5"``,
            ``prioritizers=("gini", "random")`` or ``"gini,random"``, ``seeds=2``,
            ``split=0.3``, ``epochs=1``, ``coverage_params={...}`` or JSON, ...

    Returns:
        The finished evaluation.

    Raises:
        TestprioError: an unknown option, a bad option value, an input that does not exist,
            a bad run id, no test split, or a failure of the evaluation itself.
    """
    unknown = sorted(set(options) - set(EVALUATE_OPTIONS))
    if unknown:
        raise TestprioError(
            f"unknown evaluate option(s) {', '.join(unknown)}; use those of testprio "
            f"evaluate ({', '.join(EVALUATE_OPTIONS)})."
        )
    from testprio import evaluation
    from testprio.evaluation.options import check_test_split

    checked = evaluation.check_options(_evaluate_options(options))
    check_test_split(bool(test_data), checked.split, checked.splits)  # before any file
    uris = {
        name: _existing_input(name, value)
        for name, value in (
            ("model", model),
            ("data", data),
            ("train_data", train_data),
            ("test_data", test_data),
        )
    }
    run_id = check_run_id(run_id or new_run_id())
    return _evaluate(storage.normalize_root(root), run_id, uris, checked)


def _evaluate(root: str, run_id: str, uris: dict, options) -> EvaluationResult:
    from testprio import evaluation

    print(f"testprio evaluate {run_id} -> {storage.join(root, run_id)}", file=sys.stderr)
    result = evaluation.run_evaluation(root, run_id, options=options, **uris)
    return EvaluationResult(RunLayout.create(root, run_id), result)


def _names(value, parse) -> tuple[str, ...]:
    return parse(value) if isinstance(value, str) else tuple(value)


def _evaluate_options(options: dict):
    """``testprio.evaluation.EvaluateOptions`` from options as Python values or CLI text."""
    from testprio import evaluation
    from testprio.evaluation.options import given_prioritizers
    from testprio.ingest.options import ingest_options

    defaults = evaluation.EvaluateOptions()
    value = options.get
    budgets = value("budgets", defaults.budgets)
    coverage = value("coverage_params", defaults.coverage_params)
    ingest = {name: options[name] for name in (*_INGEST_OPTIONS, "shard_size") if name in options}
    return evaluation.EvaluateOptions(
        budgets=evaluation.parse_budgets(budgets) if isinstance(budgets, str) else budgets,
        # Named means chosen: an empty value is refused (leave it out for the defaults).
        prioritizers=given_prioritizers(options["prioritizers"])
        if "prioritizers" in options
        else (),
        seeds=value("seeds", defaults.seeds),
        split=value("split", defaults.split),
        splits=value("splits", defaults.splits),
        epochs=value("epochs", defaults.epochs),
        framework=value("framework", defaults.framework),
        output_kind=value("output_kind", defaults.output_kind),
        output_name=value("output_name", defaults.output_name),
        input_shape=value("input_shape", defaults.input_shape) or "",
        layers=_names(value("layers", ()), evaluation.parse_names),
        surprise_layer=(value("surprise_layer", "") or "").strip(),
        surprise_reduce=(value("surprise_reduce", "") or defaults.surprise_reduce).strip(),
        coverage_params=(
            evaluation.parse_coverage_params(coverage) if isinstance(coverage, str) else coverage
        ),
        metamorphic_transforms=_names(value("metamorphic_transforms", ()), evaluation.parse_names),
        followups=value("followups", defaults.followups),
        ingest=ingest_options(ingest),
    )


# --- labels ---------------------------------------------------------------------------------


def _run_layout(run: str | RunResult) -> RunLayout:
    if isinstance(run, RunResult):
        return run.layout
    from testprio.labels import open_run

    return open_run(str(run))


def export_labels(
    run: str | RunResult,
    out: str,
    *,
    top_k: int | None = None,
    ranks: str | None = None,
    url_prefix: str = "",
    data: str | None = None,
    pre_annotate: bool = False,
) -> LabelExport:
    """Export ranks 1..``top_k`` (or ``ranks``) of a finished run for labelling, as
    ``testprio labels export`` does: ``labels.csv``, Label Studio tasks and config, the
    images and a README, in the new folder ``out``. Blind unless ``pre_annotate``.

    Args:
        run: the run (a ``RunResult``, or its folder ``ROOT/RUN_ID``).
        out: a new folder (local or ``gs://``).
        top_k: export ranks 1..``top_k`` (default: the run's ``top_k``).
        ranks: export ranks ``"A-B"`` instead, inclusive, e.g. ``"101-200"``.
        url_prefix: put before ``images/...`` in the Label Studio tasks.
        data: the pool, if it moved since the run.
        pre_annotate: put the model's class and scores in labels.csv and the tasks (its
            class as a Label Studio pre-annotation); without it the labeller sees no
            model answer.

    Returns:
        The export: ``uri`` (``out``), ``ranks``, ``rows`` (one dict per sample, the
        ``labels.csv`` columns), ``image_mode`` (``original`` or ``rendered``).

    Raises:
        TestprioError: not a run, both ``top_k`` and ``ranks``, bad ranks, or ``out``
            already holds an export.
    """
    layout = _run_layout(run)
    from testprio import labels

    return labels.export_labels(
        layout,
        out,
        top_k=top_k,
        ranks=ranks,
        url_prefix=url_prefix,
        data_uri=data or None,
        pre_annotate=pre_annotate,
    )


def import_labels(
    run: str | RunResult, file: str, *, max_file_mb: float | None = None
) -> ImportResult:
    """Merge a labels file into the run's ``labels.parquet`` and record the figures of the
    labelled samples (accuracy, APFD) in ``run.json``, as ``testprio labels import`` does.

    Args:
        run: the run (a ``RunResult``, or its folder ``ROOT/RUN_ID``).
        file: a Label Studio JSON export, or a CSV with ``sample_id`` and ``label``; a
            regular file of at most ``max_file_mb`` MB (default 256).

    Returns:
        What the import did: ``read``, ``skipped``, ``added``, ``changed``, ``labelled``
        (the figures now in ``run.json``), ``uri`` (``labels.parquet``), ``report`` (the
        run's ``report.html``, rendered again to show them; None without one);
        ``sentence()``.

    Raises:
        TestprioError: not a run, or any problem in the file (nothing is written then).
    """
    layout = _run_layout(run)
    from testprio import labels
    from testprio.labels.readers import DEFAULT_MAX_FILE_MB

    limit = DEFAULT_MAX_FILE_MB if max_file_mb is None else max_file_mb
    return _with_report(layout, labels.import_labels(layout, file, max_file_mb=limit))


def _with_report(layout: RunLayout, result: ImportResult) -> ImportResult:
    """``result`` once the run's report.html shows the imported labels (where it has one)."""
    from testprio.report import refresh_report_html

    return replace(result, report=refresh_report_html(layout))


def push_labels(
    run: str | RunResult,
    *,
    url: str,
    token: str,
    project: str | None = None,
    top_k: int | None = None,
    ranks: str | None = None,
    pre_annotate: bool = False,
    data: str | None = None,
) -> PushResult:
    """Push ranks 1..``top_k`` (or ``ranks``) of a finished run into a Label Studio project,
    as ``testprio labels push`` does: the labelling interface, the images (uploaded) and
    one task per sample the project does not hold yet. Blind unless ``pre_annotate``.

    Args:
        run: the run (a ``RunResult``, or its folder ``ROOT/RUN_ID``).
        url: the Label Studio server, e.g. ``http://localhost:8080``.
        token: a personal access token (Account & Settings > Personal Access Token) or a
            legacy token.
        project: the project's title or ID; a title no project has makes a new project
            (default title: ``testprio RUN_ID``).
        top_k: push ranks 1..``top_k`` (default: the run's ``top_k``).
        ranks: push ranks ``"A-B"`` instead, inclusive.
        pre_annotate: show the model's class as a pre-annotation.
        data: the pool, if it moved since the run.

    Returns:
        What the push did: ``project_id``, ``project_url``, ``added``, ``already``;
        ``sentence()``.

    Raises:
        TestprioError: not a run, bad ranks, an unreachable server, a refused token, a
            project of another run, or a request Label Studio refused.
    """
    layout = _run_layout(run)
    from testprio.labels import label_studio
    from testprio.labels.export import export_ranks

    chosen = export_ranks(layout, top_k=top_k, ranks=ranks)
    client = label_studio.LabelStudio(url, token)
    return label_studio.push_export(
        layout,
        client,
        ranks=chosen,
        project=project,
        pre_annotate=pre_annotate,
        data_uri=data or None,
    )


def pull_labels(
    run: str | RunResult, *, url: str, token: str, project: str | None = None
) -> ImportResult:
    """Import the labels of a Label Studio project into the run, as ``testprio labels pull``
    does: the project is exported through Label Studio's API and imported as
    ``import_labels`` imports an exported file.

    Args:
        run: the run (a ``RunResult``, or its folder ``ROOT/RUN_ID``).
        url: the Label Studio server.
        token: a personal access token or a legacy token.
        project: the project's title or ID (default title: ``testprio RUN_ID``).

    Returns:
        What the import did, as ``import_labels`` returns it.

    Raises:
        TestprioError: not a run, an unreachable server, a refused token, no such project,
            a project of another run, or any problem in its labels (nothing is written).
    """
    layout = _run_layout(run)
    from testprio.labels import label_studio

    client = label_studio.LabelStudio(url, token)
    return _with_report(layout, label_studio.pull_project(layout, client, project=project))
