"""Run the ``prioritize`` pipeline on this machine through KFP's local runner (``testprio
run``, notebooks): every task in this Python environment, or each in its own image
(``--runner docker``, ``testprio.containers``); progress lines, Ctrl-C, failures recorded in
``run.json``."""

from __future__ import annotations

import builtins
import contextlib
import io
import re
import signal
import sys
import threading
import warnings
from collections.abc import Iterator

from testprio import containers, params, scratch, storage
from testprio.errors import TestprioError
from testprio.layout import (
    RunLayout,
    RunLock,
    check_resumable,
    fail_run,
    new_run_id,
    read_record,
)
from testprio.redact import redact_text

# Lines of the KFP local runner's output worth showing without --verbose: our own log lines
# (progress, stage timings) and the runner's task start/finish lines.
_PROGRESS_LINE = re.compile(r"testprio (INFO|WARNING|ERROR)|Executing task|finished with status")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# A stage's start and end (testprio.layout.stage), and a task's own one-sentence error.
_STAGE_STARTED = re.compile(r"testprio INFO stage (\S+) started")
_STAGE_FINISHED = re.compile(r"testprio INFO stage (\S+) finished")
_TASK_STARTED = re.compile(r"Executing task '([^']+)'")
_TASK_FINISHED = re.compile(r"Task '([^']+)' finished with status")
_TASK_ERROR = re.compile(r"testprio\.errors\.TestprioError: (.+)$")


class _ProgressFilter(io.TextIOBase):
    """A stdout stand-in that passes through only progress lines, stripped of indentation
    (every line with ``verbose``), and notes the stage in progress and the last task error."""

    def __init__(self, target, *, verbose: bool = False) -> None:
        self._target = target
        self._verbose = verbose
        self._pending = ""
        # In start order; score tasks run side by side, so several can be in progress.
        self._stages: list[str] = []
        self._tasks: list[str] = []
        self._last: str | None = None
        self.error: str | None = None

    @property
    def stage(self) -> str | None:
        """The latest stage in progress, else the KFP task in progress (before its stage
        starts), else the last stage that ran (stopped between two tasks)."""
        return (self._stages or self._tasks or [self._last])[-1]

    def write(self, text: str) -> int:
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in map(redact_text, lines):  # --verbose shows task arguments: signed URLs
            self._note(_ANSI.sub("", line).strip())
            if self._verbose:
                self._target.write(line + "\n")
                self._target.flush()
            elif _PROGRESS_LINE.search(line):
                self._target.write(_ANSI.sub("", line).strip() + "\n")
                self._target.flush()
        return len(text)

    def _note(self, line: str) -> None:
        if started := _STAGE_STARTED.search(line):
            self._stages.append(started.group(1))
            self._last = started.group(1)
        elif (finished := _STAGE_FINISHED.search(line)) and finished.group(1) in self._stages:
            self._stages.remove(finished.group(1))
        elif task := _TASK_STARTED.search(line):
            self._tasks.append(task.group(1))
            self._last = self._last or task.group(1)
        elif (done := _TASK_FINISHED.search(line)) and done.group(1) in self._tasks:
            self._tasks.remove(done.group(1))
        elif error := _TASK_ERROR.search(line):
            self.error = error.group(1)

    def flush(self) -> None:
        self._target.flush()


@contextlib.contextmanager
def _watched_runner(progress: _ProgressFilter) -> Iterator[None]:
    with contextlib.redirect_stdout(progress), contextlib.redirect_stderr(progress):
        yield


