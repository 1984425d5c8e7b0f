"""How the ingest stage reads and preprocesses a pool: ``IngestOptions`` (each field a
``testprio run`` option), made from run parameters (``ingest_options``) or parsed from their
texts, checked, and the preprocessing chain they describe (``build_preprocessor``).

The run's start task checks them (``check_options``) before any data is read; the ingest
stage (``testprio.ingest.stage``), the reference task and ``testprio evaluate`` read pools
with them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from testprio import storage
from testprio.errors import TestprioError
from testprio.ingest import preprocess, sandbox, sources
from testprio.ingest.image_folders import DEFAULT_MAX_IMAGE_PIXELS

CHUNK_ROWS = 1024
ON_BAD_SAMPLE = ("quarantine", "fail")


@dataclass(frozen=True)
class IngestOptions:
    """How to read and preprocess the pool (each field is a ``testprio run`` option)."""

    shard_size: int = 10_000
    input_shape: tuple[int, ...] | None = None
    preset: str = ""
    ops: str = ""
    custom_ops: str = ""
    on_bad_sample: str = "quarantine"
    value_range: tuple[float, float] | None = None
    tensor_column: str = "x"
    label_column: str = ""
    max_data_gb: float = 20.0  # largest download, and largest archive once expanded
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS  # largest decoded image (width x height)
    # http(s) sources (testprio.ingest.sources.DownloadLimits): non-public addresses are refused
    # unless allowed; the whole download's time limit and its minimum rate (0: none).
    allow_private_urls: bool = False
    download_timeout_s: float = sources.DEFAULT_DOWNLOAD_LIMITS.deadline_s
    download_min_bytes_per_s: float = sources.DEFAULT_DOWNLOAD_LIMITS.min_bytes_per_s
    custom_op_cpu_seconds: float = 120.0  # per batch
    custom_op_memory_mb: int = 2048
    custom_op_batch_timeout_s: float = 300.0  # wall clock per batch
    workers: int = 0  # image decoding threads; 0: one per CPU core
    chunk_rows: int = CHUNK_ROWS


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


def parse_value_range(text: str) -> tuple[float, float] | None:
    """``"0,255"`` -> ``(0.0, 255.0)``; empty -> None (no range check)."""
    if not text or not text.strip():
        return None
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:
        low, high = 1.0, 0.0
    if not low <= high:
        raise TestprioError(
            f"--value-range '{text}' is not two numbers MIN,MAX with MIN <= MAX; "
            "write it like 0,255."
        )
    return low, high


def ingest_options(parameters: dict[str, Any]) -> IngestOptions:
    """``IngestOptions`` from run parameters (strings and numbers; missing ones default)."""
    defaults = IngestOptions()
    value = parameters.get
    return IngestOptions(
        shard_size=int(value("shard_size", defaults.shard_size)),
        input_shape=parse_shape(value("input_shape", "")),
        preset=value("preset", "") or "",
        ops=value("ops", "") or "",
        custom_ops=value("custom_ops", "") or "",
        on_bad_sample=value("on_bad_sample", "") or defaults.on_bad_sample,
        value_range=parse_value_range(value("value_range", "")),
        tensor_column=value("tensor_column", "") or defaults.tensor_column,
        label_column=value("label_column", "") or "",
        max_data_gb=float(value("max_data_gb", defaults.max_data_gb)),
        max_image_pixels=int(value("max_image_pixels", defaults.max_image_pixels)),
        allow_private_urls=bool(value("allow_private_urls", defaults.allow_private_urls)),
        download_timeout_s=float(value("download_timeout_s", defaults.download_timeout_s)),
        download_min_bytes_per_s=float(
            value("download_min_bytes_per_s", defaults.download_min_bytes_per_s)
        ),
        custom_op_cpu_seconds=float(value("custom_op_cpu_seconds", defaults.custom_op_cpu_seconds)),
        custom_op_memory_mb=int(value("custom_op_memory_mb", defaults.custom_op_memory_mb)),
        custom_op_batch_timeout_s=float(
            value("custom_op_batch_timeout_s", defaults.custom_op_batch_timeout_s)
        ),
    )


def check_values(options: IngestOptions) -> None:
    """Check the options that need neither data nor the op chain."""
    if options.shard_size <= 0:
        raise TestprioError(
            f"--shard-size {options.shard_size} must be a positive number of samples."
        )
    if options.on_bad_sample not in ON_BAD_SAMPLE:
        raise TestprioError(
            f"--on-bad-sample '{options.on_bad_sample}' is not one of {', '.join(ON_BAD_SAMPLE)}."
        )
    if not options.max_data_gb > 0:
        raise TestprioError(f"--max-data-gb {options.max_data_gb} must be a positive number.")
    pixels = options.max_image_pixels
    if isinstance(pixels, bool) or not isinstance(pixels, int) or pixels < 1:
        raise TestprioError(f"--max-image-pixels {pixels} must be a whole number of at least 1.")
    if not options.download_timeout_s > 0:
        raise TestprioError(
            f"--download-timeout-s {options.download_timeout_s} must be a positive number."
        )
    if not options.download_min_bytes_per_s >= 0:
        raise TestprioError(
            f"--download-min-bytes-per-s {options.download_min_bytes_per_s} must be zero "
            "(no minimum) or a positive number."
        )
    if not options.tensor_column:
        raise TestprioError("--tensor-column is empty; give the name of the column of samples.")


def check_options(options: IngestOptions) -> None:
    """Check the options that need no data, the op chain and custom op file included (the
    run's start task calls this; ``ingest`` checks the same while it builds the chain)."""
    check_values(options)
    custom = None
    if options.custom_ops:
        source, name = _read_custom_ops(options.custom_ops)
        sandbox.check_source(source, name)
        sandbox.check_limits(
            options.custom_op_cpu_seconds,
            options.custom_op_memory_mb,
            options.custom_op_batch_timeout_s,
        )
        custom = preprocess.CustomPlace()
    specs = preprocess.op_specs(preset=options.preset, ops=options.ops)
    preprocess.build(specs, custom_op=custom, source=_ops_source(options)).close()


def _read_custom_ops(uri: str) -> tuple[str, str]:
    name = os.path.basename(uri.rstrip("/"))
    try:
        data = storage.read_bytes(uri)
    except (OSError, TestprioError) as exc:
        raise TestprioError(
            f"cannot read the custom op file {uri} ({exc}); give a readable .py file."
        ) from None
    try:
        return data.decode("utf-8"), name
    except UnicodeDecodeError:
        raise TestprioError(
            f"custom op file {uri} is not UTF-8 text; save it as a UTF-8 Python file."
        ) from None


def build_preprocessor(options: IngestOptions) -> preprocess.Preprocessor:
    """The run's op chain, its custom op (if any) started in its sandbox."""
    specs = preprocess.op_specs(preset=options.preset, ops=options.ops)
    custom = None
    if options.custom_ops:
        source, name = _read_custom_ops(options.custom_ops)
        custom = sandbox.CustomOp(
            source,
            name,
            cpu_seconds=options.custom_op_cpu_seconds,
            memory_mb=options.custom_op_memory_mb,
            batch_timeout_s=options.custom_op_batch_timeout_s,
        )
    return preprocess.build(specs, custom_op=custom, source=_ops_source(options))


def _ops_source(options: IngestOptions) -> str:
    """How errors name the op list: the preset, --ops, or both."""
    return preprocess.chain_source(options.preset.strip(), options.ops.strip())
