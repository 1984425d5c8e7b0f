"""Ingest: a pool of inputs -> preprocessed sample shards ``data/shard-NNNNN.parquet``.

One concern per module:

- ``stage``: the stage, ``ingest(layout, data_uri, options)``: read, check, preprocess and
  write the pool in chunks, quarantine bad samples, flag duplicates, write the manifest;
- ``options``: ``IngestOptions`` (made from run parameters by ``ingest_options``), their
  checks and the preprocessing chain they describe;
- ``shards``: the data folder's formats (the sample shard schema and its readers, the
  quarantine and duplicates lists), which score, reference, evaluate and the report read;
- ``sources`` (local, ``gs://``, ``http(s)://``, archives), ``readers`` (one per pool
  format), ``pool``, ``preprocess`` (presets and ops; the ops by family in
  ``preprocess_base``, ``preprocess_arrays``, ``preprocess_images``, the presets in
  ``preprocess_presets``), ``sandbox`` and ``sandbox_worker`` (custom ops in a locked-down
  child process; with ``sandbox_check``, ``sandbox_guard`` and ``sandbox_protocol``).

This file only re-exports the public names of ``stage``, ``options`` and ``shards``. A test
that patches a module constant (``PROCESS_DECODING_MIN_FILES``, ``CGROUP_CPU_LIMITS``)
patches it where it is read: ``testprio.ingest.stage``.
"""

from __future__ import annotations

from testprio.ingest.options import (
    CHUNK_ROWS,
    ON_BAD_SAMPLE,
    IngestOptions,
    build_preprocessor,
    check_options,
    ingest_options,
    parse_shape,
    parse_value_range,
)
from testprio.ingest.shards import (
    DUPLICATES_SCHEMA,
    QUARANTINE_KINDS,
    QUARANTINE_SCHEMA,
    SHAPE_METADATA_KEY,
    SHARD_FORMAT,
    SHARD_FORMAT_KEY,
    SHARD_TENSOR_DECODERS,
    TENSOR_DTYPE,
    iter_shard_batches,
    shard_batches,
    shard_format,
    shard_record_batch,
    shard_sample_shape,
    shard_schema,
    shard_tensor_decoder,
    shard_tensors,
)
from testprio.ingest.stage import (
    CGROUP_CPU_LIMITS,
    CHUNK_BYTES,
    LABEL_MAX,
    PROCESS_DECODING_MIN_FILES,
    Prepared,
    available_cpus,
    ingest,
)

__all__ = [
    "CGROUP_CPU_LIMITS",
    "CHUNK_BYTES",
    "CHUNK_ROWS",
    "DUPLICATES_SCHEMA",
    "LABEL_MAX",
    "ON_BAD_SAMPLE",
    "PROCESS_DECODING_MIN_FILES",
    "QUARANTINE_KINDS",
    "QUARANTINE_SCHEMA",
    "SHAPE_METADATA_KEY",
    "SHARD_FORMAT",
    "SHARD_FORMAT_KEY",
    "SHARD_TENSOR_DECODERS",
    "TENSOR_DTYPE",
    "IngestOptions",
    "Prepared",
    "available_cpus",
    "build_preprocessor",
    "check_options",
    "ingest",
    "ingest_options",
    "iter_shard_batches",
    "parse_shape",
    "parse_value_range",
    "shard_batches",
    "shard_format",
    "shard_record_batch",
    "shard_sample_shape",
    "shard_schema",
    "shard_tensor_decoder",
    "shard_tensors",
]
