"""The run folder ``{root}/{run_id}/`` and its ``run.json`` record.

``run.json`` is written first (status ``running``) by the first stage, gains each stage's
parameters as it starts, and is rewritten last with status ``succeeded`` or ``failed`` (and
the error sentence). Each stage, and each scored shard, leaves its start and end times in
``stages/`` so that parallel score tasks never write one file at once.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from testprio import storage
from testprio.containers import image_record
from testprio.errors import TestprioError
from testprio.log import get_logger
from testprio.redact import redact_value

log = get_logger("layout")

RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
SHARD_NAME_PATTERN = re.compile(r"^shard-\d{5,}\.parquet$")


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.parquet"


@dataclass(frozen=True)
class RunLayout:
    """Where each file of one run lives; ``uri`` is ``{root}/{run_id}``."""

    uri: str

    @classmethod
    def create(cls, root: str, run_id: str) -> RunLayout:
        check_run_id(run_id)
        return cls(storage.join(storage.normalize_root(root), run_id))

    @classmethod
    def of_data_shard(cls, shard_uri: str) -> RunLayout:
        """The run that a ``{run}/data/shard-NNNNN.parquet`` URI belongs to."""
        folder, _, name = shard_uri.rstrip("/").rpartition("/")
        run_uri, _, data = folder.rpartition("/")
        if data != "data" or not SHARD_NAME_PATTERN.match(name):
            raise TestprioError(
                f"{shard_uri} is not a sample shard of a run ({{run}}/data/shard-NNNNN.parquet)."
            )
        return cls(run_uri)

    @property
    def run_id(self) -> str:
        return self.uri.rstrip("/").rsplit("/", 1)[-1]

    @property
    def run_json(self) -> str:
        return storage.join(self.uri, "run.json")

    @property
    def owner(self) -> str:
        """The lock of the process running this run locally, with its heartbeat."""
        return storage.join(self.uri, "owner.json")

    @property
    def model_dir(self) -> str:
        return storage.join(self.uri, "model")

    @property
    def model_onnx(self) -> str:
        return storage.join(self.model_dir, "model.onnx")

    @property
    def model_json(self) -> str:
        return storage.join(self.model_dir, "model.json")

    @property
    def data_dir(self) -> str:
        return storage.join(self.uri, "data")

    @property
    def data_manifest(self) -> str:
        return storage.join(self.data_dir, "manifest.json")

    @property
    def quarantine(self) -> str:
        return storage.join(self.data_dir, "quarantine.parquet")

    @property
    def duplicates(self) -> str:
        return storage.join(self.data_dir, "duplicates.parquet")

    @property
    def scores_dir(self) -> str:
        return storage.join(self.uri, "scores")

    @property
    def stages_dir(self) -> str:
        return storage.join(self.uri, "stages")

    @property
    def ranking(self) -> str:
        return storage.join(self.uri, "ranking.parquet")

    @property
    def summary(self) -> str:
        return storage.join(self.uri, "summary.json")

    @property
    def report_dir(self) -> str:
        return storage.join(self.uri, "report")

    @property
    def report_html(self) -> str:
        return storage.join(self.report_dir, "report.html")

    @property
    def report_json(self) -> str:
        return storage.join(self.report_dir, "report.json")

    @property
    def report_markdown(self) -> str:
        return storage.join(self.report_dir, "report.md")

    @property
    def export_zip(self) -> str:
        return storage.join(self.report_dir, "export.zip")

    def data_shard(self, index: int) -> str:
        return storage.join(self.data_dir, shard_name(index))

    def scores_shard(self, index: int) -> str:
        return storage.join(self.scores_dir, shard_name(index))


def check_run_id(run_id: str) -> str:
    if not RUN_ID_PATTERN.match(run_id):
        raise TestprioError(
            f"run id '{run_id}' is not allowed; use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit."
        )
    return run_id


def new_run_id() -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{time.time_ns() % 0xFFFF:04x}"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


# Parameters that may differ when an unfinished run is resumed: they name the KFP job, not
# what the run computes.
RESUMABLE_PARAMETERS = frozenset({"job_name"})


# The fields of run.json that readers (resumption, the runs table) rely on, and the JSON
# type each must have where present.
_RECORD_FIELDS = {
    "status": (str, "text"),
    "parameters": (dict, "a JSON object"),
    "stages": (list, "a list"),
    "resumed": (list, "a list"),
}


def record_problem(record: Any) -> str | None:
    """What makes ``record`` (a parsed ``run.json``) no record testprio wrote, or None."""
    if not isinstance(record, dict):
        return "it holds no JSON object"
    for name, (kind, text) in _RECORD_FIELDS.items():
        value = record.get(name)
        if value is not None and not isinstance(value, kind):
            return f"its field '{name}' is not {text}"
    return None


def read_record(layout: RunLayout) -> dict[str, Any]:
    """The run's ``run.json`` record; ``{}`` when there is none yet."""
    if not storage.exists(layout.run_json):
        return {}
    try:
        record = storage.read_json(layout.run_json)
    except ValueError as exc:
        problem = str(exc)
    else:
        problem = record_problem(record)
    if problem is not None:
        raise TestprioError(
            f"{layout.run_json} is not a readable run record ({problem}); move the run folder "
            "aside or choose another --run-id."
        )
    return record


