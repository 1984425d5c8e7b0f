"""Rank: every shard's scores -> one global ``ranking.parquet`` and ``summary.json``.

The ranking is sorted by the chosen metric, most uncertain first, ties broken by
``sample_id`` ascending, so it does not depend on how the pool was sharded. Only the columns
the ranking needs are read (never the per-sample probabilities).

Memory: the stage first reads only ``sample_id`` and the metric of every shard and sorts
one uint64 key per row; then it reads the other ranking columns into one flat array each
and writes ``ranking.parquet`` one row group at a time, gathering each group's rows through
the sorted order. It never holds the scores twice (about 37 bytes per sample plus a 4-byte
order; 10M samples rank in under 600 MiB).

Optional prioritizer columns (coverage, surprise, instability; see ``testprio.score``) are
carried into the ranking when the shards have them, and any of them can order it
(``testprio.prioritizers``): a score column descending as above, or a coverage-additive
(CAM) order over the covered cells of ``{run}/cells/`` gathered into one memory-mapped
file (``testprio.coverage.cam_order``). With labels, ``summary.json`` has the APFD of every
computed prioritizer (``prioritizers``); with metamorphic follow-ups, their causal
attribution over the whole pool (``metamorphic``).
"""

from __future__ import annotations

import os
import tempfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from testprio import prioritizers, storage
from testprio.errors import TestprioError
from testprio.layout import RunLayout
from testprio.log import get_logger
from testprio.metrics import METRICS
from testprio.summary import apfd, build_summary, score_spread

log = get_logger("rank")

RANK_COLUMNS = ["sample_id", "predicted", "confidence", *METRICS, "label"]
RANKING_ROW_GROUP = 65_536
SUMMARY_COLUMNS = ["predicted", *METRICS, "label"]
# The ranking columns' types in a scores file, for a ranking of no shards at all.
EMPTY_SCORES_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.int64()),
        pa.field("predicted", pa.int32()),
        *(pa.field(name, pa.float32()) for name in ["confidence", *METRICS]),
        pa.field("label", pa.int32()),
    ]
)
# Labels are class indices (ingest refuses negative ones), so -1 can stand for "unknown" in
# a plain int32 array: no separate validity mask to hold and gather.
UNKNOWN_LABEL = -1


def _sortable_descending(values: np.ndarray) -> np.ndarray:
    """uint32 keys whose ascending order is ``values``' descending order (float32, no NaN)."""
    bits = (values.astype(np.float32) + np.float32(0.0)).view(np.uint32)  # -0.0 -> +0.0
    # IEEE 754 floats sort like their bits once negatives are flipped whole and positives
    # get the sign bit set; inverting the result turns ascending into descending.
    ascending = np.where(bits & np.uint32(0x80000000), ~bits, bits | np.uint32(0x80000000))
    return ~ascending


def _sort_keys(values: np.ndarray, first_row: int) -> np.ndarray:
    """One uint64 per row: metric bits (descending) high, row index ``first_row + i`` low."""
    rows = np.arange(first_row, first_row + len(values), dtype=np.uint64)
    return (_sortable_descending(values).astype(np.uint64) << np.uint64(32)) | rows


def _order_of_keys(keys: np.ndarray) -> np.ndarray:
    """Sort ``keys`` in place and return the row indices they end with, as uint32."""
    keys.sort()
    keys &= np.uint64(0xFFFFFFFF)
    return keys.astype(np.uint32)


def _ids_ascend(sample_ids: np.ndarray) -> bool:
    return len(sample_ids) < 2 or bool((np.diff(sample_ids) > 0).all())


def ranking_order(values: np.ndarray, sample_ids: np.ndarray) -> np.ndarray:
    """Row indices ordering ``values`` descending, ties by ``sample_id`` ascending.

    Fast path: rows already in ascending ``sample_id`` order (scores shards concatenated in
    shard order are) sort as one uint64 key, metric bits high and row index low.
    """
    if len(values) < 2**32 and _ids_ascend(sample_ids):
        return _order_of_keys(_sort_keys(values, 0)).astype(np.int64)
    return np.lexsort((sample_ids, -values.astype(np.float64)))


