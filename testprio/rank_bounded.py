"""The ranking by a score column in memory bounded by ``--rank-memory-mb``, not by the pool.

DuckDB sorts out of core: the score shards stream in (read a row group batch at a time,
local or ``gs://`` alike, through ``testprio.storage``), DuckDB's ``ORDER BY`` spills what
does not fit its memory limit to a scratch folder, and the sorted rows stream out a ranking
row group at a time into ``ranking.parquet`` (on ``gs://``, uploaded as it is written) and
the summary (``SummaryStream``). The order is ``testprio.rank_memory``'s: the metric
descending as float32 (-0.0 equal to 0.0), ties by ``sample_id``; DuckDB sorts one uint32 key
made from the metric's bits, and carries float columns as their int32 bits, so every value
comes out bit for bit as it went in (a float payload would lose the sign of -0.0).

Everything else that needs the whole pool comes from counts or from DuckDB over a scratch
file of the columns the other score prioritizers need, written during the first pass: each
one's labelled rows sorted the same way give its APFD (the faults' positions among them,
summed), and a ``GROUP BY`` of its values its spread. CAM prioritizers stay in memory
(``rank_memory.cam_figures``).

Scratch: a ``testprio-rank-*`` folder in the local temp directory (``TMPDIR``), removed when
the stage ends, on success or failure; one a killed rank left is removed by the next stage
that makes a scratch folder on the host (``testprio.scratch``; a cluster pod's ephemeral
storage goes with the pod anyway). About 80 bytes per sample at its peak.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from testprio import prioritizers, ranking_file, scratch, storage
from testprio.errors import TestprioError
from testprio.layout import RunLayout
from testprio.log import Progress, get_logger
from testprio.metrics import METRICS
from testprio.rank_memory import _sortable_descending, cam_figures
from testprio.ranking_file import UNKNOWN_LABEL, RankingWriter, ranking_schema
from testprio.summary import SummaryStream, apfd_of_positions, spread_of_counts

log = get_logger("rank")

SORT_KEY = "testprio_sort_key"
# What the process itself uses while it ranks, beside DuckDB's own memory (a shard's batch
# being read and converted, the ranking row group being encoded, Arrow's pools): DuckDB's
# limit is the setting less this and the memory the process already holds when it starts.
WORKING_MB = 192
# DuckDB needs a few blocks per thread to merge its sorted runs.
DUCKDB_MINIMUM_MB = 64
MAX_THREADS = 4
# Rows read from a shard at a time.
READ_BATCH = 65_536
# The scratch file of the other prioritizers' columns: 0 = no label, 1 = right, 2 = fault.
UNLABELLED, RIGHT, FAULT = 0, 1, 2


def _resident_mb() -> float:
    """This process's resident memory now, in MiB (0 where /proc is missing)."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def duckdb_memory_mb(memory_mb: int) -> int:
    """DuckDB's memory limit within ``memory_mb`` for the whole process (MiB)."""
    return max(DUCKDB_MINIMUM_MB, int(memory_mb - _resident_mb() - WORKING_MB))


def _connect(memory_mb: int, folder: str):
    import duckdb

    limit = duckdb_memory_mb(memory_mb)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = max(1, min(MAX_THREADS, cores or 1))
    log.info("rank: sorting out of core in %s MiB (DuckDB, %s threads)", limit, threads)
    return duckdb.connect(
        config={
            "memory_limit": f"{limit}MiB",
            "temp_directory": os.path.join(folder, "duckdb"),
            "threads": threads,
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
        }
    )


def _is_float(kind: pa.DataType) -> bool:
    return pa.types.is_floating(kind)


def _bits(kind: pa.DataType) -> pa.DataType:
    """The integer type of the same width that carries a float column's bits."""
    return pa.int32() if kind.bit_width == 32 else pa.int64()