def _write_record(layout: RunLayout, record: dict[str, Any]) -> None:
    """Write ``run.json``: every URL in it without its secrets (``testprio.redact``), as
    whoever can read the run reads it."""
    storage.write_json(layout.run_json, redact_value(record))


def changed_parameters(record: dict[str, Any], parameters: dict[str, Any]) -> list[str]:
    """Names of ``parameters`` that differ from those ``record`` was started with (compared
    as run.json records them: URLs redacted)."""
    before = record.get("parameters") or {}
    parameters = redact_value(parameters)
    return sorted(
        name
        for name in set(before) | set(parameters)
        if name not in RESUMABLE_PARAMETERS and before.get(name) != parameters.get(name)
    )


def check_resumable(layout: RunLayout, record: dict[str, Any], parameters: dict[str, Any]):
    """Raise unless the run in ``record`` may be resumed with ``parameters``.

    A succeeded run is never started again; an unfinished one (running, failed, interrupted)
    only with the same parameters: its shards and model would otherwise be mixed with
    another run's.
    """
    if record.get("status") == "succeeded":
        raise TestprioError(
            f"run folder {layout.uri} already holds a succeeded run; choose another --run-id."
        )
    changed = changed_parameters(record, parameters)
    if changed:
        raise TestprioError(
            f"run folder {layout.uri} holds an unfinished run started with other "
            f"parameters ({', '.join(changed)}); resume it with the same ones or choose "
            "another --run-id."
        )


def start_run(layout: RunLayout, parameters: dict[str, Any]) -> None:
    """Write ``run.json`` with status ``running``.

    A folder whose run is unfinished (a retried task, a failed or interrupted run started
    again with its ``run_id``) is resumed when the parameters are the same: ``run.json``
    keeps its start time and gains the time of the resumption, and each stage skips what
    it finds complete. A record without parameters (a run interrupted before its first
    task) is started afresh.
    """
    record = read_record(layout)
    if record:
        if record.get("parameters"):
            check_resumable(layout, record, parameters)
            if record.get("status") != "running":
                for key in ("failed_stage", "reason"):
                    record.pop(key, None)
                record.update(status="running", ended=None, error=None)
                record["resumed"] = [*record.get("resumed", []), _now()]
                _write_record(layout, record)
            return
    record = {
        "run_id": layout.run_id,
        "uri": layout.uri,
        "status": "running",
        "started": _now(),
        "ended": None,
        "parameters": dict(parameters),
        "stages": [],
        "error": None,
    }
    _write_record(layout, record)


