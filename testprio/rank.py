"""Rank: every shard's scores -> one global ``ranking.parquet`` and ``summary.json``.

The ranking is sorted by the chosen prioritizer, most worth labelling first. A score column
(every class metric, coverage CTM, surprise, instability) orders the pool descending, ties
broken by ``sample_id`` ascending, so it does not depend on how the pool was sharded: that
sort runs out of core in ``testprio.rank_bounded``, in at most ``--rank-memory-mb`` of
memory (default 512 MiB) whatever the pool's size, with local scratch space of about 50
bytes per sample. A coverage-additive (CAM) order is a set-cover problem over the covered
cells of the whole pool and stays in memory (``testprio.rank_memory``); the stage says so up
front when that would pass the memory setting. Only the columns the ranking needs are read
(never the per-sample probabilities).

Optional prioritizer columns (coverage, surprise, instability; see ``testprio.score``) are
carried into the ranking when the shards have them. With labels, ``summary.json`` has the
APFD and score spread of every computed prioritizer (``prioritizers``); with metamorphic
follow-ups, their causal attribution over the whole pool (``metamorphic``).
"""

from __future__ import annotations

import math
import os

import numpy as np
import pyarrow as pa

from testprio import prioritizers, storage
from testprio.errors import TestprioError
from testprio.layout import RunLayout
from testprio.log import get_logger
from testprio.metrics import METRICS
from testprio.rank_bounded import rank_bounded
from testprio.rank_memory import cells_uri, rank_in_memory, shard_rows
from testprio.ranking_file import EMPTY_SCORES_SCHEMA

log = get_logger("rank")

DEFAULT_MEMORY_MB = 512
# The stage's process holds about 150 MiB before it sorts anything (Python, NumPy, Arrow,
# DuckDB); below this the sort would have almost nothing left.
MINIMUM_MEMORY_MB = 256


def check_memory(memory_mb: int) -> int:
    """``--rank-memory-mb``, refused with one sentence when too small to rank in."""
    if int(memory_mb) < MINIMUM_MEMORY_MB:
        raise TestprioError(
            f"--rank-memory-mb {memory_mb} is too little for the rank stage; give at least "
            f"{MINIMUM_MEMORY_MB} (MiB): the process itself holds about 150 MiB."
        )
    return int(memory_mb)


def _num_classes(score_uris: list[str]) -> int:
    for uri in score_uris:
        with storage.open_parquet(uri) as parquet:
            if parquet.metadata.num_rows:
                first = parquet.read_row_group(0, columns=["probs"]).column("probs")
                return len(first[0])
    return 0


def _check_complete(layout: RunLayout, score_uris: list[str]) -> dict:
    manifest = storage.read_json(layout.data_manifest)
    expected = {shard["name"] for shard in manifest["shards"]}
    given = {os.path.basename(uri) for uri in score_uris}
    missing = sorted(expected - given) + sorted(
        name for name in given if not storage.exists(storage.join(layout.scores_dir, name))
    )
    if missing:
        raise TestprioError(
            f"scores are missing for {len(missing)} shard(s) ({', '.join(missing[:5])}); "
            "rerun the score tasks of this run."
        )
    return manifest


def optional_columns(schema: pa.Schema) -> list[str]:
    """The optional prioritizer columns a scores schema holds (``prioritizers.OPTIONAL_COLUMNS``
    order)."""
    return [name for name in prioritizers.OPTIONAL_COLUMNS if name in schema.names]


def _shards_schema(score_uris: list[str]) -> pa.Schema:
    for uri in score_uris:
        with storage.open_parquet(uri) as parquet:
            return parquet.schema_arrow
    return EMPTY_SCORES_SCHEMA


def _families_of(columns: list[str]) -> set[str]:
    return {prioritizers.NAMES[name].family for name in columns if name in prioritizers.NAMES}


def _cells_of(layout: RunLayout, score_uri: str, column: str) -> int:
    with storage.open_parquet(cells_uri(layout, score_uri)) as parquet:
        metadata = parquet.schema_arrow.metadata or {}
    return int(metadata.get(f"testprio.cells.{column}".encode(), 0))


def cam_memory_note(
    layout: RunLayout,
    score_uris: list[str],
    *,
    metric: str,
    available: list[str],
    has_labels: bool,
    samples: int,
    memory_mb: int,
) -> str | None:
    """One sentence when a CAM order this rank computes (the ranking's own, or with labels
    every CAM prioritizer's for its APFD) needs more than ``memory_mb``: its packed covered
    cells, samples x cells / 8 bytes; None otherwise."""
    chosen = prioritizers.NAMES[metric]
    columns = [chosen.column] if chosen.order == "cam" else []
    if has_labels:
        columns += [c for c in prioritizers.COVERAGE_COLUMNS if c in available and c not in columns]
    if not columns or not score_uris or not samples:
        return None
    need = {c: samples * math.ceil(_cells_of(layout, score_uris[0], c) / 8) for c in columns}
    worst = max(need, key=need.get)
    if need[worst] <= memory_mb * 2**20:
        return None
    what = f"--metric {metric}" if chosen.order == "cam" else "the APFD of the CAM prioritizers"
    cells = _cells_of(layout, score_uris[0], worst)
    return (
        f"{what} orders the whole pool as one set-cover problem in memory, and "
        f"{samples:,} samples x {cells:,} covered cells of {worst} need about "
        f"{need[worst] / 2**30:.1f} GiB, more than --rank-memory-mb {memory_mb}: give the "
        f"rank task that much memory, or rank by {worst}-ctm, which orders by the same cells "
        "in bounded memory."
    )


