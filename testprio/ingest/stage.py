"""The ingest stage: a pool of inputs -> preprocessed sample shards ``data/shard-NNNNN.parquet``
(their format: ``testprio.ingest.shards``).

Its names are re-exported by ``testprio.ingest`` (import them from there). In order:

1. resolves the source (local, ``gs://``, ``http(s)://``, archives: ``testprio.ingest.sources``)
   and opens it with the reader of its format (``testprio.ingest.readers``);
2. builds the preprocessing chain (``testprio.ingest.preprocess``: a preset, an op list, a
   sandboxed custom op) and computes any statistics it needs in a streaming first pass;
3. reads the pool again in chunks (image files decoded in parallel threads), checks every
   raw sample, preprocesses the good ones and writes them to shards; a sample that cannot
   be used goes to ``data/quarantine.parquet`` (sample id, source, kind, reason), or stops
   the run with ``on_bad_sample="fail"``; exact duplicates (content hash of the raw
   sample) are listed in ``data/duplicates.parquet`` and kept;
4. writes ``data/manifest.json`` last, and records the exact op list (computed statistics
   included) in ``run.json``.

Samples in = shard rows + quarantined, always. Memory stays flat whatever the pool size.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from testprio import storage
from testprio.errors import TestprioError
from testprio.ingest import preprocess, sources
from testprio.ingest.options import IngestOptions, build_preprocessor, check_values
from testprio.ingest.pool import ArrayPool, BadSample, FilePool
from testprio.ingest.readers import Columns, ReadLimits, check_numeric, open_pool
from testprio.ingest.shards import (
    DUPLICATES_SCHEMA,
    QUARANTINE_SCHEMA,
    SHARD_FORMAT,
    shard_record_batch,
    shard_schema,
)
from testprio.layout import SHARD_NAME_PATTERN, RunLayout, record_in_run, shard_name
from testprio.log import Progress, get_logger

log = get_logger("ingest")

# A chunk holds at most this many bytes of raw or preprocessed samples (large images).
CHUNK_BYTES = 64 * 2**20
# An image folder this large is decoded in worker processes (starting them takes about a
# second); a smaller one in threads.
PROCESS_DECODING_MIN_FILES = 2000


# --- checking raw samples --------------------------------------------------------------


@dataclass
class Prepared:
    """One chunk of the pool, checked and preprocessed.

    ``ids`` ``(n,)``; ``keep`` ``(n,)`` bool; ``x`` ``(kept, *shape)`` float32 (preprocessed
    good samples); ``y`` ``(n,)`` or None; ``sources`` n texts; ``bad`` position ->
    ``(kind, reason)``; ``hashes`` ``(kept,)`` uint64 of the raw good samples (or None).
    """

    ids: np.ndarray
    keep: np.ndarray
    x: np.ndarray
    y: np.ndarray | None
    sources: list[str]
    bad: dict[int, tuple[str, str]]
    hashes: np.ndarray | None


def _raw_problems(
    x: np.ndarray, options: IngestOptions, image_like: bool
) -> dict[int, tuple[str, str]]:
    """Position -> (kind, reason) for raw samples ``x`` ``(n, ...)`` that fail a check."""
    n = len(x)
    flat = x.reshape(n, int(np.prod(x.shape[1:])))
    problems: dict[int, tuple[str, str]] = {}
    if x.dtype.kind == "f":
        for i in np.flatnonzero(~np.isfinite(flat).all(axis=1)).tolist():
            problems[i] = ("non_finite", "non-finite values (NaN or Inf)")
    if flat.shape[1] == 0:
        return problems
    if options.value_range is not None:
        low, high = options.value_range
        with np.errstate(invalid="ignore"):
            lowest, highest = flat.min(axis=1), flat.max(axis=1)
        outside = (lowest < low) | (highest > high)
        for i in np.flatnonzero(outside).tolist():
            problems.setdefault(
                i,
                (
                    "out_of_range",
                    f"values from {lowest[i]:g} to {highest[i]:g} outside the declared range "
                    f"[{low:g}, {high:g}]",
                ),
            )
    if image_like and flat.shape[1] > 1:
        constant = (flat == flat[:, :1]).all(axis=1)
        for i in np.flatnonzero(constant).tolist():
            problems.setdefault(i, ("constant", f"constant image (every value is {flat[i, 0]:g})"))
    return problems


def _hash(sample: np.ndarray) -> int:
    """64-bit content hash of one raw sample (its shape, dtype and bytes)."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update(f"{sample.dtype.str}{sample.shape}".encode())
    digest.update(np.ascontiguousarray(sample).data)
    return int.from_bytes(digest.digest(), "little")