def rank_table(tables: list[pa.Table], metric: str) -> pa.Table:
    """Concatenate score tables and order them; adds ``rank`` (int64, from 1) in front.

    The whole ranking in memory, for small tables; ``rank`` streams the same result.
    ``metric``: a class-probability metric or a score column of the tables.
    """
    if metric not in METRICS and not (tables and metric in tables[0].column_names):
        prioritizers.lookup(metric)  # an unknown name: its sentence
    table = (
        pa.concat_tables(tables)
        if tables
        else pa.table({name: pa.array([], pa.float32()) for name in RANK_COLUMNS})
    )
    order = ranking_order(table.column(metric).to_numpy(), table.column("sample_id").to_numpy())
    ranked = table.take(order)
    ranks = pa.array(np.arange(1, ranked.num_rows + 1, dtype=np.int64))
    return ranked.add_column(0, "rank", ranks)


def _column_values(table: pa.Table, name: str) -> np.ndarray:
    column = table.column(name)
    if name == "label":
        column = pc.fill_null(column, UNKNOWN_LABEL)
    return column.to_numpy()


def _sort_shards(
    score_uris: list[str], metric: str
) -> tuple[pa.Schema, list[int], dict, np.ndarray]:
    """Read ``sample_id`` and ``metric`` of every shard; return the ranking order.

    Returns the shards' schema, their row counts, ``{"sample_id": ..., metric: ...}`` (all
    shards, in shard order) and the order (uint32 row indices when the ids ascend across the
    shards, as scores shards in shard order do; int64 otherwise).
    """
    ids, values, counts = [], [], []
    schema = EMPTY_SCORES_SCHEMA
    for uri in score_uris:
        with storage.open_parquet(uri) as parquet:
            schema = parquet.schema_arrow
            table = parquet.read(columns=["sample_id", metric])
        ids.append(table.column("sample_id").to_numpy())
        values.append(table.column(metric).to_numpy())
        counts.append(table.num_rows)
        del table
    sample_ids = np.concatenate(ids) if ids else np.empty(0, np.int64)
    del ids
    metric_values = np.concatenate(values) if values else np.empty(0, np.float32)
    del values
    pa.default_memory_pool().release_unused()  # the shards' Arrow buffers, back to the OS
    n = len(sample_ids)
    if n < 2**32 and _ids_ascend(sample_ids):
        # Keys built a shard at a time: their temporaries stay the size of one shard.
        keys = np.empty(n, np.uint64)
        start = 0
        for count in counts:
            keys[start : start + count] = _sort_keys(metric_values[start : start + count], start)
            start += count
        order = _order_of_keys(keys)
        del keys
    else:
        order = np.lexsort((sample_ids, -metric_values.astype(np.float64)))
    if n and 0 <= sample_ids.min() and sample_ids.max() < 2**32:
        # Held until the ranking is written: half the memory as uint32; written as int64.
        sample_ids = sample_ids.astype(np.uint32)
    return schema, counts, {"sample_id": sample_ids, metric: metric_values}, order


def _read_other_columns(
    score_uris: list[str], counts: list[int], names: list[str], schema: pa.Schema
) -> dict[str, np.ndarray]:
    """``names`` of every shard, each column in one preallocated array (no concatenation)."""
    n = sum(counts)
    columns = {
        name: np.empty(
            n, np.int32 if name == "label" else schema.field(name).type.to_pandas_dtype()
        )
        for name in names
    }
    start = 0
    for uri, count in zip(score_uris, counts, strict=True):
        with storage.open_parquet(uri) as parquet:
            table = parquet.read(columns=names)
        if table.num_rows != count:
            raise TestprioError(
                f"scores file {uri} changed while it was ranked; rerun the rank task."
            )
        for name in names:
            columns[name][start : start + count] = _column_values(table, name)
        start += count
        del table
    pa.default_memory_pool().release_unused()
    return columns


def _gather(values: np.ndarray, rows: np.ndarray, dtype=None) -> np.ndarray:
    """``values[rows]`` (as ``dtype``) a row group at a time: a uint32 index is cast to intp
    per piece, not whole."""
    out = np.empty(len(rows), dtype or values.dtype)
    for start in range(0, len(rows), RANKING_ROW_GROUP):
        out[start : start + RANKING_ROW_GROUP] = values[rows[start : start + RANKING_ROW_GROUP]]
    return out


