"""The data folder's formats: sample shards ``data/shard-NNNNN.parquet`` and the lists of
quarantined samples and exact duplicates beside them.

Shard schema (shard format 2, ``testprio.shard_format`` in the schema metadata and
``shard_format`` in the manifest): ``sample_id int64`` (0..N-1 in source order),
``x fixed_size_binary(4 * width)`` (one flattened, preprocessed sample as little-endian
float32; its shape is in the schema metadata under ``testprio.shape``), ``label int32`` (null
when unknown), ``source string``. Format 1 shards (``x fixed_size_list<float32>``) still read.

The ingest stage (``testprio.ingest.stage``) writes them; the pool readers (a shard is a pool
too), score, reference, convert's output detection, evaluate and the report read them through
this module, so none of them needs the stage.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from testprio import storage
from testprio.errors import TestprioError

SHAPE_METADATA_KEY = b"testprio.shape"

# Shard format 2 stores each sample as one fixed_size_binary(4 * width) value holding its
# little-endian float32 values: Parquet keeps that as one flat FIXED_LEN_BYTE_ARRAY column
# with neither repetition nor definition levels, so a reader gets one contiguous buffer that
# numpy views without a copy (about 5x faster to read than format 1). Format 1 (no version
# key; ``x fixed_size_list<float32>``) goes through Arrow's nested-list decoding; it is still
# read, so runs ingested before stay scorable.
SHARD_FORMAT = 2
SHARD_FORMAT_KEY = b"testprio.shard_format"
TENSOR_DTYPE = np.dtype("<f4")


def shard_schema(sample_shape: tuple[int, ...]) -> pa.Schema:
    width = int(np.prod(sample_shape))
    return pa.schema(
        [
            pa.field("sample_id", pa.int64(), nullable=False),
            pa.field("x", pa.binary(TENSOR_DTYPE.itemsize * width), nullable=False),
            pa.field("label", pa.int32()),
            pa.field("source", pa.string()),
        ],
        metadata={
            SHAPE_METADATA_KEY: json.dumps(list(sample_shape)).encode(),
            SHARD_FORMAT_KEY: str(SHARD_FORMAT).encode(),
        },
    )


def shard_record_batch(
    x: np.ndarray, ids: np.ndarray, labels: pa.Array, sources: list[str], schema: pa.Schema
) -> pa.RecordBatch:
    """Rows of a sample shard of ``schema``: samples ``x`` ``(n, *shape)``, ``ids`` ``(n,)``,
    ``labels`` (n int32, null when unknown) and ``sources`` (n texts)."""
    x_type = schema.field("x").type
    width = x_type.byte_width // TENSOR_DTYPE.itemsize
    flat = np.ascontiguousarray(x, dtype=TENSOR_DTYPE).reshape(len(ids), width)
    values = pa.FixedSizeBinaryArray.from_buffers(x_type, len(ids), [None, pa.py_buffer(flat)])
    return pa.RecordBatch.from_arrays(
        [pa.array(ids, pa.int64()), values, labels, pa.array(sources, pa.string())],
        schema=schema,
    )


# Quarantine kinds, in the order a sample is checked; the reason column says more.
QUARANTINE_KINDS = {
    "unreadable": "the file or value could not be read",
    "shape": "the sample's shape differs from the pool's",
    "non_finite": "NaN or Inf values",
    "out_of_range": "values outside the declared range",
    "constant": "every value of the image is the same",
    "preprocessing": "a preprocessing op failed on this sample alone",
}

QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.int64(), nullable=False),
        pa.field("source", pa.string()),
        pa.field("kind", pa.string()),
        pa.field("reason", pa.string()),
    ]
)

DUPLICATES_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.int64(), nullable=False),
        pa.field("duplicate_of", pa.int64(), nullable=False),
    ]
)


# --- reading shards back ---------------------------------------------------------------


def shard_sample_shape(schema: pa.Schema) -> tuple[int, ...]:
    return tuple(json.loads((schema.metadata or {})[SHAPE_METADATA_KEY]))


def shard_format(schema: pa.Schema) -> int:
    """The shard format version a sample shard was written in (1 before it was recorded)."""
    return int((schema.metadata or {}).get(SHARD_FORMAT_KEY, b"1"))


def _tensors_from_bytes(column: pa.Array, shape: tuple[int, ...]) -> np.ndarray:
    """Format 2: a read-only view of the fixed-size binary values' buffer (no copy)."""
    width = column.type.byte_width
    values = np.frombuffer(
        column.buffers()[1],
        dtype=TENSOR_DTYPE,
        count=len(column) * width // TENSOR_DTYPE.itemsize,
        offset=column.offset * width,
    )
    return values.reshape((len(column), *shape))


def _tensors_from_lists(column: pa.Array, shape: tuple[int, ...]) -> np.ndarray:
    """Format 1: ``fixed_size_list<float32>`` values, flattened (Arrow copies them)."""
    flat = column.flatten().to_numpy(zero_copy_only=False)
    return flat.reshape((len(column), *shape))


SHARD_TENSOR_DECODERS: dict[int, Callable[[pa.Array, tuple[int, ...]], np.ndarray]] = {
    1: _tensors_from_lists,
    2: _tensors_from_bytes,
}


def shard_tensor_decoder(
    schema: pa.Schema, name: str
) -> Callable[[pa.Array, tuple[int, ...]], np.ndarray]:
    """The function that turns shard ``name``'s ``x`` column into ``(n, *shape)`` float32."""
    version = shard_format(schema)
    if version not in SHARD_TENSOR_DECODERS:
        known = ", ".join(str(v) for v in sorted(SHARD_TENSOR_DECODERS))
        raise TestprioError(
            f"data shard {name} is in shard format {version}, which this testprio cannot read "
            f"(it reads formats {known}); score it with the testprio version that ingested it, "
            "or rerun ingest."
        )
    return SHARD_TENSOR_DECODERS[version]


def shard_tensors(
    column: pa.Array | pa.ChunkedArray, schema: pa.Schema, name: str = "(unnamed)"
) -> np.ndarray:
    """The ``x`` column of sample shard ``name`` (of ``schema``) as ``(n, *shape)`` float32."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    return shard_tensor_decoder(schema, name)(column, shard_sample_shape(schema))


def shard_batches(
    parquet: pq.ParquetFile,
    batch_size: int,
    columns: tuple[str, ...] = ("sample_id", "x", "label"),
    *,
    name: str = "(unnamed)",
) -> Iterator[tuple[pa.RecordBatch, np.ndarray]]:
    """Stream ``(record batch, x as (n, *shape) float32)`` from the open sample shard ``name``.

    Reads about ``batch_size`` rows at a time. In format 2 ``x`` is a read-only, zero-copy
    view of the batch's buffer; in format 1 a copy.
    """
    schema = parquet.schema_arrow
    decode = shard_tensor_decoder(schema, name)
    shape = shard_sample_shape(schema)
    for batch in parquet.iter_batches(batch_size=batch_size, columns=list(columns)):
        yield batch, decode(batch.column("x"), shape)


def iter_shard_batches(
    uri: str, batch_size: int, columns: tuple[str, ...] = ("sample_id", "x", "label")
) -> Iterator[tuple[pa.RecordBatch, np.ndarray]]:
    """``shard_batches`` of the sample shard at ``uri``."""
    with storage.open_parquet(uri) as parquet:
        yield from shard_batches(parquet, batch_size, columns, name=uri)