def _rows_per_chunk(options: IngestOptions, *sample_shapes: tuple[int, ...]) -> int:
    largest = max(int(np.prod(shape, dtype=np.int64)) * 4 for shape in sample_shapes)
    return max(1, min(options.chunk_rows, options.shard_size, CHUNK_BYTES // max(largest, 1)))


# --- reading, checking and preprocessing chunks ----------------------------------------


def _drop_non_finite_outputs(
    out: np.ndarray, positions: np.ndarray, bad: dict[int, tuple[str, str]]
) -> np.ndarray:
    """Rows of ``out`` that preprocessing made NaN or Inf; marks them bad, returns a mask."""
    finite = np.isfinite(out.reshape(len(out), int(np.prod(out.shape[1:])))).all(axis=1)
    for position in positions[~finite].tolist():
        bad[position] = ("non_finite", "non-finite values after preprocessing")
    return finite


def _finish(ids, keep, out, hashes, y, sources, bad, out_shape, what: str) -> Prepared:
    if out.shape[1:] != tuple(out_shape):
        raise TestprioError(
            f"preprocessing gave samples of shape {out.shape[1:]} in one batch and "
            f"{tuple(out_shape)} in another ({what}); make every op return the same shape."
        )
    finite = _drop_non_finite_outputs(out, np.flatnonzero(keep), bad)
    if not finite.all():
        keep = keep.copy()
        keep[np.flatnonzero(keep)[~finite]] = False
        out = out[finite]
        hashes = None if hashes is None else hashes[finite]
    return Prepared(ids, keep, out, y, sources, bad, hashes)


def _prepare_arrays(
    pool: ArrayPool,
    chain: preprocess.Preprocessor,
    options: IngestOptions,
    raw_shape: tuple[int, ...],
    out_shape: tuple[int, ...],
    rows: int,
    *,
    hashing: bool,
) -> Iterator[Prepared]:
    offset = 0
    image_like = len(raw_shape) >= 2
    for chunk in pool.read_chunks(rows):
        check_numeric(pool.name, "inputs", chunk.x.dtype)
        n = len(chunk.x)
        x = chunk.x.reshape((n, *raw_shape))
        ids = np.arange(offset, offset + n, dtype=np.int64)
        offset += n
        sources = chunk.sources or [f"{pool.name}[{i}]" for i in ids.tolist()]
        bad = {i: ("unreadable", reason) for i, reason in (chunk.bad or {}).items()}
        for i, problem in _raw_problems(x, options, image_like).items():
            bad.setdefault(i, problem)
        keep = np.ones(n, dtype=bool)
        keep[list(bad)] = False
        good = x[keep] if bad else x
        hashes = (
            np.fromiter((_hash(sample) for sample in good), np.uint64, len(good))
            if hashing
            else None
        )
        out = chain.apply(good) if len(good) else np.empty((0, *out_shape), np.float32)
        yield _finish(ids, keep, out, hashes, chunk.y, sources, bad, out_shape, pool.name)


@dataclass
class _Loaded:
    sample: np.ndarray | None = None
    problem: tuple[str, str] | None = None
    digest: int | None = None
    raw_shape: tuple[int, ...] = ()


def _load_one(
    load: Callable[[str], np.ndarray],
    path: str,
    head: preprocess.Preprocessor,
    options: IngestOptions,
    hashing: bool,
) -> _Loaded:
    """Decode, check and preprocess one file."""
    try:
        raw = load(path)
    except BadSample as exc:
        return _Loaded(problem=("unreadable", str(exc)))
    problems = _raw_problems(raw[None], options, image_like=True)
    if problems:
        return _Loaded(problem=problems[0], raw_shape=raw.shape)
    digest = _hash(raw) if hashing else None
    try:
        sample = head.apply(raw[None])[0]
    except TestprioError as exc:
        return _Loaded(problem=("preprocessing", str(exc)), raw_shape=raw.shape)
    return _Loaded(sample, None, digest, raw.shape)


def _load_many(
    load: Callable[[str], np.ndarray],
    paths: list[str],
    head: preprocess.Preprocessor,
    options: IngestOptions,
    hashing: bool,
) -> list[_Loaded]:
    """``_load_one`` for each of ``paths``: one task of a decoding thread or process."""
    return [_load_one(load, path, head, options, hashing) for path in paths]


def _probe_files(pool: FilePool, head: preprocess.Preprocessor) -> tuple[int, ...]:
    """Shape of the first readable image after the per-file ops: the pool's shape."""
    first_problem = None
    for path in pool.files:
        try:
            raw = pool.load(path)
        except BadSample as exc:
            first_problem = first_problem or f"{path}: {exc}"
            continue
        return tuple(head.apply(raw[None]).shape[1:])
    raise TestprioError(
        f"none of the {pool.count:,} image files in {pool.name} could be read (first: "
        f"{first_problem}); check that the folder holds PNG, JPEG, BMP, PPM or GIF images."
    )


def _prepare_files(
    pool: FilePool,
    chain: preprocess.Preprocessor,
    options: IngestOptions,
    head_shape: tuple[int, ...],
    out_shape: tuple[int, ...],
    rows: int,
    executor: Executor,
    *,
    hashing: bool,
) -> Iterator[Prepared]:
    head, tail = chain.split()
    # Each chunk is split into a few tasks per worker: enough to keep every worker busy,
    # few enough that a task's overhead (pickling to a process) stays small.
    tasks_per_chunk = max(1, 4 * getattr(executor, "_max_workers", 1))
    labels = None if pool.labels is None else np.asarray(pool.labels, dtype=np.int64)

    def submit(start: int):
        paths = pool.files[start : start + rows]
        step = -(-len(paths) // tasks_per_chunk)
        return [
            executor.submit(_load_many, pool.load, paths[i : i + step], head, options, hashing)
            for i in range(0, len(paths), step)
        ]

    pending = submit(0) if pool.count else []
    for start in range(0, pool.count, rows):
        current = pending
        pending = submit(start + rows) if start + rows < pool.count else []  # decode ahead
        loaded = [item for future in current for item in future.result()]
        n = len(loaded)
        ids = np.arange(start, start + n, dtype=np.int64)
        bad: dict[int, tuple[str, str]] = {}
        for i, item in enumerate(loaded):
            if item.problem is not None:
                bad[i] = item.problem
            elif item.sample.shape != head_shape:
                shown = f"{item.raw_shape}" + (
                    f" (after per-image ops {item.sample.shape})" if head.ops else ""
                )
                bad[i] = (
                    "shape",
                    f"image of shape {shown} where the pool's images are {head_shape}; "
                    "add a resize op",
                )
        keep = np.ones(n, dtype=bool)
        keep[list(bad)] = False
        good = [item for item, kept in zip(loaded, keep, strict=True) if kept]
        stacked = (
            np.stack([item.sample for item in good])
            if good
            else np.empty((0, *head_shape), np.float32)
        )
        out = tail.apply(stacked) if len(good) else np.empty((0, *out_shape), np.float32)
        hashes = np.array([item.digest for item in good], dtype=np.uint64) if hashing else None
        y = None if labels is None else labels[start : start + n].astype(np.float64)
        sources = pool.files[start : start + n]
        yield _finish(ids, keep, out, hashes, y, list(sources), bad, out_shape, pool.name)


# --- the stage -------------------------------------------------------------------------


@dataclass
class _ShardSink:
    """Writes consecutive shards, opening each one's atomic writer as rows arrive."""

    layout: RunLayout
    schema: pa.Schema
    uris: list[str] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    _index: int = -1
    _context = None
    _writer = None

    def _open(self, index: int) -> None:
        self.close()
        uri = self.layout.data_shard(index)
        # No min/max statistics for the tensor column: they would copy two whole samples
        # per row group into the footer, which every reader then parses.
        self._context = storage.parquet_writer(
            uri,
            self.schema,
            compression="none",
            use_dictionary=False,
            write_statistics=[name for name in self.schema.names if name != "x"],
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
    check_numeric(name, "labels", y.dtype)
    unknown = np.isnan(y) if y.dtype.kind == "f" else np.zeros(len(y), dtype=bool)
    known = y[~unknown]
    if y.dtype.kind == "f" and not np.all(np.isfinite(known) & (known == np.round(known))):
        raise TestprioError(f"labels in {name} are not whole numbers; give integer labels.")
    if (known < 0).any():
        raise TestprioError(f"labels in {name} include negative values; use class indices 0..K-1.")
    too_large = known[known > LABEL_MAX]  # astype(int32) would wrap them around silently
    if too_large.size:
        raise TestprioError(
            f"labels in {name} include values from {int(too_large.min())} to "
            f"{int(too_large.max())}, above the largest label a shard holds ({LABEL_MAX}, "
            "int32); use class indices 0..K-1."
        )
    return pa.array(np.where(unknown, 0, y).astype(np.int32), mask=unknown)


LABEL_MAX = int(np.iinfo(np.int32).max)


def _progress(what: str, total: int | None) -> Progress:
    """Logs ``ingest: what done/total samples`` now and then."""
    return Progress(log, f"ingest: {what}", "samples", total)


@dataclass
class _Plan:
    """What ``_prepared`` needs to read the pool through a chain."""

    pool: ArrayPool | FilePool
    options: IngestOptions
    raw_shape: tuple[int, ...]  # array pools: per-sample shape after --input-shape
    executor: Executor | None

    def shapes(self, chain: preprocess.Preprocessor) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(shape the chain's per-file head gives, shape the whole chain gives)."""
        if isinstance(self.pool, FilePool):
            head, tail = chain.split()
            head_shape = _probe_files(self.pool, head)
            return head_shape, tail.output_shape(head_shape)
        return self.raw_shape, chain.output_shape(self.raw_shape)

    def prepared(
        self, chain: preprocess.Preprocessor, *, hashing: bool, shapes=None
    ) -> Iterator[Prepared]:
        """``shapes``: ``self.shapes(chain)`` when the caller has it already."""
        head_shape, out_shape = shapes or self.shapes(chain)
        rows = _rows_per_chunk(self.options, head_shape, out_shape)
        if isinstance(self.pool, FilePool):
            return _prepare_files(
                self.pool,
                chain,
                self.options,
                head_shape,
                out_shape,
                rows,
                self.executor,
                hashing=hashing,
            )
        return _prepare_arrays(
            self.pool, chain, self.options, self.raw_shape, out_shape, rows, hashing=hashing
        )


def _fit(plan: _Plan, chain: preprocess.Preprocessor) -> None:
    """Compute the statistics ops need (e.g. standardize without mean/std), one pass each."""
    while (index := chain.first_unfitted()) is not None:
        op = chain.ops[index]
        prefix = preprocess.Preprocessor(chain.ops[:index])
        progress = _progress(f"statistics for op {index + 1} ({op.name}):", plan.pool.count)
        op.fit(_fit_batches(plan, prefix, progress))


def _fit_batches(plan: _Plan, prefix: preprocess.Preprocessor, progress: Progress):
    """The good samples of the pool through ``prefix``, batch by batch, with progress."""
    done = 0
    for prepared in plan.prepared(prefix, hashing=False):
        _fail_on_bad(prepared, plan)
        done += len(prepared.ids)
        progress.update(done)
        if len(prepared.x):
            yield prepared.x
    progress.update(done, final=True)


def _fail_on_bad(prepared: Prepared, plan: _Plan) -> None:
    if plan.options.on_bad_sample == "fail" and prepared.bad:
        position = min(prepared.bad)
        kind, reason = prepared.bad[position]
        raise TestprioError(
            f"sample {int(prepared.ids[position])} ({prepared.sources[position]}) of "
            f"{plan.pool.name} cannot be used: {reason}; fix or remove it, or run with "
            "--on-bad-sample quarantine to set such samples aside."
        )


def ingest(layout: RunLayout, data_uri: str, options: IngestOptions | None = None, **overrides):
    """Split the pool at ``data_uri`` into preprocessed shards; return their URIs.

    ``options`` (or keyword overrides of its fields) say how to read and preprocess it.
    Writes ``data/quarantine.parquet``, ``data/duplicates.parquet`` and, last,
    ``data/manifest.json``; records the op list in ``run.json``.
    """
    options = options or IngestOptions()
    if overrides:
        options = IngestOptions(**{**options.__dict__, **overrides})
    check_values(options)
    remove_interrupted_writes(layout)
    limit = int(options.max_data_gb * 2**30)
    archive_limits = sources.ArchiveLimits(max_bytes=limit)
    with (
        build_preprocessor(options) as chain,  # checks the ops before any download
        sources.resolve(
            data_uri,
            max_download_bytes=limit,
            archive_limits=archive_limits,
            download_limits=sources.DownloadLimits(
                allow_private=options.allow_private_urls,
                deadline_s=options.download_timeout_s,
                min_bytes_per_s=options.download_min_bytes_per_s,
            ),
        ) as resolved,
    ):
        pool = open_pool(
            resolved.path,
            resolved.format,
            resolved.name,
            Columns(tensor=options.tensor_column, label=options.label_column),
            ReadLimits(archive=archive_limits, max_image_pixels=options.max_image_pixels),
        )
        if pool.count == 0:
            raise TestprioError(
                f"{pool.name} holds no samples; give a pool with at least one input."
            )
        raw_shape = _raw_shape(pool, options)
        log.info(
            "ingesting %s (%s): %s samples%s, labels: %s",
            pool.name,
            resolved.format,
            "?" if pool.count is None else f"{pool.count:,}",
            f" of shape {raw_shape}" if raw_shape else "",
            "yes" if pool.has_labels else "no",
        )
        with _decoders(pool, options) as executor:
            plan = _Plan(pool, options, raw_shape, executor)
            _fit(plan, chain)
            ops = chain.record()
            if ops:
                log.info("ingest: preprocessing %s", json.dumps(ops, default=str)[:500])
            manifest = _write_shards(layout, plan, chain)
        manifest.update(format=resolved.format, preprocessing=ops)
    record_in_run(layout, "preprocessing", ops)
    storage.write_json(layout.data_manifest, manifest)
    log.info(
        "ingest: %d shards written, %d samples quarantined, %d duplicates flagged",
        len(manifest["shards"]),
        manifest["quarantined"],
        manifest["duplicates"],
    )
    return [layout.data_shard(i) for i in range(len(manifest["shards"]))]


def _written_by_ingest(layout: RunLayout) -> Callable[[str], bool]:
    """Whether a file name in ``data/`` is one that ingest writes (and no one else)."""
    names = {uri.rsplit("/", 1)[-1] for uri in (layout.quarantine, layout.duplicates)}
    names.add(layout.data_manifest.rsplit("/", 1)[-1])
    return lambda name: name in names or SHARD_NAME_PATTERN.match(name) is not None


def remove_interrupted_writes(layout: RunLayout) -> None:
    """Remove what an ingest of this run killed mid-write left in ``data/`` (the temporaries
    of its shards, quarantine and duplicates lists and manifest): one ingest runs per run at
    a time, so none of them is another's live write."""
    removed = storage.remove_staged(layout.data_dir, _written_by_ingest(layout))
    if removed:
        log.info(
            "ingest: removed %d temporary file(s) an interrupted ingest left in %s",
            len(removed),
            layout.data_dir,
        )


CGROUP_CPU_LIMITS = (
    ("/sys/fs/cgroup/cpu.max", None),  # cgroup v2: "QUOTA PERIOD" or "max PERIOD"
    ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu/cpu.cfs_period_us"),  # v1
)


def available_cpus() -> int:
    """CPUs this process may use: its CPU affinity, capped by a container's CPU limit.

    ``os.cpu_count()`` is the node's count: in a pod limited to 2 CPUs on a 64-core node,
    64 decoding workers would only contend (and each holds its own buffers).
    """
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    for quota_file, period_file in CGROUP_CPU_LIMITS:
        try:
            with open(quota_file) as handle:
                fields = handle.read().split()
            if period_file:
                with open(period_file) as handle:
                    fields.append(handle.read().strip())
            quota, period = fields[0], fields[1]
        except (OSError, IndexError):
            continue
        if quota not in ("max", "-1") and float(period) > 0:
            count = min(count or 1, max(1, int(-(-float(quota) // float(period)))))
        break
    return max(1, count or 1)


def _decoders(pool: ArrayPool | FilePool, options: IngestOptions) -> Executor:
    """Where image files are decoded: worker processes for a large folder (Python's GIL
    would serialize threads on small images), threads otherwise."""
    workers = options.workers or available_cpus()
    if isinstance(pool, FilePool) and workers > 1 and pool.count >= PROCESS_DECODING_MIN_FILES:
        log.info("ingest: decoding images in %d processes", workers)
        # forkserver: a fork of this process (threads of storage clients) is not safe.
        context = multiprocessing.get_context("forkserver")
        return ProcessPoolExecutor(workers, mp_context=context)
    return ThreadPoolExecutor(workers, thread_name_prefix="decode")


def _raw_shape(pool: ArrayPool | FilePool, options: IngestOptions) -> tuple[int, ...]:
    """Per-sample shape the chain sees: an array pool's, reshaped by --input-shape."""
    if isinstance(pool, FilePool):
        if options.input_shape is not None:
            raise TestprioError(
                f"--input-shape reshapes array pools, but {pool.name} is an image folder; "
                "leave it out and give ops (e.g. resize, layout) that make the shape."
            )
        return ()
    shape = pool.sample_shape
    if options.input_shape is not None:
        if int(np.prod(options.input_shape)) != int(np.prod(shape)):
            raise TestprioError(
                f"--input-shape {options.input_shape} has {int(np.prod(options.input_shape))} "
                f"values but samples in {pool.name} have shape {shape}; give a shape with the "
                "same number of values."
            )
        shape = options.input_shape
    return tuple(shape)


def _write_shards(layout: RunLayout, plan: _Plan, chain: preprocess.Preprocessor) -> dict:
    pool, options = plan.pool, plan.options
    shapes = plan.shapes(chain)
    out_shape = shapes[1]
    sink = _ShardSink(layout, shard_schema(out_shape))
    quarantine_context = storage.parquet_writer(layout.quarantine, QUARANTINE_SCHEMA)
    quarantine = quarantine_context.__enter__()
    kinds: Counter[str] = Counter()
    digests: list[tuple[np.ndarray, np.ndarray]] = []
    progress = _progress("read", pool.count)
    samples = 0
    try:
        for prepared in plan.prepared(chain, hashing=True, shapes=shapes):
            _fail_on_bad(prepared, plan)
            _write_prepared(sink, prepared, pool.name, options.shard_size)
            if prepared.bad:
                positions = sorted(prepared.bad)
                kinds.update(prepared.bad[p][0] for p in positions)
                quarantine.write_table(
                    pa.table(
                        {
                            "sample_id": prepared.ids[positions],
                            "source": [prepared.sources[p] for p in positions],
                            "kind": [prepared.bad[p][0] for p in positions],
                            "reason": [prepared.bad[p][1] for p in positions],
                        },
                        schema=QUARANTINE_SCHEMA,
                    )
                )
            digests.append((prepared.ids[prepared.keep], prepared.hashes))
            samples += len(prepared.ids)
            progress.update(samples)
        if samples == 0:
            raise TestprioError(
                f"{pool.name} holds no samples; give a pool with at least one input."
            )
        while sink._index < (samples - 1) // options.shard_size:  # shards of only bad samples
            sink.write(sink._index + 1, _empty_batch(sink.schema))
    except BaseException as exc:
        sink.abort(exc)
        quarantine_context.__exit__(type(exc), exc, exc.__traceback__)
        raise
    sink.close()
    quarantine_context.__exit__(None, None, None)
    progress.update(samples, final=True)
    duplicates = _write_duplicates(layout, digests)
    quarantined = sum(kinds.values())
    return {
        "source": pool.name,
        "samples": samples,
        "ingested": samples - quarantined,
        "quarantined": quarantined,
        "quarantine_kinds": dict(sorted(kinds.items())),
        "duplicates": duplicates,
        "sample_shape": list(out_shape),
        "shard_format": SHARD_FORMAT,
        "raw_sample_shape": list(plan.raw_shape) or None,
        "has_labels": pool.has_labels,
        "class_names": pool.class_names,
        "shards": [{"name": shard_name(i), "rows": rows} for i, rows in enumerate(sink.rows)],
    }


def _empty_batch(schema: pa.Schema) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist([], schema=schema)


def _write_prepared(sink: _ShardSink, prepared: Prepared, name: str, shard_size: int) -> None:
    """Cut ``prepared`` at shard boundaries: shard i holds ids [i*size, (i+1)*size)."""
    ids, keep = prepared.ids, prepared.keep
    kept_before = np.concatenate([[0], np.cumsum(keep)])
    start, n = 0, len(ids)
    while start < n:
        shard_index = int(ids[start]) // shard_size
        stop = min(n, (shard_index + 1) * shard_size - int(ids[0]))
        segment = keep[start:stop]
        rows = slice(int(kept_before[start]), int(kept_before[stop]))
        y = None if prepared.y is None else np.asarray(prepared.y)[start:stop][segment]
        sources = [s for s, k in zip(prepared.sources[start:stop], segment, strict=True) if k]
        kept_ids = ids[start:stop][segment]
        labels = _to_labels(y, len(kept_ids), name)
        batch = shard_record_batch(prepared.x[rows], kept_ids, labels, sources, sink.schema)
        sink.write(shard_index, batch)
        start = stop


def _write_duplicates(layout: RunLayout, digests: list[tuple[np.ndarray, np.ndarray]]) -> int:
    """List every sample whose raw content equals an earlier one's; return how many."""
    ids = np.concatenate([d[0] for d in digests]) if digests else np.empty(0, np.int64)
    hashes = np.concatenate([d[1] for d in digests]) if digests else np.empty(0, np.uint64)
    order = np.lexsort((ids, hashes))
    ids, hashes = ids[order], hashes[order]
    repeat = np.zeros(len(ids), dtype=bool)
    repeat[1:] = hashes[1:] == hashes[:-1]
    group_start = np.maximum.accumulate(np.where(~repeat, np.arange(len(ids)), 0))
    table = pa.table(
        {"sample_id": ids[repeat], "duplicate_of": ids[group_start][repeat]},
        schema=DUPLICATES_SCHEMA,
    ).sort_by("sample_id")
    storage.write_table(layout.duplicates, table)
    return table.num_rows