def metamorphic_summary(layout: RunLayout, score_uris: list[str]) -> dict | None:
    """Attribution of the metamorphic follow-ups of the whole pool (``{run}/metamorphic/``)."""
    from testprio import metamorphic

    uris = [storage.join(layout.uri, "metamorphic", os.path.basename(u)) for u in score_uris]
    tables = [storage.read_table(uri) for uri in uris if storage.exists(uri)]
    if len(tables) != len(uris):
        raise TestprioError(
            f"metamorphic follow-ups are missing for {len(uris) - len(tables)} shard(s); rerun "
            "the score tasks of this run."
        )
    table = pa.concat_tables(tables)
    design = {name: table.column(name).to_numpy() for name in table.column_names}
    transforms = [name for name in metamorphic.TRANSFORMS if name in design]
    figures: dict = {
        "transforms": transforms,
        "followups": int(table.num_rows // max(1, len(np.unique(design["sample_id"])))),
        "rows": table.num_rows,
        "violation_rate": float(design["violated"].mean()) if table.num_rows else None,
    }
    try:
        figures["attribution"] = metamorphic.attribution(design, seed=0, n_boot=200)
    except TestprioError as exc:  # e.g. too few follow-ups: the ranking still stands
        figures.update(attribution=None, attribution_error=str(exc))
    return figures


def rank(
    layout: RunLayout,
    score_uris: list[str],
    *,
    metric: str = "gini",
    top_k: int = 10,
    memory_mb: int = DEFAULT_MEMORY_MB,
) -> dict:
    """Write ``ranking.parquet`` and ``summary.json``; return the summary.

    ``memory_mb``: the stage's memory (MiB) for a score order, whatever the pool's size.
    """
    prioritizers.lookup(metric)
    if top_k < 0:
        raise TestprioError(f"--top-k {top_k} must be zero or a positive number of samples.")
    memory_mb = check_memory(memory_mb)
    score_uris = sorted(score_uris)
    manifest = _check_complete(layout, score_uris)
    shard_schema = _shards_schema(score_uris)
    available = optional_columns(shard_schema)
    chosen = prioritizers.check_available(metric, families=_families_of(available))
    if chosen.column not in (*METRICS, *available):
        raise TestprioError(
            f"--metric {metric} is not computed in this run; "
            f"{prioritizers.ENABLED_BY[chosen.family]} to compute it."
        )
    samples = sum(shard_rows(score_uris))
    note = cam_memory_note(
        layout,
        score_uris,
        metric=metric,
        available=available,
        has_labels=bool(manifest.get("has_labels", True)),
        samples=samples,
        memory_mb=memory_mb,
    )
    if note:
        log.warning("rank: %s", note)
    names = ["sample_id", "predicted", "confidence", *METRICS, *available, "label"]
    log.info("rank: %s samples ranked by %s", f"{samples:,}", metric)
    how = rank_in_memory if chosen.order == "cam" else rank_bounded
    summary, compared = how(
        layout,
        score_uris,
        metric=metric,
        names=names,
        available=available,
        shard_schema=shard_schema,
        top_k=top_k,
        num_classes=_num_classes(score_uris),
        manifest=manifest,
        **({} if chosen.order == "cam" else {"memory_mb": memory_mb, "samples": samples}),
    )
    # ``metric`` names the ranking column (what the report reads); ``prioritizer`` the
    # order (e.g. kmnc-cam orders by kmnc's covered cells).
    summary["prioritizer"] = metric
    summary["order"] = chosen.order
    summary["prioritizers_computed"] = [
        name for name, found in prioritizers.NAMES.items() if found.column in (*METRICS, *available)
    ]
    if compared is not None:
        summary["prioritizers"] = compared
    if prioritizers.INSTABILITY in available:
        summary["metamorphic"] = metamorphic_summary(layout, score_uris)
    # What ingest set aside or flagged, and the class names of an image folder's subfolders.
    summary["counts"].update(
        duplicates=manifest.get("duplicates", 0),
        quarantine_kinds=manifest.get("quarantine_kinds", {}),
    )
    if manifest.get("class_names"):
        summary["class_names"] = manifest["class_names"]
    storage.write_json(layout.summary, summary)
    return summary