def _ranking_batch(
    columns: dict[str, np.ndarray],
    rows: np.ndarray,
    first_rank: int,
    schema: pa.Schema,
    names: list[str],
) -> pa.RecordBatch:
    rows = rows.astype(np.intp)  # once, not once per column
    arrays = [pa.array(np.arange(first_rank, first_rank + len(rows), dtype=np.int64))]
    for name in names:
        values = columns[name][rows]
        mask = values == UNKNOWN_LABEL if name == "label" else None
        arrays.append(pa.array(values, schema.field(name).type, mask=mask))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _write_ranking(
    uri: str,
    columns: dict[str, np.ndarray],
    order: np.ndarray,
    schema: pa.Schema,
    top_k: int,
    names: list[str] = RANK_COLUMNS,
) -> list[dict]:
    """Write the ranking a row group at a time; return its first ``top_k`` rows.

    A writer thread encodes one row group while the next is gathered (both release the
    GIL), so writing overlaps gathering on a second core.
    """
    top: list[dict] = []
    with (
        storage.parquet_writer(uri, schema, use_dictionary=False) as writer,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="testprio-rank-writer") as pool,
    ):
        written = None
        for start in range(0, len(order), RANKING_ROW_GROUP):
            batch = _ranking_batch(
                columns, order[start : start + RANKING_ROW_GROUP], start + 1, schema, names
            )
            if written is not None:
                written.result()  # one row group in flight: memory stays one group
            written = pool.submit(writer.write_batch, batch)
            if len(top) < top_k:
                top.extend(batch.slice(0, top_k - len(top)).to_pylist())
        if written is not None:
            written.result()
    pa.default_memory_pool().release_unused()
    return top


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


def cells_uri(layout: RunLayout, score_uri: str) -> str:
    return storage.join(layout.uri, "cells", os.path.basename(score_uri))


