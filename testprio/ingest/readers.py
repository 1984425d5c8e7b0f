"""Readers of array pools (``.npy``, ``.npz``, Parquet, CSV) and image folders, by format.

Every reader streams: ``.npy`` and ``.npz`` members are read through the file in chunks,
Parquet by row batch, CSV by block, so memory stays flat whatever the pool size. Image
folders are listed up front and decoded one file at a time by the ingest stage.
"""

from __future__ import annotations

import json
import math
import os
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from testprio.errors import TestprioError
from testprio.ingest import sources
from testprio.ingest.archives import DEFAULT_ARCHIVE_LIMITS, ArchiveLimits, check_zip_members
from testprio.ingest.image_folders import DEFAULT_MAX_IMAGE_PIXELS
from testprio.ingest.pool import ArrayPool, Chunk, FilePool
from testprio.ingest.shards import SHAPE_METADATA_KEY, TENSOR_DTYPE, shard_tensor_decoder

LABEL_COLUMNS = sources.LABEL_COLUMNS


@dataclass(frozen=True)
class ReadLimits:
    """How much a reader may make of a pool: ``archive`` bounds an ``.npz``'s arrays as an
    archive's entries (expanded bytes, ratios); ``max_image_pixels`` bounds each decoded
    image (larger ones are bad samples)."""

    archive: ArchiveLimits = DEFAULT_ARCHIVE_LIMITS
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS


@dataclass(frozen=True)
class Columns:
    """Where samples and labels are in a table or an ``.npz``: ``tensor`` (default ``x``)
    and ``label`` (default: whichever of ``LABEL_COLUMNS`` exists; two of them is an error)."""

    tensor: str = "x"
    label: str = ""


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


def check_numeric(name: str, what: str, dtype: np.dtype) -> None:
    if dtype.kind not in "biuf":
        raise TestprioError(f"{what} in {name} have dtype {dtype}; save them as a numeric array.")


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


def _check_holds(
    name: str, member: str, shape: tuple[int, ...], dtype: np.dtype, available: int
) -> None:
    """Refuse a header that declares more data than follows it: the sample count is trusted
    from here on (shards are planned by it), so a lying header stops here, not at the end."""
    needed = math.prod(shape) * dtype.itemsize
    if needed > available:
        raise TestprioError(
            f"array '{member}' in {name} is truncated: its header declares {shape[0]:,} "
            f"samples ({needed:,} bytes) but it holds {available:,} bytes; re-save the file."
        )


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


def read_npy(
    path: str, name: str, columns: Columns, limits: ReadLimits = ReadLimits()
) -> ArrayPool:
    # Read through the file in chunks rather than memory-mapping it: mapped pages stay
    # resident (and count against a pod's memory limit) until the whole map is released.
    with open(path, "rb") as handle:
        try:
            shape, dtype = _npy_header(handle, name, "array")
        except ValueError:
            # numpy's message quotes the header bytes: file content stays out of errors.
            raise TestprioError(
                f"{name} is not a readable .npy array (its header is damaged); re-save it "
                "with numpy.save."
            ) from None
        available = os.fstat(handle.fileno()).st_size - handle.tell()
    _check_array_pair(name, shape, None)
    check_numeric(name, "inputs", dtype)
    _check_holds(name, "array", shape, dtype, available)

    def read_chunks(rows: int) -> Iterator[Chunk]:
        with open(path, "rb") as handle:
            _npy_header(handle, name, "array")
            for x in _stream_rows(handle, shape, dtype, rows, name, "array"):
                yield Chunk(x)

    return ArrayPool(name, int(shape[0]), tuple(shape[1:]), False, read_chunks)


def _stream_npz_member(
    archive: zipfile.ZipFile, member: str, name: str, rows: int
) -> Iterator[np.ndarray]:
    with archive.open(member) as handle:
        shape, dtype = _npy_header(handle, name, member)
        yield from _stream_rows(handle, shape, dtype, rows, name, member)


def _npz_header(
    archive: zipfile.ZipFile, member: str, name: str
) -> tuple[tuple[int, ...], np.dtype]:
    """An ``.npz`` array's shape and dtype, checked to fit in the bytes its entry holds."""
    with archive.open(member) as handle:
        shape, dtype = _npy_header(handle, name, member)
        available = archive.getinfo(member).file_size - handle.tell()
    if len(shape) >= 1:
        _check_holds(name, member, shape, dtype, available)
    return shape, dtype


def read_npz(
    path: str, name: str, columns: Columns, limits: ReadLimits = ReadLimits()
) -> ArrayPool:
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise TestprioError(
            f"{name} is a truncated or corrupt .npz file (its zip directory cannot be read); "
            "copy it again or re-save it with numpy.savez(x=..., y=...)."
        ) from None
    members = set(archive.namelist())
    arrays = sorted(m.removesuffix(".npy") for m in members if m.endswith(".npy"))
    x_member = f"{columns.tensor}.npy"
    if x_member not in members:
        keys = ", ".join(arrays) or "none"  # array names, never their values
        raise TestprioError(
            f"{name} has no array '{columns.tensor}' (it has: {keys}); save inputs as "
            f"{columns.tensor} and labels as y, or name the inputs with --tensor-column."
        )
    if columns.label and f"{columns.label}.npy" not in members:
        raise TestprioError(
            f"{name} has no array '{columns.label}' for --label-column; give an existing name."
        )
    label_key = columns.label or sources.default_label_column(arrays, name, "arrays")
    y_member = f"{label_key}.npy" if label_key else ""
    read = [x_member] + ([y_member] if y_member in members else [])
    # The arrays are decompressed as they are read: an archive's limits apply to them.
    check_zip_members(archive, read, name, os.path.getsize(path), limits.archive)
    x_shape, x_dtype = _npz_header(archive, x_member, name)
    y_shape = None
    if y_member in members:
        y_shape, y_dtype = _npz_header(archive, y_member, name)
        check_numeric(name, "labels", y_dtype)
    _check_array_pair(name, x_shape, y_shape)
    check_numeric(name, "inputs", x_dtype)

    def read_chunks(rows: int) -> Iterator[Chunk]:
        xs = _stream_npz_member(archive, x_member, name, rows)
        if y_shape is None:
            for x in xs:
                yield Chunk(x)
        else:
            ys = _stream_npz_member(archive, y_member, name, rows)
            for x, y in zip(xs, ys, strict=True):
                yield Chunk(x, y)

    return ArrayPool(name, x_shape[0], tuple(x_shape[1:]), y_shape is not None, read_chunks)


