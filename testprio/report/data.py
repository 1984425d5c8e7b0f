"""Data shaping for the report: runs under a root, one run's figures, pages of the ranking,
sample images, fault-detection curves and the comparison of two runs.

The Streamlit app (``report_app/``) and the report stage (``testprio.report``) only lay out
what these functions return. Each reads what its view needs and no more: JSON records for
figures, single row groups of ``ranking.parquet`` (65,536 rows each) for a page of the
ranking, one row group of one shard per sample image. Nothing here loads every probability
of a run at once.

Everything that comes from a URL parameter goes through ``resolve_run``, which accepts a
plain run id under the root and nothing else (no ``..``, no absolute path, no scheme).
"""

from __future__ import annotations

import base64
import csv
import io
import math
import os
import posixpath
import re
import string
import zipfile
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from testprio import storage
from testprio.errors import TestprioError
from testprio.evaluation_file import EVALUATION_NAME, evaluation_frames, evaluation_uri
from testprio.ingest.shards import shard_sample_shape, shard_tensors
from testprio.layout import RUN_ID_PATTERN, SHARD_NAME_PATTERN, RunLayout, run_status
from testprio.metrics import METRICS

RUN_COLUMNS = ("run_id", "kind", "model", "dataset", "metric", "status", "started", "duration")
RANKING_VIEW_COLUMNS = ("rank", "sample_id", "predicted", "confidence", "label")
FAULT_CURVE_POINTS = 200
GALLERY_MIN_SIDE = 96
GALLERY_MAX_SIDE = 384
STATS_ROWS_WITHOUT_REPORT = 20_000
TIMELINE_MAX_SHARDS = 50  # above this many scored shards the timeline draws one score bar
THUMBNAIL_ROWS = 100  # ranking rows per page that get a thumbnail
THUMBNAIL_SIDE = 48
SCORE_METRICS = tuple(METRICS)  # every metric a sample gets a rank under
# Keys a data manifest may carry for a digest of the pool's content, most specific first.
POOL_HASH_KEYS = ("content_sha256", "sha256", "content_hash")
# Run kinds: ``testprio run`` ranks a pool; ``testprio evaluate`` compares prioritizers and
# records ``"kind": "evaluation"`` in run.json's parameters.
RANKING_KIND = "ranking"
EVALUATION_KIND = "evaluation"


# --- paths under the root ---------------------------------------------------------------


def resolve_under_root(root: str, relative: str) -> str:
    """``root/relative`` for a relative path that stays under ``root``; refuses the rest.

    Refused: absolute paths, ``..`` or ``.`` components, backslashes, URI schemes, empty
    parts. Local paths are also checked after resolving symbolic links.
    """
    root = storage.normalize_root(root)
    text = str(relative)
    parts = text.split("/")
    if (
        not text
        or text.startswith("/")
        or "\\" in text
        or "://" in text
        or ":" in parts[0]
        or "\x00" in text
        or any(part in ("", ".", "..") for part in parts)
    ):
        raise TestprioError(f"'{text}' is not a path under the report's root {root}.")
    target = storage.join(root, *parts)
    if not root.startswith(storage.GCS_SCHEME):
        real_root = os.path.realpath(root)
        real_target = os.path.realpath(target)
        if os.path.commonpath([real_root, real_target]) != real_root:
            raise TestprioError(f"'{text}' leads outside the report's root {root}.")
    return target


def resolve_run(root: str, run_id: str) -> RunLayout:
    """The run ``run_id`` under ``root``: a single folder name, as ``--run-id`` allows."""
    if not isinstance(run_id, str) or not RUN_ID_PATTERN.match(run_id):
        raise TestprioError(f"'{run_id}' is not a run id; pick a run from the list.")
    return RunLayout(resolve_under_root(root, run_id))


def run_file(layout: RunLayout, uri: str) -> str:
    """``uri``, a file of the run at ``layout``, if its real path stays under the runs root.

    Every file the report reads or serves goes through here (or ``shard_file``), so that a
    symbolic link or a crafted name inside a run folder cannot reach a file elsewhere.
    """
    base = layout.uri.rstrip("/")
    root, _, run_id = base.rpartition("/")
    if not uri.startswith(base + "/"):
        raise TestprioError(f"'{uri}' is not a file of run {run_id}.")
    return resolve_under_root(root, f"{run_id}/{uri[len(base) + 1 :]}")


def shard_file(layout: RunLayout, folder: str, name: Any) -> str:
    """Shard ``name`` (as ``data/manifest.json`` lists it) in the run's ``data/`` or ``scores/``."""
    if not isinstance(name, str) or not SHARD_NAME_PATTERN.match(name):
        raise TestprioError(
            f"data/manifest.json of run {layout.run_id} lists the shard '{name}', which is not "
            "a shard-NNNNN.parquet file name; the run folder was changed after ingest wrote it."
        )
    return run_file(layout, storage.join(layout.uri, folder, name))


# --- the runs under a root --------------------------------------------------------------


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def _basename(uri: str | None) -> str:
    return posixpath.basename(str(uri or "").rstrip("/"))


def run_row(record: dict) -> dict:
    """One line of the runs table from a ``run.json`` record."""
    parameters = record.get("parameters") or {}
    started, ended = _parse_time(record.get("started")), _parse_time(record.get("ended"))
    duration = (ended - started).total_seconds() if started and ended else None
    return {
        "run_id": str(record.get("run_id", "")),
        "kind": run_kind(record),
        "model": _basename(parameters.get("model")),
        "dataset": _basename(parameters.get("data")),
        "metric": str(parameters.get("metric", "")),
        "status": str(record.get("status", "unknown")),
        "started": started.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        if started
        else "",
        "duration": format_seconds(duration),
        "duration_s": duration,
        "error": record.get("error") or "",
        "failed_stage": record.get("failed_stage") or "",
    }


def run_kind(record: dict) -> str:
    """``evaluation`` for a ``testprio evaluate`` run (its parameters say so), else ``ranking``."""
    parameters = record.get("parameters") or {}
    kind = parameters.get("kind") if isinstance(parameters, dict) else None
    return EVALUATION_KIND if kind == EVALUATION_KIND else RANKING_KIND


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(seconds, 60)
    if minutes < 60:
        return f"{int(minutes)} min {rest:.0f} s"
    hours, minutes = divmod(minutes, 60)
    return f"{int(hours)} h {int(minutes)} min"


def _read_json_or_none(uri: str | None) -> Any:
    if uri is None:
        return None
    try:
        return storage.read_json(uri)
    except (TestprioError, ValueError):
        return None


def _layout(root: str, name: str) -> RunLayout:
    return RunLayout(storage.join(root, name))


def list_runs(root: str) -> list[dict]:
    """Every run under ``root`` (folders holding a ``run.json``), newest first."""
    root = storage.normalize_root(root)
    names = [name for name in storage.list_folders(root) if RUN_ID_PATTERN.match(name)]
    uris, refused = [], {}
    for name in names:
        try:
            uris.append(resolve_under_root(root, f"{name}/run.json"))
        except TestprioError as exc:  # a run folder or run.json that links out of the root
            uris.append(None)
            refused[name] = str(exc)
    with ThreadPoolExecutor(max_workers=8) as pool:  # one request per run on GCS
        records = list(pool.map(_read_json_or_none, uris))
        found = [
            (name, record)
            for name, record in zip(names, records, strict=True)
            if isinstance(record, dict)
        ]
        figures = list(pool.map(lambda item: _run_figures(root, *item), found))
    rows = [
        # A "running" run whose local owner process is gone shows as "unfinished".
        {
            **run_row(record),
            **figure,
            "run_id": name,
            "status": run_status(_layout(root, name), record),
        }
        for (name, record), figure in zip(found, figures, strict=True)
    ] + [
        {**run_row({}), **_NO_FIGURES, "run_id": name, "status": "refused", "error": error}
        for name, error in refused.items()
    ]
    return sorted(rows, key=lambda row: (row["started"], row["run_id"]), reverse=True)


RUN_FIGURE_COLUMNS = ("samples", "accuracy", "apfd", "baseline_accuracy", "best_prioritizer")
_NO_FIGURES = dict.fromkeys(RUN_FIGURE_COLUMNS)
# Figures of finished runs by (run folder, end time): a finished run never changes, so a
# root with hundreds of runs reads each summary.json once per process, not once per look.
_FIGURES_OF_FINISHED: dict[tuple[str, str], dict] = {}
_FIGURES_CACHE_SIZE = 10_000


def figures_of_summary(summary: dict | None) -> dict:
    """Samples ranked, accuracy and raw APFD of a ``summary.json`` (None where unknown)."""
    if not isinstance(summary, dict):
        return dict(_NO_FIGURES)
    labels = summary.get("labels") or {}
    apfd = labels.get("apfd") or {}
    return {
        **_NO_FIGURES,
        "samples": (summary.get("counts") or {}).get("ranked"),
        "accuracy": None if labels.get("accuracy") is None else round(labels["accuracy"], 4),
        "apfd": None if apfd.get("raw") is None else round(apfd["raw"], 4),
    }


def _run_figures(root: str, name: str, record: dict) -> dict:
    if record.get("status") not in ("succeeded", "running", "failed"):
        return dict(_NO_FIGURES)
    file_name, figures_of = FIGURES_BY_KIND[run_kind(record)]
    try:
        uri = resolve_under_root(root, f"{name}/{file_name}")
    except TestprioError:  # linked out of the root: the run's row says so elsewhere
        return dict(_NO_FIGURES)
    key = (uri, str(record.get("ended") or ""))
    if record.get("status") == "succeeded" and key in _FIGURES_OF_FINISHED:
        return _FIGURES_OF_FINISHED[key]
    figures = figures_of(_read_json_or_none(uri))
    if record.get("status") == "succeeded":
        if len(_FIGURES_OF_FINISHED) >= _FIGURES_CACHE_SIZE:
            _FIGURES_OF_FINISHED.clear()
        _FIGURES_OF_FINISHED[key] = figures
    return figures


