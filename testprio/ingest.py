"""Ingest: a pool of inputs -> sample shards ``data/shard-NNNNN.parquet``.

Shard schema: ``sample_id int64`` (0..N-1 in source order), ``x fixed_size_list<float32>``
(one flattened sample; the per-sample shape is in the schema metadata under
``testprio.shape``), ``label int32`` (null when unknown), ``source string``.
Samples with NaN or Inf values go to ``data/quarantine.parquet`` with a reason instead.

Readers stream fixed-size chunks, so memory stays flat whatever the pool size: ``.npy`` is
memory-mapped, ``.npz`` members are read through their zip stream, Parquet by row batch.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from testprio import storage
from testprio.errors import TestprioError
from testprio.layout import RunLayout, shard_name
from testprio.log import get_logger

log = get_logger("ingest")

SHAPE_METADATA_KEY = b"testprio.shape"
CHUNK_ROWS = 1024
LABEL_COLUMNS = ("label", "y")


@dataclass
class PoolSource:
    """A readable pool: sample count and shape up front, then chunks of rows in order."""

    name: str
    count: int
    sample_shape: tuple[int, ...]
    has_labels: bool
    read_chunks: Callable[[int], Iterator[tuple[np.ndarray, np.ndarray | None]]]


# --- readers ---------------------------------------------------------------------------


def _check_array_pair(name: str, x_shape: tuple[int, ...], y_shape: tuple[int, ...] | None):
    if len(x_shape) < 2:
        raise TestprioError(
            f"inputs in {name} have shape {x_shape}; expected (N, ...) with one row per sample."
        )
    if y_shape is not None and (len(y_shape) != 1 or y_shape[0] != x_shape[0]):
        raise TestprioError(
            f"labels in {name} have shape {y_shape} but there are {x_shape[0]} samples; "
            "give one integer label per sample."
        )


def _check_numeric(name: str, what: str, dtype: np.dtype) -> None:
    if dtype.kind not in "biuf":
        raise TestprioError(f"{what} in {name} have dtype {dtype}; save them as a numeric array.")


def _read_npy(path: str, name: str) -> PoolSource:
    # Read through the file in chunks rather than memory-mapping it: mapped pages stay
    # resident (and count against a pod's memory limit) until the whole map is released.
    with open(path, "rb") as handle:
        try:
            shape, dtype = _npy_header(handle, name, "array")
        except ValueError as exc:
            raise TestprioError(
                f"{name} is not a readable .npy array ({exc}); re-save it with numpy.save."
            ) from None
    _check_array_pair(name, shape, None)
    _check_numeric(name, "inputs", dtype)

    def read_chunks(rows: int):
        with open(path, "rb") as handle:
            _npy_header(handle, name, "array")
            for x in _stream_rows(handle, shape, dtype, rows, name, "array"):
                yield x, None

    return PoolSource(name, int(shape[0]), tuple(shape[1:]), False, read_chunks)


def _npy_header(handle: BinaryIO, name: str, member: str) -> tuple[tuple[int, ...], np.dtype]:
    version = np.lib.format.read_magic(handle)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
    else:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
    if fortran and len(shape) > 1:
        raise TestprioError(
            f"array '{member}' in {name} is stored in Fortran order; save it with "
            "numpy.savez(np.ascontiguousarray(...))."
        )
    return tuple(shape), dtype


def _stream_rows(
    handle: BinaryIO, shape: tuple[int, ...], dtype: np.dtype, rows: int, name: str, member: str
) -> Iterator[np.ndarray]:
    """Chunks of ``rows`` samples from a file positioned just after a .npy header."""
    row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
    remaining = shape[0]
    while remaining:
        take = min(rows, remaining)
        buffer = handle.read(take * row_bytes)
        if len(buffer) != take * row_bytes:
            raise TestprioError(f"array '{member}' in {name} is truncated; re-save the file.")
        yield np.frombuffer(buffer, dtype=dtype).reshape((take, *shape[1:]))
        remaining -= take


def _stream_npz_member(
    archive: zipfile.ZipFile, member: str, name: str, rows: int
) -> Iterator[np.ndarray]:
    with archive.open(member) as handle:
        shape, dtype = _npy_header(handle, name, member)
        yield from _stream_rows(handle, shape, dtype, rows, name, member)


def _read_npz(path: str, name: str) -> PoolSource:
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise TestprioError(
            f"{name} is not a readable .npz file; re-save it with numpy.savez(x=..., y=...)."
        ) from None
    members = set(archive.namelist())
    if "x.npy" not in members:
        keys = ", ".join(sorted(m.removesuffix(".npy") for m in members)) or "none"
        raise TestprioError(
            f"{name} has no array 'x' (it has: {keys}); save inputs as x and labels as y."
        )
    with archive.open("x.npy") as handle:
        x_shape, x_dtype = _npy_header(handle, name, "x.npy")
    y_shape = None
    if "y.npy" in members:
        with archive.open("y.npy") as handle:
            y_shape, y_dtype = _npy_header(handle, name, "y.npy")
        _check_numeric(name, "labels", y_dtype)
    _check_array_pair(name, x_shape, y_shape)
    _check_numeric(name, "inputs", x_dtype)

    def read_chunks(rows: int):
        xs = _stream_npz_member(archive, "x.npy", name, rows)
        if y_shape is None:
            for x in xs:
                yield x, None
        else:
            yield from zip(xs, _stream_npz_member(archive, "y.npy", name, rows), strict=True)

    return PoolSource(name, x_shape[0], tuple(x_shape[1:]), y_shape is not None, read_chunks)


def _read_parquet(path: str, name: str) -> PoolSource:
    try:
        parquet = pq.ParquetFile(path)
    except pa.ArrowInvalid as exc:
        raise TestprioError(f"{name} is not a readable Parquet file ({exc}).") from None
    schema = parquet.schema_arrow
    if "x" not in schema.names:
        raise TestprioError(
            f"{name} has no column 'x' (it has: {', '.join(schema.names)}); put each sample's "
            "values in a list<float> column named x."
        )
    if not (
        pa.types.is_list(schema.field("x").type)
        or pa.types.is_fixed_size_list(schema.field("x").type)
        or pa.types.is_large_list(schema.field("x").type)
    ):
        raise TestprioError(
            f"column 'x' in {name} has type {schema.field('x').type}; it must be a list of numbers."
        )
    label_column = next((c for c in LABEL_COLUMNS if c in schema.names), None)
    metadata = schema.metadata or {}
    shape = None
    for key in (b"shape", SHAPE_METADATA_KEY):  # testprio's own key wins
        if key in metadata:
            shape = tuple(json.loads(metadata[key]))
    if shape is None:
        first = (
            parquet.read_row_group(0, columns=["x"]).column("x") if parquet.num_row_groups else None
        )
        shape = (len(first[0]),) if first is not None and len(first) else (0,)
    width = int(np.prod(shape))
    columns = ["x"] + ([label_column] if label_column else [])

    def read_chunks(rows: int):
        for batch in parquet.iter_batches(batch_size=rows, columns=columns):
            values = batch.column("x")
            lengths = pc.list_value_length(values).to_numpy(zero_copy_only=False)
            if (lengths != width).any():
                raise TestprioError(
                    f"column 'x' in {name} holds rows of {sorted(set(lengths.tolist()))[:5]} "
                    f"values but each sample should have {width} (shape {shape})."
                )
            x = values.flatten().to_numpy(zero_copy_only=False).reshape((len(batch), *shape))
            y = None
            if label_column:
                labels = batch.column(label_column)
                if labels.null_count:  # nulls -> NaN, which _to_labels reads as "unknown"
                    labels = labels.cast(pa.float64())
                y = labels.to_numpy(zero_copy_only=False)
            yield x, y

    return PoolSource(name, parquet.metadata.num_rows, shape, label_column is not None, read_chunks)


READERS: dict[str, Callable[[str, str], PoolSource]] = {
    "npy": _read_npy,
    "npz": _read_npz,
    "parquet": _read_parquet,
}

EXTENSIONS = {".npy": "npy", ".npz": "npz", ".parquet": "parquet", ".pq": "parquet"}


def detect_format(uri: str) -> str:
    extension = os.path.splitext(uri.rstrip("/"))[1].lower()
    if extension not in EXTENSIONS:
        raise TestprioError(f"cannot tell the format of {uri}; give a .npy, .npz or .parquet file.")
    return EXTENSIONS[extension]


def open_source(path: str, fmt: str, name: str) -> PoolSource:
    return READERS[fmt](path, name)


# --- shard writing ---------------------------------------------------------------------


def parse_shape(text: str) -> tuple[int, ...] | None:
    """``"1,28,28"`` -> ``(1, 28, 28)``; empty -> None."""
    if not text or not text.strip():
        return None
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(",") if part.strip())
    except ValueError:
        shape = ()
    if not shape or any(dim <= 0 for dim in shape):
        raise TestprioError(
            f"--input-shape '{text}' is not a list of positive integers; write it like 1,28,28."
        )
    return shape


def shard_schema(sample_shape: tuple[int, ...]) -> pa.Schema:
    width = int(np.prod(sample_shape))
    return pa.schema(
        [
            pa.field("sample_id", pa.int64(), nullable=False),
            pa.field("x", pa.list_(pa.float32(), width), nullable=False),
            pa.field("label", pa.int32()),
            pa.field("source", pa.string()),
        ],
        metadata={SHAPE_METADATA_KEY: json.dumps(list(sample_shape)).encode()},
    )


QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.int64(), nullable=False),
        pa.field("source", pa.string()),
        pa.field("reason", pa.string()),
    ]
)


@dataclass
class _ShardSink:
    """Writes consecutive shards, opening each one's atomic writer as rows arrive."""

    layout: RunLayout
    schema: pa.Schema
    shard_size: int
    uris: list[str] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    _index: int = -1
    _context = None
    _writer = None

    def _open(self, index: int) -> None:
        self.close()
        uri = self.layout.data_shard(index)
        self._context = storage.parquet_writer(
            uri, self.schema, compression="none", use_dictionary=False
        )
        self._writer = self._context.__enter__()
        self._index = index
        self.uris.append(uri)
        self.rows.append(0)

    def write(self, index: int, batch: pa.RecordBatch) -> None:
        while self._index < index:
            self._open(self._index + 1)
        if batch.num_rows:
            self._writer.write_batch(batch)
            self.rows[-1] += batch.num_rows

    def close(self) -> None:
        if self._context is not None:
            self._context.__exit__(None, None, None)
            self._context = None

    def abort(self, exc: BaseException) -> None:
        if self._context is not None:
            self._context.__exit__(type(exc), exc, exc.__traceback__)
            self._context = None


