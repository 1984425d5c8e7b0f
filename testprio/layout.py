"""The run folder ``{root}/{run_id}/`` and its ``run.json`` record.

``run.json`` is written first (status ``running``) by the first stage, gains each stage's
parameters as it starts, and is rewritten last with status ``succeeded`` or ``failed`` (and
the error sentence). Each stage, and each scored shard, leaves its start and end times in
``stages/`` so that parallel score tasks never write one file at once.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from testprio import storage
from testprio.errors import TestprioError
from testprio.log import get_logger

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


def start_run(layout: RunLayout, parameters: dict[str, Any]) -> None:
    """Write ``run.json`` with status ``running``.

    A folder whose run is still ``running`` (a retried task, or a cancelled run resubmitted
    with its ``run_id``) is resumed, but only with the same parameters: its shards and model
    would otherwise be mixed with another run's.
    """
    if storage.exists(layout.run_json):
        record = storage.read_json(layout.run_json)
        if record.get("status") != "running":
            raise TestprioError(
                f"run folder {layout.uri} already holds a {record.get('status')} run; "
                "choose another --run-id."
            )
        before = record.get("parameters", {})
        changed = sorted(
            name
            for name in set(before) | set(parameters)
            if name not in RESUMABLE_PARAMETERS and before.get(name) != parameters.get(name)
        )
        if changed:
            raise TestprioError(
                f"run folder {layout.uri} holds an unfinished run started with other "
                f"parameters ({', '.join(changed)}); resume it with the same ones or choose "
                "another --run-id."
            )
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
    storage.write_json(layout.run_json, record)


def record_in_run(layout: RunLayout, key: str, value: Any) -> None:
    """Add ``key: value`` to ``run.json`` (a stage's record of what it did, e.g. the ops).

    Stages that call this run one after another, so no other writer races it.
    """
    if not storage.exists(layout.run_json):
        return  # a stage run on its own, outside a pipeline run (tests, notebooks)
    record = storage.read_json(layout.run_json)
    record[key] = value
    storage.write_json(layout.run_json, record)


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
    storage.write_json(
        _stage_file(layout, stage_name),
        {"stage": stage_name, "start": started, "end": ended, "seconds": ended - started, **extra},
    )
    log.info("stage %s finished in %.2f s", stage_name, ended - started)


def fail_run(layout: RunLayout, stage_name: str, error: str) -> None:
    """Record a failure in ``run.json`` (creating it if the failure came first).

    Best effort: when the run folder itself cannot be written (the failure may be exactly
    that), the original error still reaches the user.
    """
    try:
        try:
            record = storage.read_json(layout.run_json)
        except TestprioError:
            record = {"run_id": layout.run_id, "uri": layout.uri, "parameters": {}, "stages": []}
        record.update(status="failed", ended=_now(), failed_stage=stage_name, error=error)
        storage.write_json(layout.run_json, record)
    except Exception as exc:  # noqa: BLE001 - must not hide the stage's own error
        log.warning("could not mark %s failed: %s", layout.run_json, exc)


def collect_stage_timings(layout: RunLayout) -> list[dict[str, Any]]:
    names = [name for name in storage.list_names(layout.stages_dir) if name.endswith(".json")]
    timings = [storage.read_json(storage.join(layout.stages_dir, name)) for name in names]
    return sorted(timings, key=lambda timing: (timing["start"], timing["stage"]))


def finished_record(layout: RunLayout) -> dict[str, Any]:
    """The ``run.json`` record that ``finish_run`` would write now (nothing is written)."""
    record = storage.read_json(layout.run_json)
    record.update(
        status="succeeded", ended=_now(), stages=collect_stage_timings(layout), error=None
    )
    record.pop("failed_stage", None)  # a task that failed and then succeeded on a retry
    return record


def finish_run(layout: RunLayout) -> dict[str, Any]:
    """Rewrite ``run.json`` last: status ``succeeded`` and every stage's timing."""
    record = finished_record(layout)
    storage.write_json(layout.run_json, record)
    return record