def filter_runs(rows: list[dict], query: str) -> list[dict]:
    """Rows where any shown field contains ``query`` (case-insensitive); all for an empty one."""
    needle = query.strip().lower()
    if not needle:
        return list(rows)
    fields = (*RUN_COLUMNS, "best_prioritizer", "error")
    return [row for row in rows if any(needle in str(row.get(f, "")).lower() for f in fields)]


# --- one run ----------------------------------------------------------------------------


@dataclass
class RunDetails:
    """The JSON records of one run; any but ``record`` may be missing (None)."""

    layout: RunLayout
    record: dict
    model: dict | None = None
    manifest: dict | None = None
    summary: dict | None = None
    report: dict | None = None
    _num_rows: int | None = field(default=None, repr=False)

    @property
    def run_id(self) -> str:
        return self.layout.run_id

    @property
    def parameters(self) -> dict:
        return self.record.get("parameters") or {}

    @property
    def metric(self) -> str:
        if self.summary:
            return self.summary["metric"]
        return str(self.parameters.get("metric", "gini"))

    @property
    def has_ranking(self) -> bool:
        return self.summary is not None

    @property
    def has_labels(self) -> bool:
        return bool(self.summary and self.summary.get("labels"))

    @property
    def num_rows(self) -> int:
        if self._num_rows is None:
            with storage.open_parquet(run_file(self.layout, self.layout.ranking)) as parquet:
                self._num_rows = parquet.metadata.num_rows
        return self._num_rows


def load_run(layout: RunLayout) -> RunDetails:
    """Read a run's records; a folder without ``run.json`` is not a run."""
    record = _read_json_or_none(run_file(layout, layout.run_json))
    if not isinstance(record, dict):
        raise TestprioError(f"{layout.uri} holds no readable run.json; it is not a run.")
    uris = [layout.model_json, layout.data_manifest, layout.summary, layout.report_json]
    uris = [run_file(layout, uri) for uri in uris]  # refused before anything is read
    with ThreadPoolExecutor(max_workers=4) as pool:
        model, manifest, summary, report = pool.map(_read_json_or_none, uris)
    for shard in (manifest or {}).get("shards") or []:
        shard_file(layout, "data", shard.get("name") if isinstance(shard, dict) else shard)
    details = RunDetails(layout, record, model, manifest, summary, report)
    if summary is not None:
        details._num_rows = summary["counts"]["ranked"]
    return details


def class_names(details: RunDetails) -> list[str] | None:
    """Class names stored with the run (model.json, summary.json or the data manifest's
    ``class_names``: an image folder's class subfolders), if any."""
    for source in (details.model, details.summary, details.manifest):
        names = (source or {}).get("class_names")
        if isinstance(names, list) and names:
            return [str(name) for name in names]
    return None


def class_label(index: int | None, names: list[str] | None) -> str:
    """``"3"``, or ``"3 cat"`` when the run names its classes."""
    if index is None:
        return ""
    index = int(index)
    if names and 0 <= index < len(names) and names[index] not in ("", str(index)):
        return f"{index} {names[index]}"
    return str(index)  # also for class folders named by their number


# CommonMark lets a backslash escape any ASCII punctuation character, and an escaped one is
# always literal text. Escaping all of them (not a hand-picked few) covers links, HTML,
# emphasis, Streamlit's :color[...] and $math$. GFM autolinks are not stopped by escapes:
# remark-gfm finds http://, www. and e-mail addresses in the parsed text, so an invisible
# WORD JOINER (U+2060) goes where those patterns need two characters to touch.
_MARKDOWN_PUNCTUATION = frozenset(string.punctuation)
_AUTOLINK_JOINTS = re.compile(r"(?i)(?<=www)(?=\.)|(?=@)|(?<=[a-z])(?=:)")
WORD_JOINER = "\u2060"


def md_escape(text: Any) -> str:
    """``text`` shown literally by any CommonMark/GFM renderer (Streamlit's Markdown):
    every ASCII punctuation character backslash-escaped, line breaks as spaces, and
    invisible word joiners where a URL or e-mail address would become a link."""
    flat = _AUTOLINK_JOINTS.sub(WORD_JOINER, " ".join(str(text).splitlines()))
    return "".join("\\" + char if char in _MARKDOWN_PUNCTUATION else char for char in flat)


def format_bytes(size: float | None) -> str:
    if size is None:
        return ""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dict):
        return ", ".join(f"{key}: {_as_text(item)}" for key, item in value.items())
    if isinstance(value, list):
        return ", ".join(_as_text(item) for item in value)
    return "" if value is None else str(value)


def _checks(model: dict) -> list[dict]:
    """Parity and model checks, in whatever shape model.json holds them, as rows."""
    rows = []
    for key in ("parity", "checks", "model_checks"):
        value = model.get(key)
        if value is None:
            continue
        if isinstance(value, dict):
            items = value.items()
        elif isinstance(value, list):
            items = [
                (item.get("name", f"{key} {i + 1}") if isinstance(item, dict) else f"{key} {i + 1}")
                for i, item in enumerate(value)
            ]
            items = zip(items, value, strict=True)
        else:
            items = [(key, value)]
        for name, result in items:
            if isinstance(result, dict) and "name" in result:
                result = {k: v for k, v in result.items() if k != "name"}
            rows.append({"check": f"{key}: {name}", "result": _as_text(result)})
    return rows


def _tensor_rows(specs: list[dict] | None) -> list[dict]:
    return [
        {
            "name": str(spec.get("name", "")),
            "type": str(spec.get("type", "")),
            "shape": "(" + ", ".join(str(dim) for dim in spec.get("shape") or []) + ")",
        }
        for spec in specs or []
    ]


def model_summary(model: dict | None) -> dict | None:
    """Facts, op counts, inputs/outputs and checks of ``model.json`` as display rows."""
    if not model:
        return None
    source = model.get("source") or {}
    opsets = model.get("opsets") or {}
    ops = model.get("op_types") or {}
    class_output = model.get("class_output") or {}
    producer = " ".join(
        str(part) for part in (model.get("producer_name"), model.get("producer_version")) if part
    )
    facts = [
        ("Framework", source.get("framework", "")),
        ("Source", source.get("name", "")),
        ("Producer", producer),
        ("Opset", ", ".join(f"{domain} {version}" for domain, version in opsets.items())),
        ("IR version", model.get("ir_version", "")),
        ("Size", format_bytes(model.get("size_bytes"))),
        ("Nodes", f"{model.get('node_count', 0):,}"),
        ("Unique ops", f"{len(ops):,}"),
        ("Parameters", f"{model.get('parameter_count', 0):,}"),
        ("Class output", f"{class_output.get('name', '')} ({model.get('output_kind', '')})"),
        ("Output kind decided by", model.get("output_kind_source", "")),
    ]
    return {
        "facts": [{"fact": name, "value": _as_text(value)} for name, value in facts],
        "ops": [
            {"op": name, "count": count}
            for name, count in sorted(ops.items(), key=lambda item: (-item[1], item[0]))
        ],
        "inputs": _tensor_rows(model.get("inputs")),
        "outputs": _tensor_rows(model.get("outputs")),
        "checks": _checks(model),
    }


def quarantine_reasons(layout: RunLayout) -> list[dict]:
    """``[{"kind", "reason", "samples"}]`` of ``data/quarantine.parquet``, most first.

    One row per kind of problem (``testprio.ingest.shards.QUARANTINE_KINDS``) with its first
    sample's reason as the example; runs from before kinds were recorded group by reason.
    """
    uri = run_file(layout, layout.quarantine)
    if not storage.exists(uri):
        return []
    table = storage.read_table(uri)
    if not table.num_rows:
        return []
    key = "kind" if "kind" in table.column_names else "reason"
    rows: dict[str, dict] = {}
    for kind, reason in zip(
        table.column(key).to_pylist(), table.column("reason").to_pylist(), strict=True
    ):
        row = rows.setdefault(kind, {"kind": kind, "reason": reason, "samples": 0})
        row["samples"] += 1
    return sorted(rows.values(), key=lambda row: (-row["samples"], row["kind"]))


def preprocessing_text(ops: list[dict] | None) -> str:
    """``scale(divide=255) → layout(to=NCHW)``: the run's op list on one line ('' when none).

    A custom op shows its file name and hash, not its source.
    """
    parts = []
    for op in ops or []:
        params = {
            name: value
            for name, value in op.items()
            if name not in ("op", "source", "cpu_seconds", "memory_mb")
        }
        if "sha256" in params:
            params["sha256"] = str(params["sha256"])[:12]
        shown = ", ".join(f"{name}={_short(value)}" for name, value in params.items())
        parts.append(f"{op.get('op')}({shown})")
    return " → ".join(parts)


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_short(item) for item in value) + "]"
    return str(value)