def record_in_run(layout: RunLayout, key: str, value: Any) -> None:
    """Add ``key: value`` to ``run.json`` (a stage's record of what it did, e.g. the ops).

    Stages that call this run one after another, so no other writer races it.
    """
    if not storage.exists(layout.run_json):
        return  # a stage run on its own, outside a pipeline run (tests, notebooks)
    record = storage.read_json(layout.run_json)
    record[key] = value
    _write_record(layout, record)


def _stage_file(layout: RunLayout, stage_name: str) -> str:
    return storage.join(layout.stages_dir, f"{stage_name}.json")


@contextlib.contextmanager
def stage(layout: RunLayout, stage_name: str) -> Iterator[dict[str, Any]]:
    """Time one stage (or one shard of one); on error mark the run failed with the sentence.

    The yielded dict is stored with the timing, for figures such as rows processed.
    """
    started = time.time()
    extra: dict[str, Any] = {}
    log.info("stage %s started", stage_name)
    try:
        yield extra
    except TestprioError as exc:
        fail_run(layout, stage_name, str(exc))
        raise
    except Exception as exc:
        fail_run(layout, stage_name, f"{stage_name} failed unexpectedly: {exc!r}.")
        raise
    ended = time.time()
    storage.write_json(  # merged into run.json at the end: redacted as run.json is
        _stage_file(layout, stage_name),
        redact_value(
            {
                "stage": stage_name,
                "start": started,
                "end": ended,
                "seconds": ended - started,
                "peak_rss_mb": peak_rss_mb(),
                **image_record(),  # the image it ran in, under --runner docker or in a cluster
                **extra,
            }
        ),
    )
    log.info("stage %s finished in %.2f s", stage_name, ended - started)


def peak_rss_mb() -> float:
    """The peak resident memory, in MiB, of this process or of the largest child process it
    waited for (a framework worker, a custom-op sandbox): what a task needs of its node.
    Each KFP task is its own process, so for a pipeline stage this is the stage's own peak."""
    import resource

    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, else KiB
    peak = max(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
    )
    return round(peak * scale / 2**20, 1)


def fail_run(
    layout: RunLayout, stage_name: str | None, error: str, *, reason: str = "error"
) -> None:
    """Record a failure in ``run.json`` (creating it if the failure came first).

    ``reason``: ``error`` (a stage raised) or ``interrupted`` (the run was stopped).

    Best effort: when the run folder itself cannot be written (the failure may be exactly
    that), the original error still reaches the user.
    """
    try:
        try:
            record = storage.read_json(layout.run_json)
        except TestprioError:
            record = {"run_id": layout.run_id, "uri": layout.uri, "parameters": {}, "stages": []}
        record.update(
            status="failed", ended=_now(), failed_stage=stage_name, error=error, reason=reason
        )
        _write_record(layout, record)
    except Exception as exc:  # noqa: BLE001 - must not hide the stage's own error
        log.warning("could not mark %s failed: %s", layout.run_json, exc)


def collect_stage_timings(layout: RunLayout) -> list[dict[str, Any]]:
    names = [name for name in storage.list_names(layout.stages_dir) if name.endswith(".json")]
    timings = [storage.read_json(storage.join(layout.stages_dir, name)) for name in names]
    return sorted(timings, key=_timing_order)


def _timing_order(timing: Any) -> tuple[float, str]:
    """Stage timings by start, then name; a timing changed by hand sorts first, not fails."""
    if not isinstance(timing, dict):
        return (float("-inf"), "")
    start = timing.get("start")
    ok = isinstance(start, int | float) and not isinstance(start, bool) and math.isfinite(start)
    return (float(start) if ok else float("-inf"), str(timing.get("stage", "")))