def _to_labels(y: np.ndarray | None, n: int, name: str) -> pa.Array:
    """Integer labels as int32; NaN (a null in a Parquet label column) means unknown."""
    if y is None:
        return pa.nulls(n, pa.int32())
    _check_numeric(name, "labels", y.dtype)
    unknown = np.isnan(y) if y.dtype.kind == "f" else np.zeros(len(y), dtype=bool)
    known = y[~unknown]
    if y.dtype.kind == "f" and not np.all(np.isfinite(known) & (known == np.round(known))):
        raise TestprioError(f"labels in {name} are not whole numbers; give integer labels.")
    if (known < 0).any():
        raise TestprioError(f"labels in {name} include negative values; use class indices 0..K-1.")
    return pa.array(np.where(unknown, 0, y).astype(np.int32), mask=unknown)


def _batch(
    x: np.ndarray, ids: np.ndarray, y: np.ndarray | None, name: str, schema: pa.Schema
) -> pa.RecordBatch:
    width = schema.field("x").type.list_size
    flat = np.ascontiguousarray(x, dtype=np.float32).reshape(len(ids), width)
    values = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1])
    sources = pa.array([f"{name}[{i}]" for i in ids.tolist()], pa.string())
    return pa.RecordBatch.from_arrays(
        [pa.array(ids, pa.int64()), values, _to_labels(y, len(ids), name), sources],
        schema=schema,
    )


