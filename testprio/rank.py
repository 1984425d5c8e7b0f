"""Rank: every shard's scores -> one global ``ranking.parquet`` and ``summary.json``.

The ranking is sorted by the chosen metric, most uncertain first, ties broken by
``sample_id`` ascending, so it does not depend on how the pool was sharded. Only the columns
the ranking needs are read (never the per-sample probabilities).
"""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from testprio import storage
from testprio.errors import TestprioError
from testprio.layout import RunLayout
from testprio.log import get_logger
from testprio.metrics import METRICS, check_metric
from testprio.summary import build_summary

log = get_logger("rank")

RANK_COLUMNS = ["sample_id", "predicted", "confidence", *METRICS, "label"]
RANKING_ROW_GROUP = 65_536


def _sortable_descending(values: np.ndarray) -> np.ndarray:
    """uint32 keys whose ascending order is ``values``' descending order (float32, no NaN)."""
    bits = (values.astype(np.float32) + np.float32(0.0)).view(np.uint32)  # -0.0 -> +0.0
    # IEEE 754 floats sort like their bits once negatives are flipped whole and positives
    # get the sign bit set; inverting the result turns ascending into descending.
    ascending = np.where(bits & np.uint32(0x80000000), ~bits, bits | np.uint32(0x80000000))
    return ~ascending


def ranking_order(values: np.ndarray, sample_ids: np.ndarray) -> np.ndarray:
    """Row indices ordering ``values`` descending, ties by ``sample_id`` ascending.

    Fast path: rows already in ascending ``sample_id`` order (scores shards concatenated in
    shard order are) sort as one uint64 key, metric bits high and row index low.
    """
    n = len(values)
    if n < 2**32 and (n < 2 or bool((np.diff(sample_ids) > 0).all())):
        keys = (_sortable_descending(values).astype(np.uint64) << np.uint64(32)) | np.arange(
            n, dtype=np.uint64
        )
        keys.sort()
        return (keys & np.uint64(0xFFFFFFFF)).astype(np.int64)
    return np.lexsort((sample_ids, -values.astype(np.float64)))


def rank_table(tables: list[pa.Table], metric: str) -> pa.Table:
    """Concatenate score tables and order them; adds ``rank`` (int64, from 1) in front."""
    check_metric(metric)
    table = (
        pa.concat_tables(tables)
        if tables
        else pa.table({name: pa.array([], pa.float32()) for name in RANK_COLUMNS})
    )
    order = ranking_order(table.column(metric).to_numpy(), table.column("sample_id").to_numpy())
    ranked = table.take(order)
    ranks = pa.array(np.arange(1, ranked.num_rows + 1, dtype=np.int64))
    return ranked.add_column(0, "rank", ranks)


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


def rank(
    layout: RunLayout, score_uris: list[str], *, metric: str = "gini", top_k: int = 10
) -> dict:
    """Write ``ranking.parquet`` and ``summary.json``; return the summary."""
    check_metric(metric)
    if top_k < 0:
        raise TestprioError(f"--top-k {top_k} must be zero or a positive number of samples.")
    score_uris = sorted(score_uris)
    manifest = _check_complete(layout, score_uris)
    tables = [storage.read_table(uri, columns=RANK_COLUMNS) for uri in score_uris]
    ranked = rank_table(tables, metric)
    log.info("rank: %s samples ranked by %s", f"{ranked.num_rows:,}", metric)
    storage.write_table(
        layout.ranking, ranked, row_group_size=RANKING_ROW_GROUP, use_dictionary=False
    )
    columns = {name: ranked.column(name).to_numpy() for name in ["predicted", *METRICS]}
    columns["label"] = pc.fill_null(ranked.column("label"), -1).to_numpy()
    top = ranked.slice(0, top_k).to_pylist()
    summary = build_summary(
        columns,
        metric=metric,
        num_classes=_num_classes(score_uris),
        samples_in=manifest["samples"],
        quarantined=manifest["quarantined"],
        top=top,
    )
    # What ingest set aside or flagged, and the class names of an image folder's subfolders.
    summary["counts"].update(
        duplicates=manifest.get("duplicates", 0),
        quarantine_kinds=manifest.get("quarantine_kinds", {}),
    )
    if manifest.get("class_names"):
        summary["class_names"] = manifest["class_names"]
    storage.write_json(layout.summary, summary)
    return summary
