"""Start, list, cancel and follow runs on a Kubeflow Pipelines cluster, from Python or the CLI.

A small layer over ``kfp.Client`` (``testprio submit`` and ``testprio runs`` use it)::

    from testprio.client import Client

    # with KFP standalone: kubectl port-forward -n kubeflow svc/ml-pipeline-ui 8080:80
    kfp = Client("http://localhost:8080")
    run = kfp.submit(
        {"model": "model.onnx", "data": "pool.npz", "root": "gs://my-bucket/runs"},
        service_account="testprio-pipeline-runner",
    )
    print(run.url)                           # the run in the Kubeflow UI
    kfp.status(run.kfp_run_id).state         # PENDING, RUNNING, SUCCEEDED, FAILED, ...
    kfp.wait(run.kfp_run_id, timeout=3600)   # the final RunState
    kfp.ranking(run, top=20, pandas=True)    # ranking.parquet of the run folder

``submit`` runs a compiled package (``testprio compile``, ``make compile``) given as
``package``; without one it compiles the pipeline for the model's framework on the fly
(``settings``: ``pipelines.prioritize.ClusterSettings``, the GKE defaults if not given). It
checks the parameters against the package's own parameter list and the model
against the package's framework, uploads ``model`` and ``data`` to
``{root}/{run_id}/inputs/`` when they are local paths, and always passes ``run_id`` (a new
timestamped one unless given), so that the run folder ``{root}/{run_id}`` is known from the
moment the run is created.

Kubeflow Pipelines has no REST endpoint for the logs of a v2 run, so ``logs`` tells what can
be told honestly: the state, pod and error of every task (and the ``kubectl logs`` command
that shows a task's output) and the run's own record, ``run.json``, from its folder.
"""

from __future__ import annotations

import collections
import contextlib
import io
import os
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import yaml

from testprio import storage
from testprio.cluster_errors import ClusterError, kfp_errors  # noqa: F401 (testprio.client.ClusterError)
from testprio.errors import TestprioError
from testprio.layout import RunLayout, check_run_id, new_run_id, record_problem

DEFAULT_EXPERIMENT = "testprio"
# The Kubernetes service account of manifests/ that may write to the bucket.
PIPELINE_SERVICE_ACCOUNT = "testprio-pipeline-runner"
# Parameters that name input files: local paths among them are uploaded before submitting.
INPUT_PARAMETERS = ("model", "data", "custom_ops", "train_data", "test_data")
# The pipelines submit can run: name -> module of pipelines/ (pipeline_name, compile_pipeline).
PIPELINES = {"prioritize": "pipelines.prioritize", "evaluate": "pipelines.evaluate"}
TERMINAL_STATES = frozenset({"SUCCEEDED", "FAILED", "SKIPPED", "CANCELED"})
# KFP parameter types -> how a value given as text (command line) becomes that type.
_PARAMETER_TYPES = {
    "STRING": (str, "string"),
    "NUMBER_INTEGER": (int, "whole number"),
    "NUMBER_DOUBLE": (float, "number"),
    "BOOLEAN": (lambda value: _boolean(value), "boolean (true or false)"),
}


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text not in ("true", "false"):
        raise ValueError(value)
    return text == "true"


@dataclass(frozen=True)
class PipelinePackage:
    """A compiled pipeline: its path, name and parameter definitions (name -> definition)."""

    path: str
    name: str
    parameters: dict[str, dict]


@dataclass(frozen=True)
class SubmittedRun:
    """A run that Kubeflow Pipelines accepted."""

    kfp_run_id: str
    name: str
    url: str
    run_uri: str  # the testprio run folder, {root}/{run_id}
    parameters: dict[str, Any]
    uploaded: dict[str, str] = field(default_factory=dict)  # local path -> URI


@dataclass(frozen=True)
class TaskState:
    name: str
    state: str
    pod: str | None = None
    error: str | None = None
    started: datetime | None = None
    ended: datetime | None = None