@dataclass
class _Pass:
    """The one read of every shard: sort batches for DuckDB, and what the pass counts."""

    score_uris: list[str]
    column: str  # the chosen score column
    names: list[str]  # the ranking's columns
    others: list[str]  # the other prioritizers' columns, for the scratch file
    shard_schema: pa.Schema
    others_path: str
    progress: Progress
    rows: int = 0
    finite: int = 0
    low: float = np.inf
    high: float = -np.inf
    done: bool = False
    error: BaseException | None = None
    _writer: pq.ParquetWriter | None = field(default=None, repr=False)

    @property
    def sort_schema(self) -> pa.Schema:
        fields = [pa.field(SORT_KEY, pa.uint32())]
        for name in self.names:
            kind = self.shard_schema.field(name).type
            fields.append(pa.field(name, _bits(kind) if _is_float(kind) else kind))
        return pa.schema(fields)

    @property
    def others_schema(self) -> pa.Schema:
        fields = [pa.field("sample_id", pa.int64()), pa.field("code", pa.int8())]
        fields += [self.shard_schema.field(name).with_nullable(False) for name in self.others]
        return pa.schema(fields)

    def reader(self) -> pa.RecordBatchReader:
        return pa.RecordBatchReader.from_batches(self.sort_schema, self._batches())

    def _batches(self) -> Iterator[pa.RecordBatch]:
        wanted = list(dict.fromkeys([*self.names, *self.others]))
        try:
            # Parquet, not Arrow IPC: DuckDB's own reader keeps it within its memory limit.
            with pq.ParquetWriter(
                self.others_path, self.others_schema, compression="none", use_dictionary=False
            ) as self._writer:
                for uri in self.score_uris:
                    with storage.open_parquet(uri) as parquet:
                        for batch in parquet.iter_batches(
                            batch_size=READ_BATCH, columns=wanted, use_threads=False
                        ):
                            yield self._sort_batch(batch)
                            self.progress.update(self.rows)
        except Exception as exc:  # DuckDB reports it as its own error: keep ours
            self.error = exc
            raise
        self.progress.update(self.rows, final=True)
        self.done = True

    def _sort_batch(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        values = batch.column(self.column).to_numpy()
        self.rows += len(values)
        if self.column not in METRICS:  # the summary bins it over its own finite range
            finite = values[np.isfinite(values)].astype(np.float64)
            if len(finite):
                self.finite += len(finite)
                self.low = min(self.low, float(finite.min()))
                self.high = max(self.high, float(finite.max()))
        arrays = [pa.array(_sortable_descending(values))]
        for name in self.names:
            array = batch.column(name)
            arrays.append(array.view(_bits(array.type)) if _is_float(array.type) else array)
        self._write_others(batch)
        return pa.RecordBatch.from_arrays(arrays, schema=self.sort_schema)

    def _write_others(self, batch: pa.RecordBatch) -> None:
        label = batch.column("label")
        known = label.is_valid().to_numpy(zero_copy_only=False)
        labels = pc.fill_null(label, UNKNOWN_LABEL).to_numpy()
        wrong = labels != batch.column("predicted").to_numpy()
        code = np.where(known, np.where(wrong, FAULT, RIGHT), UNLABELLED).astype(np.int8)
        arrays = [batch.column("sample_id"), pa.array(code)]
        arrays += [batch.column(name) for name in self.others]
        self._writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=self.others_schema))

    @property
    def metric_range(self) -> tuple[float, float, int] | None:
        if self.column in METRICS:
            return None
        if not self.finite:
            return 0.0, 0.0, 0
        return self.low, self.high, self.finite


class _Spread:
    """Distinct values and the most common one's count of a float column seen in sorted
    order (equal values are neighbours; NaNs, which sort first or last, count as one value)."""

    def __init__(self) -> None:
        self.distinct = self.modal = self.nans = 0
        self._last: float | None = None
        self._run = 0

    def add(self, values: np.ndarray) -> None:
        nan = np.isnan(values)
        self.nans += int(nan.sum())
        values = values[~nan]
        if not len(values):
            return
        starts = np.flatnonzero(values[1:] != values[:-1]) + 1
        lengths = np.diff(np.concatenate([[0], starts, [len(values)]]))
        if self._last is not None and values[0] == self._last:
            lengths[0] += self._run  # the run goes on from the last piece
            self.distinct -= 1
        self.distinct += len(lengths)
        self.modal = max(self.modal, int(lengths.max()))
        self._last, self._run = values[-1], int(lengths[-1])

    def figures(self, samples: int) -> dict:
        distinct = self.distinct + (1 if self.nans else 0)
        return spread_of_counts(samples, distinct, max(self.modal, self.nans))


def _parquet_sql(path: str) -> str:
    # A literal, not a prepared statement's parameter: DuckDB plans a parameter's scan
    # several times slower.
    return "read_parquet('" + path.replace("'", "''") + "')"


