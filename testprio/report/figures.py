"""One run's figures for the Run page and report.html: model facts, the pool's facts and
value statistics, the stages timeline and the score figures of ``summary.json``.

Each reads what its view needs and no more: JSON records, the ranking's ``label`` column,
or the data shards a row group at a time.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow.compute as pc

from testprio import storage
from testprio.ingest.shards import shard_tensors
from testprio.layout import RunLayout
from testprio.report.paths import run_file, shard_file
from testprio.report.run import RunDetails, class_label, class_names
from testprio.report.text import as_text, format_bytes

STATS_ROWS_WITHOUT_REPORT = 20_000
TIMELINE_MAX_SHARDS = 50  # above this many scored shards the timeline draws one score bar


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
            rows.append({"check": f"{key}: {name}", "result": as_text(result)})
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
        "facts": [{"fact": name, "value": as_text(value)} for name, value in facts],
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