def dataset_stats(
    layout: RunLayout, manifest: dict, *, max_rows: int | None = None
) -> dict[str, Any]:
    """Mean, std, min and max of every input value, streaming the shards a row group at a time.

    ``max_rows`` stops after that many samples (``rows`` says how many were read).
    """
    total = sum_ = sum_sq = 0.0
    rows = 0
    low, high = math.inf, -math.inf
    for shard in manifest["shards"]:
        if not shard["rows"] or (max_rows is not None and rows >= max_rows):
            continue
        with storage.open_parquet(shard_file(layout, "data", shard["name"])) as parquet:
            for group in range(parquet.num_row_groups):
                if max_rows is not None and rows >= max_rows:
                    break
                column = parquet.read_row_group(group, columns=["x"]).column("x")
                values = shard_tensors(column.combine_chunks(), parquet.schema_arrow).ravel()
                values = values.astype(np.float64, copy=False)
                rows += len(column)
                total += values.size
                sum_ += float(values.sum())
                sum_sq += float(np.square(values).sum())
                if values.size:
                    low, high = min(low, float(values.min())), max(high, float(values.max()))
    if not total:
        return {"rows": 0, "mean": None, "std": None, "min": None, "max": None}
    mean = sum_ / total
    variance = max(sum_sq / total - mean * mean, 0.0)
    return {
        "rows": rows,
        "mean": round(mean, 6),
        "std": round(math.sqrt(variance), 6),
        "min": round(low, 6),
        "max": round(high, 6),
    }


def _label_counts(layout: RunLayout) -> list[int] | None:
    labels = storage.read_table(run_file(layout, layout.ranking), columns=["label"]).column("label")
    known = pc.drop_null(labels).to_numpy(zero_copy_only=False)
    if not len(known):
        return None
    return np.bincount(known.astype(np.int64)).tolist()


def dataset_summary(details: RunDetails) -> dict | None:
    """Samples, shape, bytes, value statistics, class balance and quarantine of the pool.

    Uses the report stage's figures when present; otherwise reads the ranking's labels and
    estimates the statistics from the first ``STATS_ROWS_WITHOUT_REPORT`` samples.
    """
    manifest = details.manifest
    if not manifest:
        return None
    shape = [int(dim) for dim in manifest["sample_shape"]]
    values_per_sample = int(np.prod(shape)) if shape else 0
    figures = (details.report or {}).get("dataset") or {}
    stats = figures.get("stats")
    if stats is None:
        stats = dataset_stats(details.layout, manifest, max_rows=STATS_ROWS_WITHOUT_REPORT)
    label_counts = figures.get("label_counts") if figures else None
    if not figures and details.has_ranking and manifest.get("has_labels"):
        label_counts = _label_counts(details.layout)
    names = class_names(details)
    predicted = (details.summary or {}).get("predicted_counts") or []
    classes = max(len(predicted), len(label_counts or []))
    balance = [
        {
            "class": class_label(index, names),
            "labeled": (label_counts[index] if label_counts and index < len(label_counts) else 0)
            if label_counts is not None
            else None,
            "predicted": predicted[index] if index < len(predicted) else 0,
        }
        for index in range(classes)
    ]
    return {
        "source": str(manifest.get("source", "")),
        "samples": manifest["samples"],
        "ingested": manifest["ingested"],
        "quarantined": manifest["quarantined"],
        "shape": shape,
        "shards": len(manifest["shards"]),
        "tensor_bytes": manifest["ingested"] * values_per_sample * 4,
        "has_labels": bool(manifest.get("has_labels")),
        "stats": stats,
        "stats_estimated": not figures,
        "class_balance": balance,
        "quarantine_reasons": quarantine_reasons(details.layout) if manifest["quarantined"] else [],
        "duplicates": int(manifest.get("duplicates") or 0),
        "preprocessing": preprocessing_text(manifest.get("preprocessing")),
        "format": str(manifest.get("format", "")),
    }


def _stage_timings(layout: RunLayout) -> list[dict]:
    """``layout.collect_stage_timings``, reading only files under the root."""
    names = [name for name in storage.list_names(layout.stages_dir) if name.endswith(".json")]
    uris = [run_file(layout, storage.join(layout.stages_dir, name)) for name in names]
    return [storage.read_json(uri) for uri in uris]


def _timeline_row(stage: str, group: str, start: float, end: float, origin: float, **extra):
    return {
        "stage": stage,
        "group": group,
        "start": datetime.fromtimestamp(start, timezone.utc).isoformat(),
        "end": datetime.fromtimestamp(end, timezone.utc).isoformat(),
        "start_s": round(start - origin, 3),
        "end_s": round(end - origin, 3),
        **extra,
    }


def stage_timeline(details: RunDetails, *, max_shards: int = TIMELINE_MAX_SHARDS) -> list[dict]:
    """One bar per stage and per scored shard, in start order; a run with more than
    ``max_shards`` scored shards gets ONE bar for all of them instead (first start to last
    end), whose ``detail`` gives the shard count and the min/median/max seconds per shard,
    so that a 1,000-shard run draws a readable chart of a dozen bars.

    Each row: ``stage``, ``group`` (``score`` for every shard), ``start``/``end`` (ISO, UTC),
    ``start_s``/``end_s`` (seconds since the first stage started), ``seconds``, ``rows``,
    ``detail`` (text; empty for a single stage or shard).
    """
    timings = details.record.get("stages") or _stage_timings(details.layout)
    timings = sorted(timings, key=lambda timing: (timing["start"], timing["stage"]))
    origin = timings[0]["start"] if timings else 0.0
    shards = [t for t in timings if str(t["stage"]).startswith("score-")]
    aggregate = len(shards) > max_shards
    rows = []
    for timing in timings:
        name = str(timing["stage"])
        if aggregate and name.startswith("score-"):
            if timing is not shards[0]:
                continue
            seconds = np.array([float(t["seconds"]) for t in shards])
            known = [t.get("rows") for t in shards if t.get("rows") is not None]
            start = min(t["start"] for t in shards)
            end = max(t["end"] for t in shards)
            rows.append(
                _timeline_row(
                    f"score ({len(shards):,} shards)",
                    "score",
                    start,
                    end,
                    origin,
                    seconds=round(end - start, 3),
                    rows=int(sum(known)) if known else None,
                    detail=(
                        f"{len(shards):,} shards; seconds per shard: min "
                        f"{seconds.min():.3f}, median {float(np.median(seconds)):.3f}, "
                        f"max {seconds.max():.3f}"
                    ),
                )
            )
            continue
        rows.append(
            _timeline_row(
                name,
                "score" if name.startswith("score-") else name,
                timing["start"],
                timing["end"],
                origin,
                seconds=round(float(timing["seconds"]), 3),
                rows=timing.get("rows"),
                detail="",
            )
        )
    return rows


# --- figures of the summary --------------------------------------------------------------


def score_histogram(summary: dict, metric: str | None = None) -> list[dict]:
    """``[{"bin_start", "bin_end", "samples"}]`` of the metric's 20-bin histogram."""
    histogram = summary["histograms"][metric or summary["metric"]]
    edges = histogram["edges"]
    return [
        {"bin_start": edges[i], "bin_end": edges[i + 1], "samples": count}
        for i, count in enumerate(histogram["counts"])
    ]


def class_score_heatmap(summary: dict, names: list[str] | None = None) -> list[dict]:
    """Predicted class x score bin counts: ``[{"class", "bin_start", "bin_end", "samples"}]``."""
    bins = summary["class_score_bins"]
    edges = bins["edges"]
    return [
        {
            "class": class_label(cls, names),
            "class_index": cls,
            "bin_start": edges[i],
            "bin_end": edges[i + 1],
            "samples": count,
        }
        for cls, counts in enumerate(bins["counts"])
        for i, count in enumerate(counts)
    ]


def per_class_means(summary: dict, names: list[str] | None = None) -> list[dict]:
    """Mean score of each predicted class: ``[{"class", "mean", "predicted"}]``."""
    means = summary["per_class_mean"][summary["metric"]]
    predicted = summary.get("predicted_counts") or []
    return [
        {
            "class": class_label(cls, names),
            "class_index": cls,
            "mean": mean,
            "predicted": predicted[cls] if cls < len(predicted) else 0,
        }
        for cls, mean in enumerate(means)
    ]


def per_class_accuracy(summary: dict, names: list[str] | None = None) -> list[dict]:
    """Accuracy of each true class: ``[{"class", "accuracy"}]`` (empty without labels)."""
    labels = summary.get("labels")
    if not labels:
        return []
    return [
        {"class": class_label(cls, names), "class_index": cls, "accuracy": accuracy}
        for cls, accuracy in enumerate(labels["per_class_accuracy"])
        if accuracy is not None
    ]


def fault_curve(misclassified: np.ndarray, *, points: int = FAULT_CURVE_POINTS) -> dict | None:
    """Share of misclassified inputs found against share inspected, in ranking order.

    ``misclassified`` is ``(n,)`` booleans, most uncertain first. Returns up to ``points``
    evenly spaced points (always the first and last) with the ``ranking``, ``random``
    (diagonal) and ``ideal`` (every fault first) curves; None without any fault.
    """
    misclassified = np.asarray(misclassified, dtype=bool)
    n, k = len(misclassified), int(misclassified.sum())
    if not n or not k:
        return None
    positions = np.unique(np.linspace(0, n, min(points, n + 1)).round().astype(np.int64))
    found = np.concatenate([[0], np.cumsum(misclassified)])[positions] / k
    inspected = positions / n
    return {
        "inspected": inspected.round(6).tolist(),
        "ranking": found.round(6).tolist(),
        "random": inspected.round(6).tolist(),
        "ideal": np.minimum(1.0, positions / k).round(6).tolist(),
        "faults": k,
        "samples": n,
    }


def fault_curve_rows(curve: dict) -> list[dict]:
    """Long-form rows (``inspected``, ``found``, ``order``) of a ``fault_curve`` for charts."""
    return [
        {"inspected": x, "found": curve[order][i], "order": order}
        for order in ("ranking", "random", "ideal")
        for i, x in enumerate(curve["inspected"])
    ]