def _order_sql(column: str, kind: pa.DataType) -> str:
    # As float32, like the ranking's key: whole numbers past 2**24 tie as they do there.
    return f'"{column}"' if _is_float(kind) else f'CAST("{column}" AS FLOAT)'


def _duckdb_error(exc: Exception, memory_mb: int, folder: str) -> TestprioError:
    text = str(exc).splitlines()[0]
    if "OutOfMemory" in type(exc).__name__:
        return TestprioError(
            f"the rank stage ran out of its memory ({text}); raise --rank-memory-mb "
            f"(now {memory_mb}) and give the rank task that much."
        )
    if "No space left" in text or "temp_directory" in text or "disk" in text.lower():
        return TestprioError(
            f"the rank stage could not spill its sort to {folder} ({text}); give the rank "
            "task more local disk (TMPDIR), about 80 bytes per sample."
        )
    return TestprioError(f"the rank stage's sort failed ({text}); rerun the rank task.")


def _ranking_batches(
    result: pa.RecordBatchReader, schema: pa.Schema, names: list[str]
) -> Iterator[tuple[pa.RecordBatch, dict[str, np.ndarray]]]:
    """Ranking batches of exactly ``RANKING_ROW_GROUP`` rows (the last may be shorter) with
    ``rank`` and the columns' own types, and their columns as NumPy for the summary."""
    group = ranking_file.RANKING_ROW_GROUP
    pending: list[pa.RecordBatch] = []
    held = first = 0

    def emit(table: pa.Table) -> pa.RecordBatch:
        nonlocal first
        table = table.combine_chunks()  # one chunk per column
        arrays = [pa.array(np.arange(first + 1, first + table.num_rows + 1, dtype=np.int64))]
        for name in names:
            array, kind = table.column(name).chunk(0), schema.field(name).type
            arrays.append(array.view(kind) if _is_float(kind) else array)
        first += table.num_rows
        return pa.RecordBatch.from_arrays(arrays, schema=schema)

    for piece in result:
        pending.append(piece)
        held += piece.num_rows
        while held >= group:
            table = pa.Table.from_batches(pending)
            batch = emit(table.slice(0, group))
            rest = table.slice(group)
            pending, held = rest.to_batches(), rest.num_rows
            yield batch, _summary_columns(batch)
    if held:
        batch = emit(pa.Table.from_batches(pending))
        yield batch, _summary_columns(batch)


def _summary_columns(batch: pa.RecordBatch) -> dict[str, np.ndarray]:
    columns = {}
    for name in batch.schema.names[1:]:
        array = batch.column(name)
        if name == "label":
            array = pc.fill_null(array, UNKNOWN_LABEL)
        columns[name] = array.to_numpy(zero_copy_only=False)
    return columns


def _other_figures(con, others_path: str, column: str, kind: pa.DataType, samples: int) -> dict:
    """``{"apfd", **spread}`` of another score prioritizer: its labelled rows sorted as the
    ranking would be (the faults' positions among them give APFD; a pool that is mostly
    unlabelled sorts little), and its values counted by ``GROUP BY`` (the spread)."""
    result = con.sql(
        f"SELECT code FROM {_parquet_sql(others_path)} WHERE code != {UNLABELLED} "
        f"ORDER BY {_order_sql(column, kind)} DESC, sample_id"
    ).to_arrow_reader(ranking_file.RANKING_ROW_GROUP)
    seen = faults = position_sum = 0
    for batch in result:
        fault = np.flatnonzero(batch.column(0).to_numpy() == FAULT)
        position_sum += int(fault.sum()) + seen * len(fault)
        faults += len(fault)
        seen += batch.num_rows
    return {
        "apfd": apfd_of_positions(seen, faults, position_sum),
        **_spread(con, others_path, column, samples),
    }


def _spread(con, others_path: str, column: str, samples: int) -> dict:
    """``score_spread``'s figures by ``GROUP BY`` value: equal values, -0.0 and 0.0 alike
    and every NaN, are one group, as in ``np.unique``."""
    distinct, modal = con.sql(
        "SELECT count(*), max(n) FROM "
        f'(SELECT count(*) AS n FROM {_parquet_sql(others_path)} GROUP BY "{column}")'
    ).fetchone()
    return spread_of_counts(samples, int(distinct), int(modal or 0))