def _positions(sample_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Rows (in shard order) of ``ids``; ``sample_ids`` are unique."""
    if _ids_ascend(sample_ids):
        return np.searchsorted(sample_ids, ids).astype(np.int64)
    by_id = np.argsort(sample_ids, kind="stable")
    return by_id[np.searchsorted(sample_ids, ids, sorter=by_id)].astype(np.int64)


def cam_rows(
    layout: RunLayout,
    score_uris: list[str],
    column: str,
    scores: np.ndarray,
    sample_ids: np.ndarray,
) -> np.ndarray:
    """Rows (shard order) in the coverage-additive order of ``column``'s covered cells.

    The shards' packed cells are copied one after another into a temporary local file that
    ``coverage.cam_order`` reads through a memory map: RAM stays about the packed cells'
    size (its cell-major copy), not a dense ``(N, cells)`` matrix.
    """
    from testprio import coverage

    n_cells, width, written = None, 0, 0
    with tempfile.TemporaryDirectory(prefix="testprio-cam-") as folder:
        path = os.path.join(folder, f"{column}.bits")
        with open(path, "wb") as out:
            for uri in score_uris:
                with storage.open_parquet(cells_uri(layout, uri)) as parquet:
                    metadata = parquet.schema_arrow.metadata or {}
                    n_cells = int(metadata[f"testprio.cells.{column}".encode()])
                    width = parquet.schema_arrow.field(column).type.byte_width
                    for batch in parquet.iter_batches(columns=[column]):
                        values = batch.column(0)
                        data = values.buffers()[1]
                        start = values.offset * width
                        out.write(memoryview(data)[start : start + len(values) * width])
                        written += len(values)
        if written != len(sample_ids):
            raise TestprioError(
                f"the covered cells in {storage.join(layout.uri, 'cells')} hold {written} "
                f"samples but the scores {len(sample_ids)}; rerun the score tasks of this run."
            )
        if not written:
            return np.empty(0, np.int64)
        packed = np.memmap(path, dtype=np.uint8, mode="r", shape=(written, width))
        ids = coverage.cam_order(
            packed, np.asarray(scores), np.asarray(sample_ids, np.int64), n_cells=n_cells
        )
        del packed
    return _positions(np.asarray(sample_ids), ids)


def _order_by(
    layout: RunLayout,
    score_uris: list[str],
    name: str,
    columns: dict[str, np.ndarray],
) -> np.ndarray:
    """Rows in the order of prioritizer ``name`` (its column already in ``columns``)."""
    found = prioritizers.NAMES[name]
    if found.order == "cam":
        return cam_rows(
            layout, score_uris, found.column, columns[found.column], columns["sample_id"]
        )
    return ranking_order(columns[found.column], columns["sample_id"])


def prioritizer_apfd(
    layout: RunLayout,
    score_uris: list[str],
    columns: dict[str, np.ndarray],
    available: list[str],
    ordered: dict[tuple[str, str], np.ndarray] | None = None,
) -> dict | None:
    """``{name: {"column", "order", "apfd"}}`` for every prioritizer the scores allow (not
    aliases), APFD over the labelled samples; None without labels. ``columns`` in shard order;
    ``ordered`` maps (column, order kind) to rows already ordered (the ranking's own order), which
    are not computed again."""
    label = columns["label"]
    known = label >= 0
    if not known.any():
        return None
    wrong = known & (label != columns["predicted"])
    figures = {}
    for name, found in prioritizers.NAMES.items():
        if name in prioritizers.ALIASES or found.column not in available:
            continue
        order = (ordered or {}).get((found.column, found.order))
        if order is None:
            order = _order_by(layout, score_uris, name, columns)
        figures[name] = {
            "column": found.column,
            "order": found.order,
            "apfd": apfd(wrong[order][known[order]]),
            **score_spread(columns[found.column]),
        }
    return figures


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
    layout: RunLayout, score_uris: list[str], *, metric: str = "gini", top_k: int = 10
) -> dict:
    """Write ``ranking.parquet`` and ``summary.json``; return the summary."""
    prioritizers.lookup(metric)
    if top_k < 0:
        raise TestprioError(f"--top-k {top_k} must be zero or a positive number of samples.")
    score_uris = sorted(score_uris)
    manifest = _check_complete(layout, score_uris)
    available = optional_columns(_shards_schema(score_uris))
    chosen = prioritizers.check_available(metric, families=_families_of(available))
    if chosen.column not in (*METRICS, *available):
        raise TestprioError(
            f"--metric {metric} is not computed in this run; "
            f"{prioritizers.ENABLED_BY[chosen.family]} to compute it."
        )
    rank_columns = ["sample_id", "predicted", "confidence", *METRICS, *available, "label"]
    shard_schema, counts, columns, order = _sort_shards(score_uris, chosen.column)
    others = [name for name in rank_columns if name not in columns]
    columns.update(_read_other_columns(score_uris, counts, others, shard_schema))
    if chosen.order == "cam":
        order = _order_by(layout, score_uris, metric, columns)
    schema = pa.schema(
        [pa.field("rank", pa.int64()), *(shard_schema.field(name) for name in rank_columns)],
        metadata=shard_schema.metadata,
    )
    log.info("rank: %s samples ranked by %s", f"{len(order):,}", metric)
    top = _write_ranking(layout.ranking, columns, order, schema, top_k, rank_columns)
    compared = prioritizer_apfd(
        layout,
        score_uris,
        columns,
        [*METRICS, *available],
        ordered={(chosen.column, chosen.order): order},
    )
    # The summary wants its columns in ranking order: permute them one at a time, after
    # dropping the ones it does not use, so at most one extra column is held.
    summary_columns = [*SUMMARY_COLUMNS, *([chosen.column] if chosen.column in available else [])]
    for name in rank_columns:
        values = columns.pop(name)
        if name in summary_columns:
            # Classes as intp: the summary's bincounts by class then copy no index array.
            columns[name] = _gather(values, order, np.intp if name == "predicted" else None)
        del values
    del order
    summary = build_summary(
        columns,
        metric=chosen.column,
        num_classes=_num_classes(score_uris),
        samples_in=manifest["samples"],
        quarantined=manifest["quarantined"],
        top=top,
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
