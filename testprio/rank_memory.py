"""The ranking held in memory: every column of the pool in one array each.

The coverage-additive (CAM) orders are global set-cover problems over the covered cells of
the whole pool (``testprio.coverage.cam_order``), so a ranking in such an order, and the APFD
of every CAM prioritizer, are computed here, with memory that grows with the pool (the
packed cells, ``cells x samples / 8`` bytes, and about 37 bytes per sample of columns).
``rank_table`` and ``ranking_order`` order small tables (tests, references); rankings by a
score column go through ``testprio.rank_bounded`` in bounded memory instead, with the same
order: the metric descending (as float32, -0.0 equal to 0.0), ties by ``sample_id``.

Memory: ``read_columns`` fills one preallocated array per column (no concatenation); the
ranking is written one row group at a time, gathering each group's rows through the order,
and the summary's columns are permuted one at a time.
"""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from testprio import prioritizers, ranking_file, scratch, storage
from testprio.errors import TestprioError
from testprio.layout import RunLayout
from testprio.metrics import METRICS
from testprio.ranking_file import RANK_COLUMNS, UNKNOWN_LABEL, RankingWriter
from testprio.summary import apfd, build_summary, score_spread

SUMMARY_COLUMNS = ["predicted", *METRICS, "label"]


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


def shard_rows(score_uris: list[str]) -> list[int]:
    """Rows of each scores shard, from its footer."""
    rows = []
    for uri in score_uris:
        with storage.open_parquet(uri) as parquet:
            rows.append(parquet.metadata.num_rows)
    return rows


def read_columns(score_uris: list[str], names: list[str], schema: pa.Schema) -> dict:
    """``names`` of every shard (shard order), each in one preallocated array (labels as
    int32 with ``UNKNOWN_LABEL``)."""
    counts = shard_rows(score_uris)
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
    group = ranking_file.RANKING_ROW_GROUP
    for start in range(0, len(rows), group):
        out[start : start + group] = values[rows[start : start + group]]
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
    names: list[str],
) -> list[dict]:
    """Write the ranking a row group at a time; return its first ``top_k`` rows."""
    group = ranking_file.RANKING_ROW_GROUP
    with RankingWriter(uri, schema, top_k) as writer:
        for start in range(0, len(order), group):
            writer.write(
                _ranking_batch(columns, order[start : start + group], start + 1, schema, names)
            )
    return writer.top


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
    with scratch.folder("cam") as folder:
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
    *,
    orders: tuple[str, ...] = ("score", "cam"),
) -> dict | None:
    """``{name: {"column", "order", "apfd", "degenerate", "distinct_values", "modal_share"}}``
    for every prioritizer the scores allow (not aliases) whose order kind is in ``orders``,
    APFD over the labelled samples; None without labels. ``columns`` in shard order;
    ``ordered`` maps (column, order kind) to rows already ordered (the ranking's own order),
    which are not computed again."""
    label = columns["label"]
    known = label >= 0
    if not known.any():
        return None
    wrong = known & (label != columns["predicted"])
    figures = {}
    for name, found in prioritizers.NAMES.items():
        if name in prioritizers.ALIASES or found.column not in available:
            continue
        if found.order not in orders:
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


def cam_figures(
    layout: RunLayout, score_uris: list[str], available: list[str], schema: pa.Schema
) -> dict | None:
    """``prioritizer_apfd`` of the CAM prioritizers alone, from the columns they read."""
    cam_columns = sorted(
        {found.column for found in prioritizers.NAMES.values() if found.order == "cam"}
        & set(available)
    )
    if not cam_columns:
        return {}
    names = ["sample_id", "predicted", "label", *cam_columns]
    columns = read_columns(score_uris, names, schema)
    return prioritizer_apfd(layout, score_uris, columns, available, orders=("cam",))


def rank_in_memory(
    layout: RunLayout,
    score_uris: list[str],
    *,
    metric: str,
    names: list[str],
    available: list[str],
    shard_schema: pa.Schema,
    top_k: int,
    num_classes: int,
    manifest: dict,
) -> tuple[dict, dict | None]:
    """Write ``ranking.parquet`` in the order of prioritizer ``metric`` with every column
    (``names``) in memory; return build_summary's figures and ``prioritizer_apfd``'s."""
    chosen = prioritizers.NAMES[metric]
    columns = read_columns(score_uris, names, shard_schema)
    order = _order_by(layout, score_uris, metric, columns)
    schema = ranking_file.ranking_schema(shard_schema, names)
    top = _write_ranking(layout.ranking, columns, order, schema, top_k, names)
    compared = prioritizer_apfd(
        layout, score_uris, columns, [*METRICS, *available], {(chosen.column, chosen.order): order}
    )
    # The summary wants its columns in ranking order: permute them one at a time, after
    # dropping the ones it does not use, so at most one extra column is held.
    summary_columns = [*SUMMARY_COLUMNS, *([chosen.column] if chosen.column in available else [])]
    for name in names:
        values = columns.pop(name)
        if name in summary_columns:
            # Classes as intp: the summary's bincounts by class then copy no index array.
            columns[name] = _gather(values, order, np.intp if name == "predicted" else None)
        del values
    del order
    summary = build_summary(
        columns,
        metric=chosen.column,
        num_classes=num_classes,
        samples_in=manifest["samples"],
        quarantined=manifest["quarantined"],
        top=top,
    )
    return summary, compared