def ingest(
    layout: RunLayout,
    data_uri: str,
    *,
    shard_size: int = 10_000,
    input_shape: tuple[int, ...] | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> list[str]:
    """Split the pool at ``data_uri`` into shards of ``shard_size`` samples; return their URIs.

    ``input_shape`` reshapes each sample (same number of values) when the file stores them
    flat. Writes ``data/manifest.json`` last.
    """
    if shard_size <= 0:
        raise TestprioError(f"--shard-size {shard_size} must be a positive number of samples.")
    fmt = detect_format(data_uri)
    name = os.path.basename(data_uri.rstrip("/"))
    with storage.local_copy(data_uri) as path:
        source = open_source(path, fmt, name)
        if source.count == 0:
            raise TestprioError(f"{name} holds no samples; give a pool with at least one input.")
        sample_shape = source.sample_shape
        if input_shape is not None:
            if int(np.prod(input_shape)) != int(np.prod(sample_shape)):
                raise TestprioError(
                    f"--input-shape {input_shape} has {int(np.prod(input_shape))} values but "
                    f"samples in {name} have shape {sample_shape}; give a shape with the same "
                    "number of values."
                )
            sample_shape = input_shape
        log.info(
            "ingesting %s: %d samples of shape %s, labels: %s",
            name,
            source.count,
            sample_shape,
            "yes" if source.has_labels else "no",
        )
        return _write_shards(layout, source, sample_shape, shard_size, chunk_rows)


def _write_shards(layout, source: PoolSource, sample_shape, shard_size, chunk_rows) -> list[str]:
    sink = _ShardSink(layout, shard_schema(sample_shape), shard_size)
    bad_ids: list[np.ndarray] = []
    offset = 0
    rows = min(chunk_rows, shard_size)
    try:
        for x, y in source.read_chunks(rows):
            _check_numeric(source.name, "inputs", x.dtype)
            n = len(x)
            x = x.reshape((n, *sample_shape))
            finite = (
                np.isfinite(x.reshape(n, -1)).all(axis=1)
                if x.dtype.kind == "f"
                else np.ones(n, dtype=bool)
            )
            ids = np.arange(offset, offset + n, dtype=np.int64)
            bad_ids.append(ids[~finite])
            start = 0
            while start < n:
                shard_index = (offset + start) // shard_size
                stop = min(n, (shard_index + 1) * shard_size - offset)
                keep = finite[start:stop]
                part_y = None if y is None else y[start:stop][keep]
                batch = _batch(
                    x[start:stop][keep], ids[start:stop][keep], part_y, source.name, sink.schema
                )
                sink.write(shard_index, batch)
                start = stop
            offset += n
            if offset % (rows * 50) < rows or offset == source.count:
                log.info("ingest: %s/%s samples read", f"{offset:,}", f"{source.count:,}")
    except BaseException as exc:
        sink.abort(exc)
        raise
    sink.close()
    quarantined = np.concatenate(bad_ids) if bad_ids else np.empty(0, np.int64)
    _write_quarantine(layout, quarantined, source.name)
    manifest = {
        "source": source.name,
        "samples": offset,
        "ingested": offset - len(quarantined),
        "quarantined": int(len(quarantined)),
        "sample_shape": list(sample_shape),
        "has_labels": source.has_labels,
        "shards": [{"name": shard_name(i), "rows": rows_in} for i, rows_in in enumerate(sink.rows)],
    }
    storage.write_json(layout.data_manifest, manifest)
    log.info("ingest: %d shards written, %d samples quarantined", len(sink.uris), len(quarantined))
    return sink.uris


def _write_quarantine(layout: RunLayout, sample_ids: np.ndarray, name: str) -> None:
    table = pa.table(
        {
            "sample_id": pa.array(sample_ids, pa.int64()),
            "source": pa.array([f"{name}[{i}]" for i in sample_ids.tolist()], pa.string()),
            "reason": pa.array(["non-finite values (NaN or Inf)"] * len(sample_ids), pa.string()),
        },
        schema=QUARANTINE_SCHEMA,
    )
    storage.write_table(layout.quarantine, table)


# --- reading shards back ---------------------------------------------------------------


def shard_sample_shape(schema: pa.Schema) -> tuple[int, ...]:
    return tuple(json.loads((schema.metadata or {})[SHAPE_METADATA_KEY]))


def shard_batches(
    parquet: pq.ParquetFile, batch_size: int, columns: tuple[str, ...] = ("sample_id", "x", "label")
) -> Iterator[tuple[pa.RecordBatch, np.ndarray]]:
    """Stream ``(record batch, x as (n, *shape) float32)`` from an open sample shard.

    Reads one row group at a time; ``x`` is a zero-copy view of the batch's buffer.
    """
    shape = shard_sample_shape(parquet.schema_arrow)
    for batch in parquet.iter_batches(batch_size=batch_size, columns=list(columns)):
        flat = batch.column("x").flatten().to_numpy(zero_copy_only=False)
        yield batch, flat.reshape((batch.num_rows, *shape))


def iter_shard_batches(
    uri: str, batch_size: int, columns: tuple[str, ...] = ("sample_id", "x", "label")
) -> Iterator[tuple[pa.RecordBatch, np.ndarray]]:
    """``shard_batches`` of the sample shard at ``uri``."""
    with storage.open_parquet(uri) as parquet:
        yield from shard_batches(parquet, batch_size, columns)