@dataclass(frozen=True)
class RunState:
    kfp_run_id: str
    name: str
    state: str
    created: datetime | None
    finished: datetime | None
    error: str | None
    url: str
    parameters: dict[str, Any]
    tasks: tuple[TaskState, ...] = ()

    @property
    def done(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def run_uri(self) -> str | None:
        """The run folder, when the run was given its ``run_id`` (``submit`` always does)."""
        root, run_id = self.parameters.get("root"), self.parameters.get("run_id")
        return storage.join(root, run_id) if root and run_id else None


@dataclass(frozen=True)
class RunLogs:
    """What can be known about a run's progress: its tasks, and its own ``run.json``."""

    run: RunState
    record: dict[str, Any] | None  # run.json, when it could be read
    record_note: str  # where run.json is, or why it could not be read
    pod_namespace: str


def _pipeline_module(pipeline: str):
    import importlib

    if pipeline not in PIPELINES:
        raise TestprioError(
            f"pipeline '{pipeline}' is not one of {', '.join(PIPELINES)}; choose one of them."
        )
    return importlib.import_module(PIPELINES[pipeline])


def load_package(
    path: str, *, framework: str = "onnx", pipeline: str = "prioritize"
) -> PipelinePackage:
    """Read the compiled pipeline at ``path``, made (``testprio compile --framework``) for
    ``framework``'s models."""
    compile_hint = (
        "testprio compile"
        + ("" if pipeline == "prioritize" else f" --pipeline {pipeline}")
        + ("" if framework == "onnx" else f" --framework {framework}")
    )
    if not os.path.isfile(path):
        raise TestprioError(
            f"pipeline package {path} does not exist; run `{compile_hint}` (make compile for "
            "ONNX models) first, or give the package's path."
        )
    try:
        with open(path, encoding="utf-8") as handle:
            spec = next(yaml.safe_load_all(handle))
        package = PipelinePackage(
            path, spec["pipelineInfo"]["name"], spec["root"]["inputDefinitions"]["parameters"]
        )
    except (yaml.YAMLError, KeyError, TypeError, StopIteration):
        raise TestprioError(
            f"{path} is not a compiled KFP pipeline; compile it with `{compile_hint}`."
        ) from None
    pipeline_name = _pipeline_module(pipeline).pipeline_name
    if package.name != pipeline_name(framework):
        raise TestprioError(
            f"{path} is the pipeline {package.name}, but the model is a {framework} model, "
            f"which runs in {pipeline_name(framework)}; compile it with `{compile_hint}`."
        )
    return package


def check_parameters(parameters: dict[str, Any], definitions: dict[str, dict]) -> dict[str, Any]:
    """``parameters`` typed as the package declares them; unknown or missing ones fail."""
    unknown = sorted(set(parameters) - set(definitions))
    if unknown:
        raise TestprioError(
            f"'{unknown[0]}' is not a parameter of the compiled pipeline (its parameters: "
            f"{', '.join(sorted(definitions))}); recompile if you expected it."
        )
    missing = [
        name
        for name, definition in definitions.items()
        if name not in parameters and "defaultValue" not in definition
    ]
    if missing:
        raise TestprioError(f"the pipeline needs --{missing[0].replace('_', '-')}; give it.")
    typed = {}
    for name, value in parameters.items():
        convert, description = _PARAMETER_TYPES[definitions[name].get("parameterType", "STRING")]
        try:
            typed[name] = convert(value)
        except (TypeError, ValueError):
            raise TestprioError(f"parameter {name}={value!r} is not a {description}.") from None
    return typed


def upload_inputs(parameters: dict[str, Any], run_uri: str) -> dict[str, str]:
    """Copy local ``model``/``data``/``custom_ops`` files (or folders) into ``{run_uri}/inputs/``.

    Returns ``{local path: URI}`` and points the parameters at the URIs.
    """
    uploaded = {}
    for name in INPUT_PARAMETERS:
        value = parameters.get(name)
        if not value or "://" in str(value):
            continue
        local = os.path.abspath(value)
        if not os.path.exists(local):
            raise TestprioError(f"--{name} {value} does not exist; check the path.")
        target = storage.join(run_uri, "inputs", os.path.basename(local.rstrip(os.sep)))
        if os.path.isdir(local):
            for folder, _, files in os.walk(local):
                for file_name in sorted(files):
                    path = os.path.join(folder, file_name)
                    relative = os.path.relpath(path, local).replace(os.sep, "/")
                    storage.copy_file(path, storage.join(target, relative))
        else:
            storage.copy_file(local, target)
        parameters[name] = uploaded[local] = target
    return uploaded


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


class Client:
    """Runs of the ``prioritize`` pipeline on one Kubeflow Pipelines server.

    ``host`` is the KFP API (or UI) address; without it ``kfp.Client`` finds the server
    itself (``KF_PIPELINES_ENDPOINT``, in-cluster, or the kube config). ``namespace`` is your
    profile namespace with multi-user Kubeflow; ``ui_host`` the UI's address when links
    should point elsewhere than ``host``. Other keyword arguments go to ``kfp.Client``
    (``existing_token=...``, ``credentials=...``); or pass a ready ``kfp_client``.

    Building one needs no server: ``kfp.Client`` (which asks the server for its health as
    it starts) is made on the first call that needs the cluster, and a server that cannot
    be reached then raises ``ClusterError`` with one sentence.
    """

    def __init__(
        self,
        host: str | None = None,
        *,
        namespace: str | None = None,
        ui_host: str | None = None,
        kfp_client=None,
        **client_options: Any,
    ) -> None:
        self.host = host or os.environ.get("KF_PIPELINES_ENDPOINT") or "(in-cluster)"
        self.namespace = namespace
        ui = ui_host or os.environ.get("KF_PIPELINES_UI_ENDPOINT") or host
        if ui and "://" not in ui:
            ui = "http://" + ui
        self.ui_host = (ui or "/pipeline").rstrip("/")
        if namespace:
            client_options["namespace"] = namespace
        self._kfp_arguments = {"host": host, "ui_host": ui_host, **client_options}
        self._kfp = kfp_client

    @property
    def kfp(self):
        """The ``kfp.Client``, made on first use (it calls the server as it starts)."""
        if self._kfp is None:
            import kfp

            with warnings.catch_warnings(), kfp_errors(self.host):
                # "This client only works with Kubeflow Pipeline v2.0.0-beta.2 and later"
                warnings.filterwarnings("ignore", category=FutureWarning, module="kfp")
                self._kfp = kfp.Client(**self._kfp_arguments)
        return self._kfp

    def run_url(self, kfp_run_id: str) -> str:
        return f"{self.ui_host}/#/runs/details/{kfp_run_id}"

    def submit(
        self,
        parameters: dict[str, Any],
        *,
        package: str | None = None,
        run_name: str | None = None,
        experiment: str = DEFAULT_EXPERIMENT,
        service_account: str | None = None,
        enable_caching: bool | None = None,
        pipeline_root: str | None = None,
        settings=None,
        pipeline: str = "prioritize",
    ) -> SubmittedRun:
        """Start a run with ``parameters`` (``model``, ``data``, ``root``, ...).

        ``package``: a compiled pipeline; without it the pipeline of the model's framework
        is compiled now, with ``settings`` (a ``pipelines.prioritize.ClusterSettings``;
        default: its GKE defaults).
        ``enable_caching=False`` turns KFP's cache off for every task of this run; the
        default keeps the compiled settings (cache on for ingest and convert only).
        ``pipeline``: ``prioritize`` or ``evaluate`` (``PIPELINES``; the evaluate pipeline
        takes ``train_data`` and ``test_data`` too, uploaded like ``data``, and has no
        cluster ``settings``).
        """
        from testprio.convert import resolve_framework

        module = _pipeline_module(pipeline)
        if not parameters.get("model"):
            raise TestprioError("the pipeline needs --model; give it.")
        framework = resolve_framework(
            str(parameters["model"]), parameters.get("framework") or "auto"
        )
        with tempfile.TemporaryDirectory(prefix="testprio-compile-") as folder:
            if package is None and pipeline == "evaluate":
                if settings is not None:
                    raise TestprioError(
                        "cluster settings apply to the prioritize pipeline only; leave "
                        "settings out for the evaluate pipeline."
                    )
                try:
                    package = module.compile_pipeline(
                        os.path.join(folder, f"{module.pipeline_name(framework)}.yaml"), framework
                    )
                except ValueError as exc:  # a framework that cannot be fine-tuned
                    raise TestprioError(str(exc)) from None
            elif package is None:
                package = module.compile_pipeline(
                    os.path.join(folder, f"{module.pipeline_name(framework)}.yaml"),
                    settings,
                    framework,
                )
            elif settings is not None:
                raise TestprioError(
                    "give either package (a compiled pipeline) or settings (to compile one "
                    "now), not both."
                )
            return self._submit(
                load_package(package, framework=framework, pipeline=pipeline),
                parameters,
                pipeline=pipeline,
                run_name=run_name,
                experiment=experiment,
                service_account=service_account,
                enable_caching=enable_caching,
                pipeline_root=pipeline_root,
            )

    def _submit(
        self,
        compiled: PipelinePackage,
        parameters: dict[str, Any],
        *,
        run_name: str | None,
        experiment: str,
        service_account: str | None,
        enable_caching: bool | None,
        pipeline_root: str | None,
        pipeline: str = "prioritize",
    ) -> SubmittedRun:
        if pipeline == "evaluate":
            from testprio.evaluation import validate_parameters
        else:
            from testprio.stages import validate_parameters

        definitions = compiled.parameters
        parameters = check_parameters(dict(parameters), definitions)
        root = str(parameters["root"])
        if not root.startswith(storage.GCS_SCHEME):
            raise TestprioError(
                f"--root {root} is not a gs:// URI; a cluster run writes to a bucket (e.g. "
                "gs://BUCKET/runs), as its pods cannot see this machine's disk."
            )
        parameters["root"] = storage.normalize_root(root)
        parameters["run_id"] = check_run_id(parameters.get("run_id") or new_run_id())
        defaults = {k: d["defaultValue"] for k, d in definitions.items() if "defaultValue" in d}
        validate_parameters({**defaults, **parameters})
        layout = RunLayout.create(parameters["root"], parameters["run_id"])
        if storage.exists(layout.run_json):
            raise TestprioError(f"run folder {layout.uri} already exists; choose another run id.")
        uploaded = upload_inputs(parameters, layout.uri)
        name = run_name or f"{pipeline} {parameters['run_id']}"
        # kfp prints its own "Experiment details"/"Run details" lines; we return the link.
        with kfp_errors(self.host), contextlib.redirect_stdout(io.StringIO()):
            result = self.kfp.create_run_from_pipeline_package(
                compiled.path,
                arguments=parameters,
                run_name=name,
                experiment_name=experiment,
                namespace=self.namespace,
                pipeline_root=pipeline_root,
                enable_caching=enable_caching,
                service_account=service_account,
            )
        return SubmittedRun(
            kfp_run_id=result.run_id,
            name=name,
            url=self.run_url(result.run_id),
            run_uri=layout.uri,
            parameters=parameters,
            uploaded=uploaded,
        )

    def _state(self, run) -> RunState:
        details = getattr(run, "run_details", None)
        tasks = sorted(
            (
                TaskState(
                    name=task.display_name or task.task_id or "?",
                    state=_text(task.state) or "RUNTIME_STATE_UNSPECIFIED",
                    pod=task.pod_name or None,
                    error=task.error.message if task.error and task.error.message else None,
                    started=task.start_time,
                    ended=task.end_time,
                )
                for task in (details.task_details or [] if details else [])
            ),
            key=lambda task: (task.started is None, task.started or datetime.min, task.name),
        )
        config = run.runtime_config
        return RunState(
            kfp_run_id=run.run_id,
            name=run.display_name or "",
            state=_text(run.state) or "RUNTIME_STATE_UNSPECIFIED",
            created=run.created_at,
            finished=run.finished_at,
            error=run.error.message if run.error and run.error.message else None,
            url=self.run_url(run.run_id),
            parameters=dict(config.parameters or {}) if config else {},
            tasks=tuple(tasks),
        )

    def list_runs(self, *, limit: int = 20, experiment: str | None = None) -> list[RunState]:
        """The ``limit`` newest runs, of ``experiment`` if given (all experiments if not)."""
        with kfp_errors(self.host):
            experiment_id = None
            if experiment:
                try:
                    found = self.kfp.get_experiment(
                        experiment_name=experiment, namespace=self.namespace
                    )
                except ValueError:
                    return []  # no such experiment: no runs in it
                experiment_id = found.experiment_id
            response = self.kfp.list_runs(
                page_size=limit,
                sort_by="created_at desc",
                experiment_id=experiment_id,
                namespace=self.namespace,
            )
        return [self._state(run) for run in response.runs or []]

    def status(self, kfp_run_id: str) -> RunState:
        with kfp_errors(self.host):
            return self._state(self.kfp.get_run(kfp_run_id))

    def cancel(self, kfp_run_id: str) -> RunState:
        """Ask KFP to terminate the run; returns its state right after the request."""
        with kfp_errors(self.host):
            self.kfp.terminate_run(kfp_run_id)
        return self.status(kfp_run_id)

    def logs(self, kfp_run_id: str) -> RunLogs:
        run = self.status(kfp_run_id)
        record, note = None, "no run folder: the run was started without a run_id"
        if run.run_uri:
            run_json = RunLayout(run.run_uri).run_json
            try:
                record, note = storage.read_json(run_json), run_json
            except TestprioError as exc:
                note = f"{run_json} cannot be read yet ({exc})"
            except ValueError as exc:
                note = f"{run_json} is not a run record testprio wrote ({exc})"
            if record is not None and (problem := record_problem(record)) is not None:
                record, note = None, f"{run_json} is not a run record testprio wrote ({problem})"
        return RunLogs(run, record, note, self.namespace or "kubeflow")

    def watch(
        self, kfp_run_id: str, *, interval: float = 10.0, timeout: float | None = None
    ) -> Iterator[RunState]:
        """Yield the run's state each time it or a task's state changes, until it ends."""
        deadline = None if timeout is None else time.monotonic() + timeout
        seen = None
        while True:
            run = self.status(kfp_run_id)
            signature = (run.state, tuple((t.name, t.state) for t in run.tasks))
            if signature != seen:
                seen = signature
                yield run
            if run.done:
                return
            if deadline is not None and time.monotonic() >= deadline:
                raise TestprioError(
                    f"run {kfp_run_id} is still {run.state} after {timeout:g} s; follow it "
                    f"in the Kubeflow UI: {run.url}"
                )
            time.sleep(interval)

    def wait(
        self, kfp_run_id: str, *, timeout: float | None = None, interval: float = 10.0
    ) -> RunState:
        """Block until the run ends (SUCCEEDED, FAILED, CANCELED, ...); returns its final state.

        Raises ``TestprioError`` when it is still going after ``timeout`` seconds.
        """
        states = self.watch(kfp_run_id, interval=interval, timeout=timeout)
        return collections.deque(states, maxlen=1)[0]  # watch ends with the final state

    def ranking(
        self,
        run: SubmittedRun | RunState | str,
        *,
        top: int | None = None,
        columns: list[str] | None = None,
        pandas: bool = False,
    ):
        """The run's ``ranking.parquet`` (rank 1 = most uncertain first), read from its folder.

        ``run``: what ``submit``, ``status`` or ``wait`` returned, or a KFP run id. ``top``
        keeps the first ``top`` rows, ``columns`` those columns; a pyarrow Table, or a pandas
        DataFrame with ``pandas=True``.
        """
        if isinstance(run, str):
            run = self.status(run)
        if not run.run_uri:
            raise TestprioError(
                f"run {run.kfp_run_id} has no run folder (it was started without root and "
                "run_id); start runs with Client.submit or testprio submit."
            )
        uri = RunLayout(run.run_uri).ranking
        if not storage.exists(uri):
            state = f" (the run is {run.state})" if isinstance(run, RunState) else ""
            raise TestprioError(
                f"run {run.kfp_run_id} has no ranking yet: {uri} does not exist{state}; "
                "wait for the run to succeed (Client.wait) and ask again."
            )
        table = storage.read_table(uri, columns=columns)
        if top is not None:
            table = table.slice(0, top)
        return table.to_pandas() if pandas else table


def format_run(run: RunState) -> str:
    lines = [
        f"{run.name} ({run.kfp_run_id}): {run.state}",
        f"  created  {run.created or '-'}   finished {run.finished or '-'}",
        f"  UI       {run.url}",
    ]
    if run.run_uri:
        lines.append(f"  folder   {run.run_uri}")
    if run.error:
        lines.append(f"  error    {run.error}")
    for task in run.tasks:
        line = f"    {task.name:<24} {task.state}"
        if task.error:
            line += f": {task.error}"
        lines.append(line)
    return "\n".join(lines)


def format_logs(logs: RunLogs) -> str:
    lines = [format_run(logs.run), ""]
    pods = [task for task in logs.run.tasks if task.pod]
    if pods:
        lines.append("Task output (KFP keeps it in the pods; their container is 'main'):")
        lines += [
            f"  {task.name:<24} kubectl logs -n {logs.pod_namespace} {task.pod} -c main"
            for task in pods
        ]
        lines.append("")
    lines.append(f"run.json: {logs.record_note}")
    record = logs.record
    if record:
        lines.append(f"  status {record.get('status')}")
        if record.get("error"):
            lines.append(f"  failed in {record.get('failed_stage')}: {record['error']}")
        for timing in record.get("stages") or []:
            lines.append(_timing_line(timing))
    return "\n".join(lines)


def _timing_line(timing: Any) -> str:
    """A stage's line of ``runs logs``; '?' for what a hand-edited run.json made unreadable."""
    timing = timing if isinstance(timing, dict) else {}
    seconds = timing.get("seconds")
    number = isinstance(seconds, int | float) and not isinstance(seconds, bool)
    return f"    {str(timing.get('stage', '?')):<24} " + (
        f"{seconds:8.2f} s" if number else f"{'?':>8} s"
    )


def format_run_list(runs: list[RunState]) -> str:
    if not runs:
        return "no runs"
    lines = [f"{'KFP RUN ID':<36}  {'STATE':<10}  {'CREATED':<25}  NAME"]
    lines += [
        f"{run.kfp_run_id:<36}  {run.state:<10}  {str(run.created or '-'):<25}  {run.name}"
        for run in runs
    ]
    return "\n".join(lines)