class RunInterrupted(TestprioError):
    """``testprio run`` stopped by SIGINT or SIGTERM; exits with 128 + the signal number."""

    def __init__(self, message: str, *, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


def _stop_processes(processes) -> None:
    """Terminate the given processes (the runner's tasks and their workers), then kill."""
    import psutil

    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    _, alive = psutil.wait_procs(processes, timeout=5)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(alive, timeout=5)


@contextlib.contextmanager
def _stopped_on_signals(state: dict) -> Iterator[None]:
    """Turn SIGINT and SIGTERM into KeyboardInterrupt after stopping the processes started
    inside (the local runner's task and what it started), noting the signal in ``state``.

    The task processes are stopped first: KFP's runner, unwinding, would otherwise wait for
    the task it was reading. Processes that were children before (a test's emulator) stay.
    """
    import psutil

    if threading.current_thread() is not threading.main_thread():
        yield  # signals reach the main thread only (a notebook cell's thread, say)
        return
    me = psutil.Process()
    before = {child.pid for child in me.children(recursive=True)}

    def stop_children() -> None:
        children = me.children(recursive=True)
        _stop_processes([child for child in children if child.pid not in before])

    def on_signal(signum, frame) -> None:
        if "signum" in state:
            return  # a second Ctrl-C while stopping
        state["signum"] = signum
        stop_children()
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    except KeyboardInterrupt:
        state.setdefault("signum", signal.SIGINT)
        stop_children()
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# `testprio run`'s optional parameters and their defaults (testprio.params, the one table).
RUN_DEFAULTS = params.cli_defaults()


def check_run_options(names, runner: str) -> None:
    """One sentence for a name that is no ``testprio run`` parameter, or an unknown runner."""
    unknown = sorted(set(names) - set(RUN_DEFAULTS) - {"model", "data", "root"})
    if unknown:
        raise TestprioError(
            f"unknown run parameter(s) {', '.join(unknown)}; use those of testprio run "
            f"({', '.join(['model', 'data', 'root', *RUN_DEFAULTS])})."
        )
    if runner not in containers.RUNNERS:
        raise TestprioError(f"--runner {runner} is not one of {', '.join(containers.RUNNERS)}.")


def run_pipeline_locally(
    parameters: dict, *, verbose: bool = False, runner: str = "subprocess"
) -> RunLayout:
    """Run ``prioritize`` through KFP's local runner; return the run's layout.

    ``parameters`` needs ``model``, ``data`` and ``root``; the rest default as on the
    command line (``run_id`` to a new timestamped id). ``runner``: ``subprocess`` (every
    task in this Python environment) or ``docker`` (every task in its own image,
    ``testprio.containers``). Raises TestprioError with the run's own error sentence when
    a stage fails.
    """
    from pipelines.prioritize import LOCAL_SETTINGS, build_pipeline
    from testprio.convert import resolve_framework

    check_run_options(parameters, runner)
    parameters = {**RUN_DEFAULTS, **parameters}
    parameters["run_id"] = parameters["run_id"] or new_run_id()
    if runner == "docker":  # a task container sees local inputs at the same absolute paths
        parameters = containers.absolute_inputs(parameters)
    from testprio.stages import FLOAT_PARAMETERS

    for name in FLOAT_PARAMETERS:  # KFP refuses an int (max_data_gb=5) for a float input
        if isinstance(parameters.get(name), int) and not isinstance(parameters[name], bool):
            parameters[name] = float(parameters[name])
    # The convert task is chosen when the pipeline is built (dsl.OneOf does not run in the
    # local runner): detect the framework here from the file's content, without importing
    # it. A model that cannot be detected gets the ONNX pipeline, whose start task then
    # fails the run with the reason.
    try:
        framework = resolve_framework(parameters["model"], parameters["framework"])
    except TestprioError:
        framework = "onnx"
    prioritize = build_pipeline(LOCAL_SETTINGS, framework)  # no retries: fail at once

    layout = RunLayout.create(parameters["root"], parameters["run_id"])
    storage.ensure_root(parameters["root"])
    with RunLock(layout):  # refuses a run that another live process runs
        record = read_record(layout)
        if record.get("parameters"):
            check_resumable(layout, record, {**parameters, "job_name": ""})
            print(f"resuming run {layout.run_id} ({record.get('status')})", file=sys.stderr)
        _run_in_kfp(layout, prioritize, parameters, verbose=verbose, runner=runner)
    return layout


def _local_runner(runner: str, parameters: dict, layout: RunLayout, prioritize):
    """A context manager yielding the KFP runner of ``runner``."""
    from kfp import local

    if runner == "docker":
        return containers.task_containers(parameters, layout.uri, prioritize)
    return contextlib.nullcontext((local.SubprocessRunner(use_venv=False), None))


def _run_in_kfp(
    layout: RunLayout, prioritize, parameters: dict, *, verbose: bool, runner: str
) -> None:
    """Run the pipeline; record in ``run.json`` what stops it before or outside its tasks."""
    from kfp import local

    from testprio.stages import validate_parameters

    progress = _ProgressFilter(sys.stderr, verbose=verbose)
    state: dict = {}
    with scratch.folder("kfp") as pipeline_root:
        original_print = builtins.print
        try:
            # A notebook's parameters are checked by no command line: a bad one (inf, say)
            # would otherwise break KFP's serialisation before any task runs.
            validate_parameters(parameters)
            # The engine (a podman service) starts before the signal handling: on Ctrl-C
            # it must outlive the task processes it stops, to remove the task's container.
            with (
                _local_runner(runner, parameters, layout, prioritize) as (kfp_runner, _),
                _stopped_on_signals(state),
                _watched_runner(progress),
            ):
                local.init(runner=kfp_runner, pipeline_root=pipeline_root, raise_on_error=True)
                with warnings.catch_warnings():
                    # Resource, GPU and image settings are for the cluster; locally no-ops.
                    warnings.filterwarnings(
                        "ignore", message=".*have no effect in the current local"
                    )
                    warnings.filterwarnings("ignore", message=".*custom or non-Python base image")
                    prioritize(**parameters)
        except KeyboardInterrupt:
            name = signal.Signals(state["signum"]).name
            where = f" during {progress.stage}" if progress.stage else ""
            status = _fail_unless_done(
                layout,
                progress.stage,
                f"the run was interrupted by {name}{where}; run the same command again to "
                "resume it.",
                reason="interrupted",
            )
            raise RunInterrupted(
                _interrupted_sentence(layout, name, where, status), signum=state["signum"]
            ) from None
        except RuntimeError:
            record = read_record(layout)
            error = (
                progress.error
                or (record.get("status") == "failed" and record.get("error"))
                or "the pipeline failed before it started the run; rerun with --verbose to "
                "see the task logs."
            )
            _fail_unless_done(layout, progress.stage or "start", error)
            raise TestprioError(error) from None
        except TestprioError as exc:
            _fail_unless_done(layout, progress.stage or "start", str(exc))
            raise
        except Exception as exc:
            _fail_unless_done(
                layout, progress.stage or "start", f"the run stopped unexpectedly: {exc!r}."
            )
            raise
        finally:
            # KFP's local runner swaps in an indenting print and can leave it behind.
            builtins.print = original_print


def _fail_unless_done(layout: RunLayout, stage_name: str | None, error: str, **how) -> str:
    """Mark the run failed unless its own tasks already ended it (succeeded or failed).

    Returns ``"marked"`` when this marked it, else the status its tasks left.
    """
    record = read_record(layout)
    if record.get("status") in (None, "running"):
        fail_run(layout, stage_name, error, **how)
        return "marked"
    return str(record["status"])


def _interrupted_sentence(layout: RunLayout, name: str, where: str, status: str) -> str:
    """What a stopped ``testprio run`` says: the run is marked interrupted, unless its last
    task had already ended it (the signal came while the runner was finishing)."""
    if status == "succeeded":
        return (
            f"interrupted by {name} after run {layout.uri} had finished: it succeeded, and "
            "its results are complete."
        )
    if status == "failed":
        return (
            f"interrupted by {name} after run {layout.uri} had failed: `testprio runs` "
            "shows why; run the same command again to resume it."
        )
    return (
        f"interrupted by {name}{where}: run {layout.uri} is marked failed "
        "(interrupted); run the same command again to resume it."
    )