def label_figures(layout: RunLayout, num_classes: int) -> dict | None:
    """Confusion matrix, fault-detection curve and label counts from the ranking's labels."""
    table = storage.read_table(run_file(layout, layout.ranking), columns=["predicted", "label"])
    known = table.filter(pc.is_valid(table.column("label")))
    if not known.num_rows:
        return None
    truth = known.column("label").to_numpy().astype(np.int64)
    guess = known.column("predicted").to_numpy().astype(np.int64)
    classes = max(num_classes, int(truth.max()) + 1, int(guess.max()) + 1)
    matrix = np.bincount(truth * classes + guess, minlength=classes * classes)
    return {
        "confusion": matrix.reshape(classes, classes).tolist(),
        "fault_curve": fault_curve(truth != guess),
        "label_counts": np.bincount(truth, minlength=classes).tolist(),
    }


def run_fault_curve(details: RunDetails) -> dict | None:
    """The run's fault-detection curve (from report.json, else from the ranking's labels)."""
    if not details.has_labels:
        return None
    report_labels = (details.report or {}).get("labels")
    if report_labels:
        return report_labels["fault_curve"]
    figures = label_figures(details.layout, details.summary["num_classes"])
    return figures["fault_curve"] if figures else None


# --- the ranking, a page at a time -------------------------------------------------------


@dataclass(frozen=True)
class RankingFilter:
    """Rows to keep: predicted class in ``classes`` (None = all), score in [low, high]."""

    classes: tuple[int, ...] | None = None
    score_min: float | None = None
    score_max: float | None = None
    labels: tuple[int, ...] | None = None  # true label in these (unlabelled rows drop out)
    misclassified: bool = False  # only labelled rows whose prediction differs from the label

    @property
    def active(self) -> bool:
        return (
            self.classes is not None
            or self.score_min is not None
            or self.score_max is not None
            or self.labels is not None
            or self.misclassified
        )

    @property
    def needs_labels(self) -> bool:
        return self.labels is not None or self.misclassified


@dataclass
class RankingPage:
    rows: pa.Table
    total: int
    page: int
    pages: int
    page_size: int


def _row_group_starts(metadata) -> np.ndarray:
    sizes = [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]
    return np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])


def ranking_rows(layout: RunLayout, start: int, stop: int, columns: Iterable[str]) -> pa.Table:
    """Rows ``[start, stop)`` of the ranking (0-based), reading only the row groups they lie in."""
    columns = list(columns)
    with storage.open_parquet(run_file(layout, layout.ranking)) as parquet:
        starts = _row_group_starts(parquet.metadata)
        start, stop = max(0, start), min(int(starts[-1]), stop)
        if stop <= start:
            return parquet.schema_arrow.empty_table().select(columns)
        first = int(np.searchsorted(starts, start, side="right") - 1)
        last = int(np.searchsorted(starts, stop - 1, side="right") - 1)
        table = parquet.read_row_groups(list(range(first, last + 1)), columns=columns)
    return table.slice(start - int(starts[first]), stop - start)


def _statistics(metadata, group: int, column: str):
    schema = metadata.schema
    index = schema.names.index(column) if column in schema.names else -1
    if index < 0:
        return None
    stats = metadata.row_group(group).column(index).statistics
    if stats is None or not stats.has_min_max:
        return None
    return stats.min, stats.max


def _group_may_match(metadata, group: int, metric: str, filters: RankingFilter) -> bool:
    if filters.classes is not None:
        bounds = _statistics(metadata, group, "predicted")
        if bounds and not any(bounds[0] <= cls <= bounds[1] for cls in filters.classes):
            return False
    if filters.labels is not None:
        bounds = _statistics(metadata, group, "label")
        if bounds and not any(bounds[0] <= cls <= bounds[1] for cls in filters.labels):
            return False
    bounds = _statistics(metadata, group, metric)
    if bounds:
        if filters.score_min is not None and bounds[1] < filters.score_min:
            return False
        if filters.score_max is not None and bounds[0] > filters.score_max:
            return False
    return True


def _match_mask(table: pa.Table, metric: str, filters: RankingFilter) -> pa.Array:
    mask = pa.array(np.ones(table.num_rows, dtype=bool))
    if filters.classes is not None:
        mask = pc.and_(mask, pc.is_in(table.column("predicted"), pa.array(filters.classes)))
    score = table.column(metric)
    if filters.score_min is not None:
        mask = pc.and_(mask, pc.greater_equal(score, pa.scalar(filters.score_min, pa.float32())))
    if filters.score_max is not None:
        mask = pc.and_(mask, pc.less_equal(score, pa.scalar(filters.score_max, pa.float32())))
    if filters.labels is not None:
        label = table.column("label")
        mask = pc.and_(mask, pc.fill_null(pc.is_in(label, pa.array(filters.labels)), False))
    if filters.misclassified:
        wrong = pc.not_equal(table.column("predicted"), table.column("label"))
        mask = pc.and_(mask, pc.fill_null(wrong, False))
    return mask


def ranking_page(
    details: RunDetails,
    *,
    page: int = 0,
    page_size: int = 50,
    filters: RankingFilter | None = None,
    columns: Iterable[str] | None = None,
) -> RankingPage:
    """Page ``page`` (0-based) of the ranking in rank order, after ``filters``.

    Unfiltered, reads the row groups the page lies in. Filtered, reads the two filter
    columns of row groups whose statistics may match (to count), and full rows only of the
    row groups that hold the page.
    """
    if page_size <= 0:
        raise TestprioError(f"page size {page_size} must be a positive number of rows.")
    metric = details.metric
    columns = list(columns or (*RANKING_VIEW_COLUMNS[:4], metric, "label"))
    filters = filters or RankingFilter()
    if not filters.active:
        total = details.num_rows
        pages = max(1, math.ceil(total / page_size))
        page = min(max(page, 0), pages - 1)
        rows = ranking_rows(details.layout, page * page_size, (page + 1) * page_size, columns)
        return RankingPage(rows, total, page, pages, page_size)

    with storage.open_parquet(run_file(details.layout, details.layout.ranking)) as parquet:
        metadata = parquet.metadata
        masks: dict[int, pa.Array] = {}
        for group in range(metadata.num_row_groups):
            if _group_may_match(metadata, group, metric, filters):
                needed = ["predicted", metric] + (["label"] if filters.needs_labels else [])
                table = parquet.read_row_group(group, columns=needed)
                masks[group] = _match_mask(table, metric, filters)
        counts = {group: pc.sum(mask).as_py() or 0 for group, mask in masks.items()}
        total = sum(counts.values())
        pages = max(1, math.ceil(total / page_size))
        page = min(max(page, 0), pages - 1)
        first, last = page * page_size, (page + 1) * page_size
        pieces, seen = [], 0
        for group, mask in masks.items():
            count = counts[group]
            if count and seen < last and seen + count > first:
                table = parquet.read_row_group(group, columns=columns).filter(mask)
                lo = max(first - seen, 0)
                pieces.append(table.slice(lo, min(last - seen, count) - lo))
            seen += count
        empty = parquet.schema_arrow.empty_table().select(columns)
    rows = pa.concat_tables(pieces) if pieces else empty
    return RankingPage(rows, total, page, pages, page_size)


# --- samples: images, sources, probabilities ----------------------------------------------


def _rows_by_id(uri: str, sample_ids: list[int], columns: list[str]) -> dict[int, dict]:
    """The rows of the Parquet file ``uri`` with these sample ids (absent ids are skipped)."""
    found: dict[int, dict] = {}
    with storage.open_parquet(uri) as parquet:
        ids = parquet.read(columns=["sample_id"]).column("sample_id").to_numpy()
        if not len(ids):
            return found
        order = np.argsort(ids, kind="stable")  # shards are in id order; this keeps it safe
        sorted_ids = ids[order]
        wanted = np.asarray(list(sample_ids), dtype=np.int64)
        at = np.minimum(np.searchsorted(sorted_ids, wanted), len(sorted_ids) - 1)
        hit = sorted_ids[at] == wanted
        positions = {
            int(sample_id): int(order[index])
            for sample_id, index, present in zip(wanted, at, hit, strict=True)
            if present
        }
        if not positions:
            return found
        starts = _row_group_starts(parquet.metadata)
        by_group: dict[int, list[tuple[int, int]]] = {}
        for sample_id, position in positions.items():
            group = int(np.searchsorted(starts, position, side="right") - 1)
            by_group.setdefault(group, []).append((sample_id, position - int(starts[group])))
        shape = shard_sample_shape(parquet.schema_arrow) if "x" in columns else None
        for group, members in by_group.items():
            table = parquet.read_row_group(group, columns=columns)
            picked = table.take(pa.array([local for _, local in members]))
            for (sample_id, _), row in zip(members, _rows_of(picked, shape), strict=True):
                found[sample_id] = row
    return found


def _rows_of(table: pa.Table, shape: tuple[int, ...] | None) -> list[dict]:
    rows = []
    arrays = {}
    for name in table.column_names:
        column = table.column(name).combine_chunks()
        if name == "x":
            flat = shard_tensors(column, table.schema)  # any shard format
            arrays[name] = flat.reshape((table.num_rows, *(shape or (-1,))))
        elif name == "probs":
            arrays[name] = [np.asarray(value, dtype=np.float32) for value in column.to_pylist()]
        else:
            arrays[name] = column.to_pylist()
    for i in range(table.num_rows):
        rows.append({name: values[i] for name, values in arrays.items()})
    return rows