def finished_record(layout: RunLayout) -> dict[str, Any]:
    """The ``run.json`` record that ``finish_run`` would write now (nothing is written)."""
    record = storage.read_json(layout.run_json)
    record.update(
        status="succeeded", ended=_now(), stages=collect_stage_timings(layout), error=None
    )
    for key in ("failed_stage", "reason"):  # a task that failed and then succeeded on a retry
        record.pop(key, None)
    return record


def finish_run(layout: RunLayout) -> dict[str, Any]:
    """Rewrite ``run.json`` last: status ``succeeded`` and every stage's timing."""
    record = finished_record(layout)
    _write_record(layout, record)
    return record


# --- Who runs a run: the owner lock and its heartbeat -------------------------------------
#
# ``testprio run`` (the KFP local runner) takes ``owner.json`` in the run folder before it
# starts: created only if absent (an exclusive create locally, a generation precondition on
# GCS), so two processes never run one run at once. It holds the owner's host, pid and
# start time, and a heartbeat that a background thread refreshes while the run is alive.
# Readers use it to tell a run that is running from one whose process died (SIGKILL, a
# crash, a closed laptop lid on another host's view): see ``effective_status``.

HEARTBEAT_SECONDS = 10.0
# A heartbeat this old means the owner is gone (several missed beats, not one slow write).
STALE_AFTER_SECONDS = 60.0
UNFINISHED = "unfinished"


def _parse_time(text: Any) -> datetime | None:
    """An ISO time with its zone (as ``_now`` writes it); None for anything else."""
    if not isinstance(text, str):
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


# The largest pid os.kill takes (pid_t): a larger number raises OverflowError there.
MAX_PID = 2**31 - 1


def owner_problem(owner: Any) -> str | None:
    """What makes ``owner`` (a parsed ``owner.json``) no lock a testprio process wrote, or
    None when it is one. A lock with a problem is stale: no live owner can be behind it."""
    if not isinstance(owner, dict):
        return "it holds no JSON object"
    pid = owner.get("pid")
    if isinstance(pid, bool) or not isinstance(pid, int) or not 0 < pid <= MAX_PID:
        return f"its pid is not a whole number from 1 to {MAX_PID:,}"
    if not isinstance(owner.get("host"), str):
        return "its host is not text"
    started = owner.get("pid_started")
    if started is not None and (
        isinstance(started, bool)
        or not isinstance(started, int | float)
        or not math.isfinite(started)
    ):
        return "its pid_started is not a number of seconds"
    if owner.get("host") != socket.gethostname() and _parse_time(owner.get("heartbeat")) is None:
        return "its heartbeat is not a time with its zone"
    return None


def _process_started(pid: int) -> float | None:
    """The start time of process ``pid`` (seconds since the epoch), where psutil can say."""
    try:
        import psutil
    except ImportError:
        return None
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


def owner_alive(owner: Any, now: datetime | None = None) -> bool:
    """Whether the process that holds ``owner`` (an ``owner.json`` record) still runs.

    On the owner's own host the process table decides (a suspended laptop keeps its runs;
    a reused pid is told apart by its start time); elsewhere the heartbeat's age does.
    """
    if owner_problem(owner) is not None:
        return False
    if owner["host"] == socket.gethostname():
        pid = owner["pid"]
        if not _pid_alive(pid):
            return False
        started, recorded = _process_started(pid), owner.get("pid_started")
        return started is None or recorded is None or abs(started - float(recorded)) < 1.0
    heartbeat = _parse_time(owner.get("heartbeat"))
    now = now or datetime.now(timezone.utc)
    return heartbeat is not None and (now - heartbeat).total_seconds() <= STALE_AFTER_SECONDS


def effective_status(record: dict[str, Any], now: datetime | None = None, *, owner: Any) -> str:
    """The status to show for ``record`` (a ``run.json``), given its ``owner.json`` or None.

    ``running`` whose owner process is gone becomes ``unfinished`` (interrupted: resume it
    with the same command). A run with no owner record (one a cluster runs) keeps its
    status: its tasks report their own failures.
    """
    status = str(record.get("status", "unknown"))
    if status != "running" or owner is None or owner_alive(owner, now):
        return status
    return UNFINISHED