def read_parquet(
    path: str, name: str, columns: Columns, limits: ReadLimits = ReadLimits()
) -> ArrayPool:
    try:
        parquet = pq.ParquetFile(path)
    except pa.ArrowInvalid:
        raise TestprioError(
            f"{name} is not a readable Parquet file (its footer or metadata is damaged); "
            "copy it again or re-save it."
        ) from None
    schema = parquet.schema_arrow
    tensor = columns.tensor
    if tensor not in schema.names:
        raise TestprioError(
            f"{name} has no column '{tensor}' (it has: {', '.join(schema.names)}); put each "
            f"sample's values in a list<float> column named {tensor}, or name it with "
            "--tensor-column."
        )
    tensor_type = schema.field(tensor).type
    metadata = schema.metadata or {}
    # A testprio data shard (format 2: each sample's float32 bytes in one fixed-size binary
    # value, its shape in the metadata) is a pool too: a run's ingested data, scored again.
    shard = pa.types.is_fixed_size_binary(tensor_type) and SHAPE_METADATA_KEY in metadata
    if not (
        shard
        or pa.types.is_list(tensor_type)
        or pa.types.is_fixed_size_list(tensor_type)
        or pa.types.is_large_list(tensor_type)
    ):
        raise TestprioError(
            f"column '{tensor}' in {name} has type {tensor_type}; it must be a list of numbers "
            "(or a testprio data shard's tensor column)."
        )
    if columns.label and columns.label not in schema.names:
        raise TestprioError(
            f"{name} has no column '{columns.label}' for --label-column (it has: "
            f"{', '.join(schema.names)}); give an existing column."
        )
    label_column = columns.label or sources.default_label_column(schema.names, name, "columns")
    shape = None
    for key in (b"shape", SHAPE_METADATA_KEY):  # testprio's own key wins
        if key in metadata:
            shape = tuple(json.loads(metadata[key]))
    if shape is None:
        first = (
            parquet.read_row_group(0, columns=[tensor]).column(tensor)
            if parquet.num_row_groups
            else None
        )
        shape = (len(first[0]),) if first is not None and len(first) else (0,)
    width = int(np.prod(shape))
    wanted = [tensor] + ([label_column] if label_column else [])
    if shard:
        decode = shard_tensor_decoder(schema, name)
        needed = TENSOR_DTYPE.itemsize * width
        if tensor_type.byte_width != needed:
            raise TestprioError(
                f"column '{tensor}' in {name} holds {tensor_type.byte_width} bytes per sample "
                f"but its shape {shape} needs {needed}; the data shard is damaged, so "
                "ingest the original pool again."
            )

    def read_chunks(rows: int) -> Iterator[Chunk]:
        for batch in parquet.iter_batches(batch_size=rows, columns=wanted):
            values = batch.column(tensor)
            if shard:
                x = decode(values, shape)
            else:
                lengths = pc.list_value_length(values).to_numpy(zero_copy_only=False)
                if (lengths != width).any():
                    raise TestprioError(
                        f"column '{tensor}' in {name} holds rows of "
                        f"{sorted(set(lengths.tolist()))[:5]} values but each sample should "
                        f"have {width} (shape {shape})."
                    )
                x = values.flatten().to_numpy(zero_copy_only=False).reshape((len(batch), *shape))
            y = None
            if label_column:
                labels = batch.column(label_column)
                if labels.null_count:  # nulls -> NaN, which ingest reads as "unknown"
                    labels = labels.cast(pa.float64())
                y = labels.to_numpy(zero_copy_only=False)
            yield Chunk(x, y)

    return ArrayPool(name, parquet.metadata.num_rows, shape, label_column is not None, read_chunks)


def read_csv(
    path: str, name: str, columns: Columns, limits: ReadLimits = ReadLimits()
) -> ArrayPool:
    return sources.read_csv(path, name, label_column=columns.label)


def read_images(
    path: str, name: str, columns: Columns, limits: ReadLimits = ReadLimits()
) -> FilePool:
    return sources.open_image_folder(path, name, max_pixels=limits.max_image_pixels)


READERS: dict[str, Callable[[str, str, Columns, ReadLimits], ArrayPool | FilePool]] = {
    "npy": read_npy,
    "npz": read_npz,
    "parquet": read_parquet,
    "csv": read_csv,
    "images": read_images,
}


def open_pool(
    path: str, fmt: str, name: str, columns: Columns, limits: ReadLimits = ReadLimits()
) -> ArrayPool | FilePool:
    return READERS[fmt](path, name, columns, limits)