def _shard_of(details: RunDetails, sample_ids: Iterable[int]) -> dict[str, list[int]]:
    """Which shard file holds each sample id: ``{shard name: [ids]}``.

    Shard ``i`` holds ids ``[i * shard_size, (i + 1) * shard_size)`` less the quarantined
    ones (ingest cuts shards by position in the source, before quarantining). Without a
    known shard size the shards' ``sample_id`` statistics decide.
    """
    manifest = details.manifest or {}
    shards = manifest.get("shards") or []
    shard_size = int(details.parameters.get("shard_size") or 0)
    groups: dict[str, list[int]] = {}
    if shard_size > 0:
        for sample_id in sample_ids:
            index = int(sample_id) // shard_size
            if 0 <= index < len(shards):
                groups.setdefault(shards[index]["name"], []).append(int(sample_id))
        return groups
    bounds = []
    for shard in shards:
        if not shard["rows"]:
            continue
        with storage.open_parquet(shard_file(details.layout, "data", shard["name"])) as pq_:
            low = min(
                _statistics(pq_.metadata, g, "sample_id")[0]
                for g in range(pq_.metadata.num_row_groups)
            )
            high = max(
                _statistics(pq_.metadata, g, "sample_id")[1]
                for g in range(pq_.metadata.num_row_groups)
            )
        bounds.append((low, high, shard["name"]))
    for sample_id in sample_ids:
        for low, high, name in bounds:
            if low <= sample_id <= high:
                groups.setdefault(name, []).append(int(sample_id))
                break
    return groups


def read_samples(
    details: RunDetails, sample_ids: Iterable[int], *, columns=("x", "label", "source")
) -> dict[int, dict]:
    """``{sample_id: {"x": (shape) float32, "label", "source"}}`` read from the data shards."""
    result: dict[int, dict] = {}
    for name, ids in _shard_of(details, sample_ids).items():
        uri = shard_file(details.layout, "data", name)
        result.update(_rows_by_id(uri, ids, ["sample_id", *columns]))
    return result


def read_probabilities(details: RunDetails, sample_ids: Iterable[int]) -> dict[int, np.ndarray]:
    """``{sample_id: (K,) probabilities}`` read from the scores shards."""
    result: dict[int, np.ndarray] = {}
    for name, ids in _shard_of(details, sample_ids).items():
        uri = shard_file(details.layout, "scores", name)
        rows = _rows_by_id(uri, ids, ["sample_id", "probs"])
        result.update({sample_id: row["probs"] for sample_id, row in rows.items()})
    return result


def with_sources(
    details: RunDetails, rows: pa.Table, *, samples: dict[int, dict] | None = None
) -> pa.Table:
    """``rows`` (with ``sample_id``) plus each sample's ``source``, read from the data shards
    (or taken from ``samples``, a ``read_samples`` result that holds them)."""
    ids = rows.column("sample_id").to_pylist()
    sources = samples if samples is not None else read_samples(details, ids, columns=("source",))
    values = [sources.get(sample_id, {}).get("source") for sample_id in ids]
    return rows.append_column("source", pa.array(values, pa.string()))