def rank_bounded(
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
    memory_mb: int,
    samples: int,
) -> tuple[dict, dict | None]:
    """Write ``ranking.parquet`` in the order of the score prioritizer ``metric`` in bounded
    memory; return the same figures as ``rank_memory.rank_in_memory``. ``samples``: the
    shards' rows as their footers count them (checked against the rows read)."""
    import duckdb  # only the rank task needs it (not the GPU image's score tasks)

    chosen = prioritizers.NAMES[metric]
    scored = [*METRICS, *available]
    compared_columns = [
        found.column
        for name, found in prioritizers.NAMES.items()
        if name not in prioritizers.ALIASES and found.order == "score" and found.column in scored
    ]
    float_chosen = _is_float(shard_schema.field(chosen.column).type)
    # The scratch file holds the columns sorted again (the others) or grouped (an int chosen).
    others = [c for c in compared_columns if c != chosen.column or not float_chosen]
    schema = ranking_schema(shard_schema, names)
    with scratch.folder("rank") as folder:
        feed = _Pass(
            score_uris,
            chosen.column,
            names,
            others,
            shard_schema,
            os.path.join(folder, "others.parquet"),
            Progress(log, "rank: read and sorted", "scores", samples),
        )
        con = _connect(memory_mb, folder)
        try:
            con.register("scores", feed.reader())
            result = con.sql(
                f"SELECT * EXCLUDE ({SORT_KEY}) FROM scores ORDER BY {SORT_KEY}, sample_id"
            ).to_arrow_reader(ranking_file.RANKING_ROW_GROUP)
            stream = spread = None
            written, done = Progress(log, "rank: wrote", "ranked rows", samples), 0
            with RankingWriter(layout.ranking, schema, top_k) as writer:
                for batch, columns in _ranking_batches(result, schema, names):
                    if stream is None:  # the sort has read every shard by its first row
                        stream = _summary_stream(feed, chosen.column, num_classes)
                        spread = _Spread()
                    stream.add(columns)
                    if float_chosen:
                        spread.add(columns[chosen.column])
                    writer.write(batch)
                    done += batch.num_rows
                    written.update(done, final=done == samples)
            if stream is None:  # no rows at all
                stream = _summary_stream(feed, chosen.column, num_classes)
                spread = _Spread()
            if feed.rows != samples:
                raise TestprioError(
                    f"the scores shards held {feed.rows} rows while ranked but {samples} "
                    "before; rerun the rank task."
                )
            summary = stream.summary(
                samples_in=manifest["samples"], quarantined=manifest["quarantined"], top=writer.top
            )
            if summary["labels"] is None:
                return summary, None
            figures = {}
            for number, column in enumerate(compared_columns, 1):
                log.info(
                    "rank: APFD and spread of %s (%d/%d prioritizer columns)",
                    column,
                    number,
                    len(compared_columns),
                )
                kind = shard_schema.field(column).type
                if column == chosen.column:
                    figure = {"apfd": summary["labels"]["apfd"]}
                    figure.update(
                        spread.figures(feed.rows)
                        if float_chosen
                        else _spread(con, feed.others_path, column, feed.rows)
                    )
                else:
                    figure = _other_figures(con, feed.others_path, column, kind, feed.rows)
                figures[column] = figure
        except Exception as exc:
            if feed.error is not None:  # a shard could not be read: its own sentence
                raise feed.error from None
            if isinstance(exc, duckdb.Error):
                raise _duckdb_error(exc, memory_mb, folder) from None
            raise
        finally:
            con.close()
    cam = cam_figures(layout, score_uris, available, shard_schema)
    compared = {}
    for name, found in prioritizers.NAMES.items():
        if name in prioritizers.ALIASES or found.column not in scored:
            continue
        if found.order == "cam":
            compared[name] = cam[name]
        else:
            compared[name] = {
                "column": found.column,
                "order": found.order,
                **figures[found.column],
            }
    return summary, compared


def _summary_stream(feed: _Pass, column: str, num_classes: int) -> SummaryStream:
    if not feed.done:
        raise TestprioError("the rank stage's sort gave rows before reading every shard.")
    return SummaryStream(
        metric=column,
        num_classes=num_classes,
        samples=feed.rows,
        metric_range=feed.metric_range,
    )
