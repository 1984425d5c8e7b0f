"""``ranking.parquet``: its columns, and writing it a row group at a time.

Both ways the rank stage orders a pool write it here (``testprio.rank_memory`` gathers row
groups from columns held in memory, ``testprio.rank_bounded`` takes them from an
out-of-core sort), so the two write the same bytes for the same order: row groups of
``RANKING_ROW_GROUP`` rows, no dictionary encoding, the shards' own field types and metadata.
"""

from __future__ import annotations

import contextlib
from concurrent.futures import Future, ThreadPoolExecutor

import pyarrow as pa

from testprio import storage
from testprio.metrics import METRICS

RANK_COLUMNS = ["sample_id", "predicted", "confidence", *METRICS, "label"]
RANKING_ROW_GROUP = 65_536
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


def ranking_schema(shard_schema: pa.Schema, columns: list[str]) -> pa.Schema:
    """``rank`` (int64) then ``columns`` as the scores shards type them, with their metadata."""
    return pa.schema(
        [pa.field("rank", pa.int64()), *(shard_schema.field(name) for name in columns)],
        metadata=shard_schema.metadata,
    )


class RankingWriter:
    """Writes ranking batches (``RANKING_ROW_GROUP`` rows each, the last may be shorter, in
    rank order) to ``uri``, which appears only once it is complete; keeps the first ``top_k``
    rows as dicts (``top``).

    A writer thread encodes one row group while the caller makes the next (both release the
    GIL), so writing overlaps on a second core; one group is in flight, so memory stays one
    group.
    """

    def __init__(self, uri: str, schema: pa.Schema, top_k: int):
        self.uri, self.schema, self.top_k = uri, schema, top_k
        self.top: list[dict] = []

    def __enter__(self) -> RankingWriter:
        self._stack = contextlib.ExitStack()
        with self._stack as stack:
            self._writer = stack.enter_context(
                storage.parquet_writer(self.uri, self.schema, use_dictionary=False)
            )
            # Entered last, left first: the group in flight is written before the file closes.
            self._pool = stack.enter_context(
                ThreadPoolExecutor(max_workers=1, thread_name_prefix="testprio-rank-writer")
            )
            self._stack = stack.pop_all()
        self._written: Future | None = None
        return self

    def write(self, batch: pa.RecordBatch) -> None:
        if self._written is not None:
            self._written.result()
        self._written = self._pool.submit(self._writer.write_batch, batch)
        if len(self.top) < self.top_k:
            self.top.extend(batch.slice(0, self.top_k - len(self.top)).to_pylist())

    def __exit__(self, *exc_info) -> bool:
        if exc_info[0] is None and self._written is not None:
            try:
                self._written.result()
            except BaseException as exc:  # the last group failed: publish nothing
                if not self._stack.__exit__(type(exc), exc, exc.__traceback__):
                    raise
        suppressed = self._stack.__exit__(*exc_info)
        pa.default_memory_pool().release_unused()
        return suppressed