def display_image(sample: np.ndarray) -> np.ndarray:
    """A sample as a displayable ``(H, W)`` grayscale or ``(H, W, 3)`` RGB uint8 image.

    Channels-first ``(1|3, H, W)`` and channels-last ``(H, W, 1|3)`` samples are both
    understood (channels-first wins when ambiguous, as in ONNX models); other channel counts
    show their first channel. Values are stretched from the sample's own min..max onto
    0..255, which undoes any mean/std normalization for display.
    """
    image = np.asarray(sample, dtype=np.float64)
    while image.ndim > 3 and image.shape[0] == 1:
        image = image[0]
    if image.ndim == 1:
        side = math.isqrt(image.size)
        rgb_side = math.isqrt(image.size // 3)
        if side * side == image.size:
            image = image.reshape(side, side)
        elif image.size % 3 == 0 and rgb_side * rgb_side * 3 == image.size:
            image = image.reshape(rgb_side, rgb_side, 3)
        else:
            image = image.reshape(1, -1)
    elif image.ndim == 3:
        if image.shape[0] in (1, 3):
            image = np.moveaxis(image, 0, -1)
        elif image.shape[-1] not in (1, 3):
            image = image[0][..., None]
        if image.shape[-1] == 1:
            image = image[..., 0]
    elif image.ndim > 3:
        image = image.reshape(-1, image.shape[-1])
    finite = np.isfinite(image)
    if not finite.any():
        return np.zeros(image.shape, dtype=np.uint8)
    low, high = float(image[finite].min()), float(image[finite].max())
    image = np.where(finite, image, low)
    if high - low < 1e-12:
        level = round(255 * low) if 0.0 <= low <= 1.0 else 128
        return np.full(image.shape, level, dtype=np.uint8)
    return np.round((image - low) / (high - low) * 255).astype(np.uint8)


def upscale(image: np.ndarray, *, min_side: int = GALLERY_MIN_SIDE) -> np.ndarray:
    """Enlarge a small image by whole-pixel repetition (nearest, no blur) to ``min_side``."""
    from PIL import Image

    height, width = image.shape[:2]
    factor = max(1, math.ceil(min_side / max(1, min(height, width))))
    factor = min(factor, max(1, GALLERY_MAX_SIDE // max(height, width)))
    if factor == 1:
        return image
    enlarged = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).resize(
        (width * factor, height * factor), Image.Resampling.NEAREST
    )
    return np.asarray(enlarged)


def encode_png(image: np.ndarray) -> bytes:
    """A lossless PNG (Pillow) of a ``(H, W)`` grayscale or ``(H, W, 3)`` RGB uint8 image."""
    from PIL import Image

    image = np.ascontiguousarray(image, dtype=np.uint8)
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise TestprioError(f"cannot encode an image of shape {image.shape} as PNG.")
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _top_probabilities(probs: np.ndarray | None, names, count: int) -> list[dict]:
    if probs is None:
        return []
    order = np.argsort(-probs, kind="stable")[:count]
    return [{"class": class_label(int(i), names), "probability": float(probs[i])} for i in order]


def gallery(details: RunDetails, which: str = "top", k: int = 8, *, top: int = 3) -> list[dict]:
    """The ``k`` most (``top``) or least (``bottom``) uncertain samples, ready to show.

    Each item: rank, sample_id, predicted (label text), label, score, source, ``image``
    (uint8, enlarged) and the ``top`` class probabilities.
    """
    if which not in ("top", "bottom"):
        raise TestprioError(f"gallery '{which}' is not one of top, bottom.")
    if not details.has_ranking or k <= 0:
        return []
    metric = details.metric
    n = details.num_rows
    start, stop = (0, k) if which == "top" else (max(0, n - k), n)
    columns = ["rank", "sample_id", "predicted", "label", metric]
    rows = ranking_rows(details.layout, start, stop, columns).to_pylist()
    ids = [row["sample_id"] for row in rows]
    samples = read_samples(details, ids, columns=("x", "source"))
    probabilities = read_probabilities(details, ids)
    names = class_names(details)
    items = []
    for row in rows:
        sample = samples.get(row["sample_id"])
        items.append(
            {
                "rank": row["rank"],
                "sample_id": row["sample_id"],
                "predicted": class_label(row["predicted"], names),
                "label": class_label(row["label"], names),
                "score": row[metric],
                "source": sample["source"] if sample else "",
                "image": upscale(display_image(sample["x"])) if sample else None,
                "top_probabilities": _top_probabilities(
                    probabilities.get(row["sample_id"]), names, top
                ),
            }
        )
    return items


def random_samples(details: RunDetails, count: int = 16, *, seed: int = 0) -> list[dict]:
    """``count`` ingested samples drawn at random (seeded): sample_id, source, label, image."""
    manifest = details.manifest
    if not manifest or not manifest["ingested"]:
        return []
    rng = np.random.default_rng(seed)
    picks = np.sort(rng.choice(manifest["ingested"], min(count, manifest["ingested"]), False))
    names = class_names(details)
    starts = np.concatenate([[0], np.cumsum([shard["rows"] for shard in manifest["shards"]])])
    items = []
    for index, shard in enumerate(manifest["shards"]):
        inside = picks[(picks >= starts[index]) & (picks < starts[index + 1])] - starts[index]
        if not len(inside):
            continue
        uri = shard_file(details.layout, "data", shard["name"])
        with storage.open_parquet(uri) as parquet:
            shape = shard_sample_shape(parquet.schema_arrow)
            group_starts = _row_group_starts(parquet.metadata)
            for position in inside.tolist():
                group = int(np.searchsorted(group_starts, position, side="right") - 1)
                table = parquet.read_row_group(group, columns=["sample_id", "x", "label", "source"])
                row = _rows_of(table.slice(position - int(group_starts[group]), 1), shape)[0]
                items.append(
                    {
                        "sample_id": row["sample_id"],
                        "source": row["source"],
                        "label": class_label(row["label"], names),
                        "image": upscale(display_image(row["x"]), min_side=64),
                    }
                )
    return items


# --- one sample: drill-down ----------------------------------------------------------------


@dataclass
class ScoreColumns:
    """Every metric's scores in ranking order, read once per run, so that a sample's rank
    under each metric is a count (``ranks_of``), not a sort of the pool per look.

    ``sample_id`` ``(N,)`` int64 and each ``scores[metric]`` ``(N,)`` float32 are in the
    run's ranking order; ``position`` maps a sample id to its row (-1: not ranked).
    """

    sample_id: np.ndarray
    scores: dict[str, np.ndarray]
    position: np.ndarray

    @property
    def nbytes(self) -> int:
        return (
            self.sample_id.nbytes
            + self.position.nbytes
            + sum(values.nbytes for values in self.scores.values())
        )


def score_columns(details: RunDetails) -> ScoreColumns:
    """The ranking's ``sample_id`` and metric columns (``SCORE_METRICS`` it holds)."""
    uri = run_file(details.layout, details.layout.ranking)
    with storage.open_parquet(uri) as parquet:
        # The run's own ranking key too, when it is another prioritizer's column.
        wanted = dict.fromkeys([*SCORE_METRICS, details.metric])
        names = [name for name in wanted if name in parquet.schema_arrow.names]
        table = parquet.read(columns=["sample_id", *names])
    ids = table.column("sample_id").to_numpy().astype(np.int64, copy=False)
    position = np.full(int(ids.max(initial=-1)) + 1, -1, dtype=np.int64)
    position[ids] = np.arange(len(ids))
    scores = {name: table.column(name).to_numpy().astype(np.float32, copy=False) for name in names}
    return ScoreColumns(ids, scores, position)


def ranks_of(columns: ScoreColumns, sample_id: int) -> dict[str, int]:
    """``{metric: rank}`` (1 = most uncertain) of one sample under every metric, as the rank
    stage orders: score descending, ties by sample_id ascending. O(N) per metric."""
    row = _position(columns, sample_id)
    ids = columns.sample_id
    ranks = {}
    for name, values in columns.scores.items():
        value = values[row]
        tied = values == value
        ahead = np.count_nonzero(values > value) + np.count_nonzero(tied & (ids < sample_id))
        ranks[name] = int(ahead) + 1
    return ranks


def _position(columns: ScoreColumns, sample_id: int) -> int:
    sample_id = int(sample_id)
    row = columns.position[sample_id] if 0 <= sample_id < len(columns.position) else -1
    if row < 0:
        raise TestprioError(
            f"sample {sample_id} is not among the {len(columns.sample_id):,} ranked samples "
            "of this run (a quarantined sample is not ranked); give a sample id from the "
            "ranking."
        )
    return int(row)


def probability_rows(probs: np.ndarray | None, names: list[str] | None) -> list[dict]:
    """``[{"class", "class_index", "probability", "predicted"}]`` of one sample's ``(K,)``
    probabilities, for a bar chart (``predicted`` marks the largest)."""
    if probs is None or not len(probs):
        return []
    top = int(np.argmax(probs))
    return [
        {
            "class": class_label(index, names),
            "class_index": index,
            "probability": round(float(value), 6),
            "predicted": index == top,
        }
        for index, value in enumerate(probs)
    ]


def sample_detail(
    details: RunDetails,
    columns: ScoreColumns,
    *,
    rank: int | None = None,
    sample_id: int | None = None,
) -> dict:
    """One ranked sample by ``rank`` (1-based, in this run's ranking) or ``sample_id``.

    Returns rank, sample_id, predicted, confidence, label (text with class name), source,
    ``scores`` and ``ranks`` (``{metric: value}``, ``{metric: rank}`` under every metric),
    ``probabilities`` (``probability_rows``), ``x`` (the preprocessed tensor) and
    ``wrong`` (True/False with a label, None without).
    """
    if (rank is None) == (sample_id is None):
        raise TestprioError("give a rank or a sample id, not both.")
    total = len(columns.sample_id)
    if rank is not None:
        if not 1 <= int(rank) <= total:
            raise TestprioError(
                f"rank {rank} is not a rank of this run; choose one from 1 to {total:,}."
            )
        row = int(rank) - 1
        sample_id = int(columns.sample_id[row])
    else:
        row = _position(columns, int(sample_id))
    sample_id = int(sample_id)
    scored = _rows_by_id(
        shard_file(details.layout, "scores", _shard_name_of(details, sample_id)),
        [sample_id],
        ["sample_id", "predicted", "confidence", "label", "probs"],
    ).get(sample_id)
    data = read_samples(details, [sample_id], columns=("x", "source")).get(sample_id)
    if scored is None or data is None:
        raise TestprioError(
            f"sample {sample_id} is ranked but missing from the shards of run "
            f"{details.run_id}; the run folder was changed after it was ranked."
        )
    names = class_names(details)
    label = scored.get("label")
    return {
        "rank": row + 1,
        "sample_id": sample_id,
        "predicted": class_label(scored["predicted"], names),
        "predicted_index": int(scored["predicted"]),
        "confidence": float(scored["confidence"]),
        "label": class_label(label, names) if label is not None else "",
        "wrong": None if label is None else int(label) != int(scored["predicted"]),
        "source": str(data.get("source") or ""),
        "scores": {name: float(values[row]) for name, values in columns.scores.items()},
        "ranks": ranks_of(columns, sample_id),
        "probabilities": probability_rows(scored.get("probs"), names),
        "x": data["x"],
    }


def _shard_name_of(details: RunDetails, sample_id: int) -> str:
    names = list(_shard_of(details, [sample_id]))
    if not names:
        raise TestprioError(
            f"no shard of run {details.run_id} holds sample {sample_id}; give a sample id "
            "from the ranking."
        )
    return names[0]


def thumbnails(
    details: RunDetails,
    sample_ids: list[int],
    *,
    limit: int = THUMBNAIL_ROWS,
    side: int = THUMBNAIL_SIDE,
    samples: dict[int, dict] | None = None,
) -> list[str | None]:
    """A small PNG ``data:`` URI of each of the first ``limit`` samples (None after them,
    and for a sample whose tensor is gone): a page of the ranking, never the pool.
    ``samples``: a ``read_samples`` result holding their ``x`` (read here otherwise)."""
    wanted = [int(sample_id) for sample_id in sample_ids[: max(0, limit)]]
    if samples is None:
        samples = read_samples(details, wanted, columns=("x",)) if wanted else {}
    uris: list[str | None] = []
    for sample_id in sample_ids:
        sample = samples.get(int(sample_id)) if len(uris) < len(wanted) else None
        if sample is None:
            uris.append(None)
            continue
        png = encode_png(upscale(display_image(sample["x"]), min_side=side))
        uris.append("data:image/png;base64," + base64.b64encode(png).decode("ascii"))
    return uris


# --- two runs ------------------------------------------------------------------------------


def pool_identity(a: RunDetails, b: RunDetails) -> dict:
    """Whether two runs ranked the same pool, and by what that was decided.

    With a content digest in both data manifests (``POOL_HASH_KEYS``): the digest and the
    sample count. Without one: the recorded data URI (``--data``), the pool's name and its
    sample count. Returns ``same``, ``compared`` (words for the screen), ``a``, ``b`` (each
    run's values).
    """
    manifest_a, manifest_b = a.manifest or {}, b.manifest or {}
    key = next((k for k in POOL_HASH_KEYS if manifest_a.get(k) and manifest_b.get(k)), None)
    if key is not None:
        fields = {key: "content hash", "samples": "sample count"}
        compared = "the content hash and sample count of the data manifests"
    else:
        fields = {"data": "data URI", "source": "pool name", "samples": "sample count"}
        compared = (
            "the data URI, pool name and sample count (the data manifests carry no content hash)"
        )

    def values(details: RunDetails, manifest: dict) -> dict:
        return {
            name: details.parameters.get("data") if name == "data" else manifest.get(name)
            for name in fields
        }

    first, second = values(a, manifest_a), values(b, manifest_b)
    return {"same": first == second, "compared": compared, "a": first, "b": second}


def _pool_words(values: dict) -> str:
    parts = [str(value) for name, value in values.items() if name != "samples"]
    return f"{', '.join(parts)}, {values.get('samples')} samples"


def run_figures(details: RunDetails) -> dict:
    """Accuracy and APFD (raw, normalized) of one run, for side-by-side comparison."""
    labels = (details.summary or {}).get("labels") or {}
    apfd = labels.get("apfd") or {}
    return {
        "run": details.run_id,
        "metric": details.metric,
        "samples": (details.summary or {}).get("counts", {}).get("ranked"),
        "accuracy": labels.get("accuracy"),
        "misclassified": labels.get("misclassified"),
        "apfd": apfd.get("raw"),
        "apfd_normalized": apfd.get("normalized"),
    }


def fault_curves_rows(curves: dict[str, dict | None]) -> list[dict]:
    """Long-form rows (``inspected``, ``found``, ``run``) of each run's ranking curve
    (``fault_curve``), one line per run; runs without a curve are left out."""
    return [
        {"inspected": x, "found": curve["ranking"][i], "run": run_id}
        for run_id, curve in curves.items()
        if curve
        for i, x in enumerate(curve["inspected"])
    ]


def _ranked_ids(details: RunDetails) -> np.ndarray:
    """Sample ids in ranking order (the ranking is stored sorted by rank)."""
    return (
        storage.read_table(run_file(details.layout, details.layout.ranking), columns=["sample_id"])
        .column("sample_id")
        .to_numpy()
    )


def compare_runs(
    a: RunDetails,
    b: RunDetails,
    *,
    top_ks: Iterable[int] = (10, 100, 1000, 10_000),
    moved: int = 25,
    scatter_points: int = 2000,
) -> dict:
    """Rank correlation, top-k overlap and the samples that moved most between two runs.

    Compares the samples both runs ranked. Spearman's rho over their ranks (re-ranked
    within the shared samples); top-k overlap = shared ids among both top-k / k.
    """
    for details in (a, b):
        if not details.has_ranking:
            raise TestprioError(f"run {details.run_id} has no ranking to compare.")
    warnings = []
    pool = pool_identity(a, b)
    if not pool["same"]:
        # The same sample id in two different pools is a different input: pairing them
        # would show agreement or disagreement that means nothing.
        raise TestprioError(
            f"runs {a.run_id} and {b.run_id} ranked different pools ({_pool_words(pool['a'])}"
            f" vs {_pool_words(pool['b'])}; compared: {pool['compared']}), so their samples "
            "cannot be paired; compare two runs of the same pool."
        )
    same_data = True
    ids_a, ids_b = _ranked_ids(a), _ranked_ids(b)
    rank_b_of = np.full(max(ids_a.max(initial=-1), ids_b.max(initial=-1)) + 1, -1, np.int64)
    rank_b_of[ids_b] = np.arange(1, len(ids_b) + 1)
    in_b = rank_b_of[ids_a] > 0
    shared_ids = ids_a[in_b]
    rank_a = np.arange(1, len(ids_a) + 1)[in_b]
    rank_b = rank_b_of[shared_ids]
    n = len(shared_ids)
    if n != len(ids_a) or n != len(ids_b):
        warnings.append(
            f"{len(ids_a) - n:,} samples only in {a.run_id}, {len(ids_b) - n:,} only in {b.run_id}."
        )
    # Re-rank within the shared samples so both orders are permutations of 1..n.
    position_a = np.arange(1, n + 1, dtype=np.float64)
    position_b = np.empty(n, dtype=np.float64)
    position_b[np.argsort(rank_b, kind="stable")] = np.arange(1, n + 1)
    spearman = (
        1.0 - 6.0 * float(np.sum((position_a - position_b) ** 2)) / (n * (n * n - 1.0))
        if n > 1
        else None
    )
    shared_b_order = shared_ids[np.argsort(rank_b, kind="stable")]
    sizes = {int(k) for k in top_ks if 0 < int(k) <= n}
    if n:
        sizes.add(max(1, n // 100))  # the top 1 %
    overlaps = []
    for k in sorted(sizes):
        common = np.intersect1d(shared_ids[:k], shared_b_order[:k], assume_unique=True)
        overlaps.append({"k": k, "shared": len(common), "overlap": round(len(common) / k, 6)})
    change = position_b - position_a
    order = np.lexsort((shared_ids, -np.abs(change)))[:moved]
    movers = [
        {
            "sample_id": int(shared_ids[i]),
            f"rank in {a.run_id}": int(rank_a[i]),
            f"rank in {b.run_id}": int(rank_b[i]),
            "moved": int(rank_b[i] - rank_a[i]),
        }
        for i in order
    ]
    step = max(1, n // scatter_points) if n else 1
    scatter = [
        {"sample_id": int(shared_ids[i]), "rank_a": int(rank_a[i]), "rank_b": int(rank_b[i])}
        for i in range(0, n, step)
    ]
    return {
        "a": a.run_id,
        "b": b.run_id,
        "metrics": (a.metric, b.metric),
        "models": (_basename(a.parameters.get("model")), _basename(b.parameters.get("model"))),
        "same_data": same_data,
        "pool_compared": pool["compared"],
        "shared": n,
        "spearman": None if spearman is None else round(spearman, 6),
        "overlaps": overlaps,
        "moved": movers,
        "scatter": scatter,
        "warnings": warnings,
    }


# --- downloads ----------------------------------------------------------------------------

# A spreadsheet runs a cell that starts with one of these as a formula (OWASP "CSV
# injection"); a leading ' makes it text. Only text cells: -0.5 in a number column is a number.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_FORMULA_PATTERN = "^[=+\\-@\t\r]"


def csv_cell(value: Any) -> Any:
    """``value`` safe for a CSV cell: a string that a spreadsheet would run gets a leading '."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def _csv_safe_table(table: pa.Table) -> pa.Table:
    """``csv_cell`` on every string column of ``table`` (number columns are left alone)."""
    for index, column_field in enumerate(table.schema):
        if pa.types.is_string(column_field.type) or pa.types.is_large_string(column_field.type):
            column = table.column(index)
            risky = pc.fill_null(pc.match_substring_regex(column, _FORMULA_PATTERN), False)
            safe = pc.if_else(risky, pc.binary_join_element_wise("'", column, ""), column)
            table = table.set_column(index, column_field, safe)
    return table


def write_ranking_csv(layout: RunLayout, sink) -> None:
    """Stream ``ranking.parquet`` as CSV into the binary file ``sink``, a row group at a time."""
    with storage.open_parquet(run_file(layout, layout.ranking)) as parquet:
        writer = None
        output = pa.PythonFile(sink, mode="w")
        for group in range(parquet.num_row_groups):
            table = _csv_safe_table(parquet.read_row_group(group))
            if writer is None:
                writer = pacsv.CSVWriter(output, table.schema)
            writer.write_table(table)
        if writer is None:
            writer = pacsv.CSVWriter(output, parquet.schema_arrow)
        writer.close()


def ranking_csv(layout: RunLayout) -> bytes:
    buffer = io.BytesIO()
    write_ranking_csv(layout, buffer)
    return buffer.getvalue()


def ranking_parquet(details: RunDetails) -> bytes:
    """``ranking.parquet`` of the run, as stored."""
    return storage.read_bytes(run_file(details.layout, details.layout.ranking))


def export_zip_file(details: RunDetails) -> str | None:
    """``report/export.zip`` of the run (checked to lie under the root), or None when its
    report stage has not written one."""
    uri = run_file(details.layout, details.layout.export_zip)
    return uri if storage.exists(uri) else None


def top_k_rows(details: RunDetails, k: int) -> list[dict]:
    """The top-``k`` rows for labeling: rank, sample_id, source, predicted, score, label."""
    metric = details.metric
    columns = ["rank", "sample_id", "predicted", "confidence", metric, "label"]
    rows = ranking_rows(details.layout, 0, max(0, k), columns).to_pylist()
    sources = read_samples(details, [row["sample_id"] for row in rows], columns=("source",))
    return [
        {
            "rank": row["rank"],
            "sample_id": row["sample_id"],
            "source": sources.get(row["sample_id"], {}).get("source", ""),
            "predicted": row["predicted"],
            "confidence": row["confidence"],
            metric: row[metric],
            "label": row["label"],
        }
        for row in rows
    ]


def rows_to_csv(rows: list[dict]) -> bytes:
    text = io.StringIO()
    if rows:
        # CRLF (RFC 4180): the csv module then also quotes a value holding \r or \n.
        writer = csv.DictWriter(text, fieldnames=list(rows[0]), lineterminator="\r\n")
        writer.writeheader()
        writer.writerows({key: csv_cell(value) for key, value in row.items()} for row in rows)
    return text.getvalue().encode()


def top_k_images_zip(details: RunDetails, k: int) -> bytes:
    """A zip of the top-``k`` samples as PNG files (original size) plus their CSV."""
    rows = top_k_rows(details, k)
    samples = read_samples(details, [row["sample_id"] for row in rows], columns=("x",))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(f"top-{k}.csv", rows_to_csv(rows))
        for row in rows:
            sample = samples.get(row["sample_id"])
            if sample is None:
                continue
            name = f"images/rank-{row['rank']:07d}_sample-{row['sample_id']}.png"
            archive.writestr(name, encode_png(display_image(sample["x"])))
    return buffer.getvalue()


# --- evaluation runs (``testprio evaluate``) --------------------------------------------

_TIE = 1e-12  # prioritizers this close to the best share first place (as evaluate.winners)
# What a malformed evaluation.json raises while it is shaped: each becomes one sentence.
_SHAPE_ERRORS = (KeyError, TypeError, ValueError, AttributeError, IndexError)


class _Malformed(ValueError):
    """A readable evaluation.json that still cannot be shown; the message says why."""


def _number(value: Any) -> float | None:
    """``value`` as a float; None stays None; anything else (text, a list) raises TypeError."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{value!r} is not a number")
    return float(value)


def best_by_apfd(prioritizers: dict) -> tuple[list[str], float | None]:
    """The prioritizer(s) with the highest normalized APFD (all that tie) and that value;
    ``([], None)`` when no prioritizer has one (a pool without mistakes)."""
    scores = [
        (name, _number((entry.get("apfd") or {}).get("normalized")))
        for name, entry in prioritizers.items()
    ]
    scores = [(name, value) for name, value in scores if value is not None]
    if not scores:
        return [], None
    top = max(value for _, value in scores)
    return [name for name, value in scores if value >= top - _TIE], top


def _best_text(names: list[str], value: float | None) -> str:
    return f"{', '.join(names)} ({value:.4f})" if names else ""


def figures_of_evaluation(evaluation: Any) -> dict:
    """The runs table's figures of an ``evaluation.json``: pool size, the model's accuracy on
    the pool, baseline accuracy (test split, model as given) and the best prioritizer(s) by
    normalized APFD with that value. All None for an unreadable file: the Evaluation page
    says what is wrong with it."""
    try:
        names, value = best_by_apfd(evaluation["prioritizers"])
        return {
            **_NO_FIGURES,
            "samples": int(evaluation["samples"]["pool"]),
            "accuracy": round(_number(evaluation["pool"]["accuracy"]), 4),
            "baseline_accuracy": round(_number(evaluation["baseline_accuracy"]), 4),
            "best_prioritizer": _best_text(names, value),
        }
    except _SHAPE_ERRORS:
        return dict(_NO_FIGURES)


# Which file holds a run kind's figures for the runs table, and how to read them.
FIGURES_BY_KIND = {
    RANKING_KIND: ("summary.json", figures_of_summary),
    EVALUATION_KIND: (EVALUATION_NAME, figures_of_evaluation),
}


def attribution_rows(attribution: dict | None) -> list[dict]:
    """Per transform of a metamorphic attribution (``testprio.causal``): violation rate with
    and without it, ATE with its bootstrap interval, Shapley value with its interval."""
    return [
        {
            "transform": str(effect["transform"]),
            "violation_rate": _number(effect["rate_applied"]),
            "rate_without": _number(effect["rate_not_applied"]),
            "ate": _number(effect["ate"]),
            "ate_ci_low": _number(effect["ate_ci_low"]),
            "ate_ci_high": _number(effect["ate_ci_high"]),
            "shapley": _number(effect["shapley"]),
            "shapley_ci_low": _number(effect.get("shapley_ci_low")),
            "shapley_ci_high": _number(effect.get("shapley_ci_high")),
        }
        for effect in (attribution or {}).get("effects") or []
    ]


def _attribution_view(entry: dict) -> dict | None:
    """The ``instability`` prioritizer's follow-up settings and attribution, if it ran."""
    metamorphic = entry.get("metamorphic") or {}
    attribution = entry.get("attribution")
    if not metamorphic and attribution is None and not entry.get("attribution_error"):
        return None
    return {
        "rows": attribution_rows(attribution),
        "violation_rate": _number(metamorphic.get("violation_rate")),
        "transforms": [str(name) for name in metamorphic.get("transforms") or []],
        "followups": metamorphic.get("followups"),
        "tiny_image_ranges": bool(metamorphic.get("tiny_image_ranges")),
        "n_boot": (attribution or {}).get("n_boot"),
        "confidence": _number((attribution or {}).get("confidence")),
        "error": str(entry.get("attribution_error") or ""),
    }


def ranking_attribution_view(summary: dict | None) -> dict | None:
    """The metamorphic attribution of a ranking made with ``--metamorphic`` (``summary.json``'s
    ``metamorphic``), shaped as the Evaluation page's; None without follow-ups."""
    metamorphic = (summary or {}).get("metamorphic")
    if not isinstance(metamorphic, dict):
        return None
    return _attribution_view(
        {
            "metamorphic": metamorphic,
            "attribution": metamorphic.get("attribution"),
            "attribution_error": metamorphic.get("attribution_error"),
        }
    )


def _curves_view(prioritizers: dict, rows: list[dict]) -> list[dict] | None:
    """``evaluation_frames``' ``curves`` rows (prioritizer, inspected, found), checked; empty
    for a pool without faults (curves null); None for an evaluation.json written before
    curves were kept (no ``curve`` field), which the page draws from its budgets."""
    if not all("curve" in entry for entry in prioritizers.values()):
        return None
    return [
        {
            "prioritizer": row["prioritizer"],
            "inspected": _number(row["inspected"]),
            "found": _number(row["found"]),
        }
        for row in rows
    ]


def _faults_table(faults: list[dict]) -> list[dict]:
    """Faults found per prioritizer (rows) and budget (columns ``1%``, ``5%``, ...)."""
    table: dict[str, dict] = {}
    for row in faults:
        line = table.setdefault(row["prioritizer"], {"prioritizer": row["prioritizer"]})
        line[f"{_number(row['budget']):g}%"] = _number(row["found"])
    return list(table.values())


def _evaluation_view(evaluation: dict, run_id: str) -> dict:
    if not isinstance(evaluation, dict):
        raise _Malformed("it is not a JSON object")
    frames = evaluation_frames(evaluation)
    baseline = _number(evaluation["baseline_accuracy"])
    prioritizers = evaluation["prioritizers"]
    if not prioritizers:
        raise _Malformed("it lists no prioritizer")
    names, value = best_by_apfd(prioritizers)
    retrain_rows = []
    for row in frames["retrain"]:
        low, high = _number(row["ci_low"]), _number(row["ci_high"])
        mean = _number(row["accuracy_mean"])
        retrain_rows.append(
            {
                "prioritizer": row["prioritizer"],
                "budget": _number(row["budget"]),
                "accuracy_mean": mean,
                "ci_low": low,
                "ci_high": high,
                "gain": mean - baseline,
                "gain_low": low - baseline,
                "gain_high": high - baseline,
            }
        )
    retraining = evaluation["retraining"]
    model, samples, pool = evaluation["model"], evaluation["samples"], evaluation["pool"]
    layers = evaluation.get("layers") or {}
    return {
        "run_id": run_id,
        "model": {key: str(model.get(key, "")) for key in ("name", "framework", "format")}
        | {"classes": int(model["classes"])},
        "samples": {part: int(samples[part]) for part in ("pool", "train", "test")},
        "test_split": str(evaluation.get("test_split") or ""),
        "misclassified": int(pool["misclassified"]),
        "pool_accuracy": _number(pool["accuracy"]),
        "baseline_accuracy": baseline,
        "budgets": [_number(budget) for budget in evaluation["budgets"]],
        "seeds": len(evaluation["seeds"]),
        "retraining": {
            "method": str(retraining["method"]),
            "description": str(retraining["description"]),
            "epochs": int(retraining["epochs"]),
            "batch_size": retraining.get("batch_size"),
            "learning_rate": retraining.get("learning_rate"),
            "interval": str(retraining.get("interval") or ""),
        },
        "prioritizers": [
            {
                "prioritizer": name,
                "description": str(entry.get("description") or ""),
                "apfd": _number((entry["apfd"] or {}).get("raw")),
                "apfd_normalized": _number((entry["apfd"] or {}).get("normalized")),
                "seconds": _number(entry.get("order_seconds")),
            }
            for name, entry in prioritizers.items()
        ],
        "best": {"names": names, "apfd_normalized": value, "text": _best_text(names, value)},
        "apfd": [row for row in frames["apfd"] if row["apfd_normalized"] is not None],
        "faults": [
            {
                **row,
                "budget": _number(row["budget"]),
                "selected": int(entry["selected"]),
                "share": _number(row["share"]),
            }
            # evaluation_frames lists the faults in this order; it leaves out "selected".
            for row, entry in zip(
                frames["faults"],
                [entry for item in prioritizers.values() for entry in item["faults"]],
                strict=True,
            )
        ],
        "curves": _curves_view(prioritizers, frames["curves"]),
        "curve_references": [
            {
                "order": str(row["order"]),
                "inspected": _number(row["inspected"]),
                "found": _number(row["found"]),
            }
            for row in frames["curve_references"]
        ],
        "faults_table": _faults_table(frames["faults"]),
        "retrain": retrain_rows,
        "winners": [
            {
                "budget": _number(row["budget"]),
                "by_accuracy": str(row["by_accuracy"]),
                "accuracy_mean": _number(row["accuracy_mean"]),
                "by_faults": str(row["by_faults"]),
                "found": _number(row["found"]),
            }
            for row in frames["winners"]
        ],
        "attribution": _attribution_view(prioritizers["instability"])
        if "instability" in prioritizers
        else None,
        "layers": {
            "coverage": [str(name) for name in layers.get("coverage") or []],
            "surprise": str(layers.get("surprise") or ""),
            "chosen": str(layers.get("chosen") or ""),
        }
        if layers
        else None,
        "timings": {str(k): _number(v) for k, v in (evaluation.get("timings") or {}).items()},
    }


def _shape_problem(exc: Exception) -> str:
    if isinstance(exc, KeyError):
        return f"it has no {exc.args[0]!r}"
    if isinstance(exc, _Malformed):
        return str(exc)
    return "a field holds a value of the wrong kind"


def evaluation_view(evaluation: Any, run_id: str) -> dict:
    """Everything the Evaluation page shows of an ``evaluation.json`` (its parsed content):
    facts, the per-prioritizer table, chart rows (fault-detection curves with their random
    and ideal references, faults per budget, retraining gain with its interval, normalized
    APFD), the faults found per budget, winners per budget, the instability attribution.

    ``curves`` is None for a file written before evaluations kept curves: the page then
    draws the faults at the budgets instead.

    A file that is not the shape ``testprio evaluate`` writes raises one TestprioError
    sentence, so that the page shows that sentence instead of half a page.
    """
    try:
        return _evaluation_view(evaluation, run_id)
    except _SHAPE_ERRORS as exc:
        raise TestprioError(
            f"evaluation.json of run {run_id} is not an evaluation testprio wrote "
            f"({_shape_problem(exc)}); it was changed after `testprio evaluate` wrote it: "
            "evaluate again under a new --run-id."
        ) from None


def load_evaluation(layout: RunLayout) -> dict:
    """The ``evaluation_view`` of the run at ``layout`` (read through ``run_file``)."""
    uri = run_file(layout, evaluation_uri(layout))
    if not storage.exists(uri):
        raise TestprioError(
            f"run {layout.run_id} holds no evaluation.json; it is not a finished "
            "`testprio evaluate` run."
        )
    try:
        evaluation = storage.read_json(uri)
    except ValueError:
        raise TestprioError(
            f"evaluation.json of run {layout.run_id} is not JSON; it was cut short or changed "
            "after `testprio evaluate` wrote it: evaluate again under a new --run-id."
        ) from None
    return evaluation_view(evaluation, layout.run_id)


def prioritizer_apfd_rows(summary: dict | None) -> list[dict]:
    """The per-prioritizer APFD table of a ranking run's ``summary.json`` (``prioritizers``:
    every prioritizer the run's scores allow, APFD over the labelled samples), if it has one."""
    table = (summary or {}).get("prioritizers")
    if not isinstance(table, dict):
        return []
    rows = []
    for name, entry in table.items():
        apfd = (entry or {}).get("apfd") or {}
        rows.append(
            {
                "prioritizer": str(name),
                "order": str((entry or {}).get("order") or ""),
                "ranking": "✓" if name == summary.get("prioritizer", summary.get("metric")) else "",
                "apfd": _number(apfd.get("raw")),
                "apfd_normalized": _number(apfd.get("normalized")),
            }
        )
    return rows