def _parse_owner(data: bytes) -> Any:
    """The JSON value of an ``owner.json``'s bytes; ``{}`` (a lock no process holds) for
    bytes that are no JSON: the lock is written in one step, so it is never seen half
    written."""
    try:
        return storage.parse_json(data)
    except ValueError:
        return {}


def read_owner(layout: RunLayout) -> Any:
    """The run's ``owner.json`` record, or None when there is none. Anything else in the
    file comes back as it is (``owner_problem`` says what is wrong with it)."""
    found = storage.read_versioned(layout.owner)
    return None if found is None else _parse_owner(found[0])


def run_status(layout: RunLayout, record: dict[str, Any], now: datetime | None = None) -> str:
    """``effective_status`` of the run at ``layout``; reads ``owner.json`` only if needed."""
    if record.get("status") != "running":
        return str(record.get("status", "unknown"))
    return effective_status(record, now, owner=read_owner(layout))


class RunLock:
    """The owner lock of one run; ``with RunLock(layout):`` holds it and beats the heartbeat.

    Taking it refuses a run that a live process holds, and takes over the lock of a dead
    one. Releasing it (on success, failure or interruption) deletes ``owner.json`` unless
    another process took it over meanwhile.
    """

    def __init__(self, layout: RunLayout, *, interval: float = HEARTBEAT_SECONDS) -> None:
        self.layout = layout
        self.interval = interval
        pid = os.getpid()
        self._owner = {
            "host": socket.gethostname(),
            "pid": pid,
            "pid_started": _process_started(pid),
            "started": _now(),
            "token": uuid.uuid4().hex,
            "heartbeat": _now(),
        }
        self._version: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.took_over: dict[str, Any] | None = None

    def _data(self) -> bytes:
        return json.dumps(self._owner, indent=2).encode() + b"\n"

    def acquire(self) -> None:
        storage.ensure_root(self.layout.uri)
        for _ in range(3):  # a lock released or replaced between two looks: look again
            self._owner["heartbeat"] = _now()
            self._version = storage.create_exclusive(self.layout.owner, self._data())
            if self._version is not None:
                break
            found = storage.read_versioned(self.layout.owner)
            if found is None:
                continue
            holder = _parse_owner(found[0])
            problem = owner_problem(holder)
            if problem is not None:
                log.warning(
                    "the lock %s is not one testprio writes (%s); it is taken over as stale.",
                    self.layout.owner,
                    problem,
                )
            elif owner_alive(holder):
                raise TestprioError(
                    f"run {self.layout.uri} is being run by process {holder.get('pid')} on "
                    f"{holder.get('host')} (since {holder.get('started')}); wait for it to "
                    "finish or choose another --run-id."
                )
            self._version = storage.replace_versioned(self.layout.owner, self._data(), found[1])
            if self._version is not None:
                self.took_over = holder if isinstance(holder, dict) else {}
                log.info("took over the lock of %s from a process that is gone", self.layout.uri)
                break
        else:
            raise TestprioError(
                f"run {self.layout.uri} is being started by another process; wait for it or "
                "choose another --run-id."
            )
        self._thread = threading.Thread(target=self._beat, name="testprio-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            self._owner["heartbeat"] = _now()
            try:
                version = storage.replace_versioned(
                    self.layout.owner, self._data(), self._version, holder=True
                )
            except TestprioError as exc:  # storage unreachable for a moment: beat again later
                log.warning("heartbeat of %s not written: %s", self.layout.uri, exc)
                continue
            if version is None:
                log.warning("the lock of %s was taken by another process", self.layout.uri)
                return
            self._version = version

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._version is not None:
            with contextlib.suppress(TestprioError):
                storage.delete_versioned(self.layout.owner, self._version)
            self._version = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()
