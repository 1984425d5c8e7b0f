"""Score: one sample shard -> ``scores/shard-NNNNN.parquet``.

Streams the shard in chunks of about ``CHUNK_BYTES`` of input, each run in inference
batches through one ONNX Runtime session (CUDA with IO binding when the task has a GPU),
and writes, per sample: ``sample_id``, ``predicted``, ``confidence``, every uncertainty
metric, ``probs`` and ``label``. Only one chunk of tensors (and the next, being read) is in
memory at a time. A shard whose scores file already exists is complete (files are
published atomically), so a retried task skips it.

Optional prioritizers, from the same pass (scores format 2, ``SCORES_FORMAT``):

- with a reference (``{run}/reference/profile.json``, written by ``testprio.reference``
  when the run has ``--train-data``) the session also returns the hidden layers: coverage
  columns ``nac``, ``kmnc``, ``nbc``, ``snac``, ``tknc`` (int32 cells covered, CTM) and
  surprise columns ``lsa``, ``dsa``, ``mdsa`` (float32); the covered cells, packed 8 per
  byte, go to ``{run}/cells/shard-NNNNN.parquet`` (one ``fixed_size_binary`` column per
  coverage metric) for the rank stage's coverage-additive (CAM) orders;
- with ``metamorphic`` transforms, ``instability`` (float32), and the follow-ups' design
  rows in ``{run}/metamorphic/shard-NNNNN.parquet`` for the rank stage's attribution.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import queue
import threading
import time
from collections.abc import Iterator
from typing import TypeVar

import numpy as np
import pyarrow as pa

from testprio import coverage, metamorphic, storage, surprise
from testprio.errors import TestprioError
from testprio.ingest.shards import TENSOR_DTYPE, shard_batches, shard_sample_shape
from testprio.layout import RunLayout
from testprio.log import get_logger
from testprio.metrics import METRICS, score_probabilities, softmax
from testprio.model import (
    BoundRunner,
    TensorSpec,
    check_finite,
    check_sample_shape,
    create_session,
    run_class_output,
    session_device,
)
from testprio.prioritizers import COVERAGE_COLUMNS, INSTABILITY, SURPRISE_COLUMNS
from testprio.reference import HiddenPass, LoadedReference

log = get_logger("score")
T = TypeVar("T")

# Rows are read, scored and written as one row group in chunks of about this many bytes of
# input (at least one inference batch): large enough that per-chunk overhead vanishes, small
# enough that memory stays flat (bigger chunks fragment the heap across the prefetch thread).
CHUNK_BYTES = 16 * 2**20
SCORE_COLUMNS = ("predicted", "confidence", *METRICS)
# Scores format 2 may hold the optional prioritizer columns (format 1, without this key in
# the schema metadata, never does); a reader finds them by name.
SCORES_FORMAT = 2
SCORES_FORMAT_KEY = b"testprio.scores_format"
CELLS_KEY_PREFIX = "testprio.cells."  # + coverage metric -> its number of cells
# The type of each optional column: cell counts are whole numbers, the rest float32.
OPTIONAL_TYPES = {
    **{name: pa.int32() for name in COVERAGE_COLUMNS},
    **{name: pa.float32() for name in SURPRISE_COLUMNS},
    INSTABILITY: pa.float32(),
}


def scores_schema(optional: tuple[str, ...] | list[str] = ()) -> pa.Schema:
    """The scores shard schema with the ``optional`` prioritizer columns (in
    ``OPTIONAL_TYPES`` order, between the class metrics and ``probs``)."""
    extra = [name for name in OPTIONAL_TYPES if name in optional]
    return pa.schema(
        [
            pa.field("sample_id", pa.int64(), nullable=False),
            pa.field("predicted", pa.int32(), nullable=False),
            pa.field("confidence", pa.float32(), nullable=False),
            *(pa.field(name, pa.float32(), nullable=False) for name in METRICS),
            *(pa.field(name, OPTIONAL_TYPES[name], nullable=False) for name in extra),
            pa.field("probs", pa.list_(pa.float32())),
            pa.field("label", pa.int32()),
        ],
        metadata={SCORES_FORMAT_KEY: str(SCORES_FORMAT).encode()},
    )


SCORES_SCHEMA = scores_schema()


def class_probabilities(outputs: np.ndarray, output_kind: str) -> np.ndarray:
    """``(N, K)`` class outputs -> probabilities; probabilities are never softmaxed again."""
    if output_kind == "probabilities":
        return outputs.astype(np.float64, copy=False)
    return softmax(outputs)


def _scores_batch(
    batch: pa.RecordBatch,
    probs: np.ndarray,
    extra: dict[str, np.ndarray] | None = None,
    schema: pa.Schema = SCORES_SCHEMA,
) -> pa.RecordBatch:
    scores = score_probabilities(probs)
    scores.update(extra or {})
    n, k = probs.shape
    offsets = pa.array(np.arange(0, (n + 1) * k, k, dtype=np.int32))
    prob_lists = pa.ListArray.from_arrays(offsets, pa.array(probs.astype(np.float32).ravel()))
    named = [name for name in schema.names if name not in ("sample_id", "probs", "label")]
    columns = [
        batch.column("sample_id"),
        *(pa.array(scores[c], schema.field(c).type) for c in named),
    ]
    return pa.RecordBatch.from_arrays([*columns, prob_lists, batch.column("label")], schema=schema)


def parse_metamorphic(text: str) -> list[str] | None:
    """``--metamorphic``: '' -> None (off); ``default`` -> [] (the defaults of the sample
    layout); else the comma list of transforms, each checked."""
    names = [name.strip() for name in (text or "").split(",") if name.strip()]
    if not names:
        return None
    if names == ["default"]:
        return []
    unknown = [name for name in names if name not in metamorphic.TRANSFORMS]
    if unknown:
        raise TestprioError(
            f"--metamorphic names an unknown transform '{unknown[0]}'; give default or a comma "
            f"list of {', '.join(metamorphic.TRANSFORMS)}."
        )
    return names


def cells_uri_for(layout: RunLayout, shard_uri: str) -> str:
    return storage.join(layout.uri, "cells", os.path.basename(shard_uri))


def metamorphic_uri_for(layout: RunLayout, shard_uri: str) -> str:
    return storage.join(layout.uri, "metamorphic", os.path.basename(shard_uri))


def cells_schema(reference: LoadedReference) -> pa.Schema:
    """``sample_id`` and, per coverage metric, each sample's covered cells packed by
    ``np.packbits`` (``fixed_size_binary``); the cell counts in the metadata."""
    fields = [pa.field("sample_id", pa.int64(), nullable=False)]
    metadata = {}
    for name in COVERAGE_COLUMNS:
        cells = reference.cells(name)
        fields.append(pa.field(name, pa.binary((cells + 7) // 8), nullable=False))
        metadata[f"{CELLS_KEY_PREFIX}{name}"] = str(cells)
    return pa.schema(fields, metadata=metadata)


def packed_array(packed: np.ndarray) -> pa.Array:
    """``(n, width)`` uint8 rows -> a ``fixed_size_binary(width)`` array (one copy)."""
    n, width = packed.shape
    data = pa.py_buffer(np.ascontiguousarray(packed).tobytes())
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), n, [None, data])


def metamorphic_schema(transforms: list[str]) -> pa.Schema:
    """The design rows' schema (``testprio.metamorphic.MetamorphicResult.design``)."""
    fields = [pa.field("sample_id", pa.int64()), pa.field("followup", pa.int64())]
    fields += [pa.field(name, pa.int8()) for name in transforms]
    fields += [
        pa.field(f"{name}_{param}", pa.float64())
        for name in transforms
        for param in metamorphic.TRANSFORMS[name].params
    ]
    fields += [
        pa.field("source_class", pa.int64()),
        pa.field("followup_class", pa.int64()),
        pa.field("violated", pa.int8()),
    ]
    return pa.schema(fields)


class _Metamorphic:
    """Instability of a chunk's samples under metamorphic follow-ups (seed 0: a sample's
    follow-ups depend only on its id, so any sharding gives the same values)."""

    def __init__(self, transforms: list[str], followups: int, sample_shape: tuple[int, ...]):
        # The same layout rule and narrower ranges for tiny images as the evaluate stage's,
        # so a ranking's instability equals the evaluation's.
        self.layout = metamorphic.image_layout(sample_shape)
        self.transforms = [
            name
            for name in metamorphic.TRANSFORMS
            if name in (transforms or metamorphic.default_transforms(self.layout))
        ]
        ranges = metamorphic.metamorphic_ranges(sample_shape, self.layout)
        self.ranges = ranges and {n: ranges[n] for n in self.transforms if n in ranges}
        self.followups = followups
        self.schema = metamorphic_schema(self.transforms)

    def __call__(self, predict, x: np.ndarray, sample_ids: np.ndarray):
        result = metamorphic.run_metamorphic(
            predict,
            x,
            transforms=self.transforms,
            followups=self.followups,
            seed=0,
            layout=self.layout,
            ranges=self.ranges,
            sample_ids=sample_ids,
        )
        design = pa.table(
            {name: result.design[name] for name in self.schema.names}, schema=self.schema
        )
        return result.instability.astype(np.float32), design


def _prefetched(items: Iterator[T]) -> Iterator[T]:
    """``items``, produced one ahead in a background thread.

    Decoding the next chunk of a shard (Arrow releases the GIL) overlaps inference on the
    current one, which on a GPU node leaves the CPU otherwise idle.
    """
    ready: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()
    done = object()

    def offer(item) -> bool:
        """Put ``item`` unless the consumer has stopped; False when it has."""
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not offer(item):
                    return
            offer(done)
        except BaseException as exc:  # handed to the consumer, raised there
            offer(exc)

    thread = threading.Thread(target=produce, name="testprio-prefetch", daemon=True)
    thread.start()
    try:
        while (item := ready.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


class _Pipelined:
    """Runs submitted calls one at a time, in order, on one background thread, at most one
    behind the caller: ``submit`` first waits for the previous call and raises its error.

    ``drain`` waits for the last call; leaving the ``with`` block without it (an error on
    the caller's side) still waits for the running call, so nothing writes after the files
    it writes to are closed.
    """

    def __init__(self) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="testprio-post")
        self._pending: concurrent.futures.Future | None = None

    def submit(self, function, *args) -> None:
        self.drain()
        self._pending = self._pool.submit(function, *args)

    def drain(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def __enter__(self) -> _Pipelined:
        return self

    def __exit__(self, *exc_info) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def scores_uri_for(layout: RunLayout, shard_uri: str) -> str:
    return storage.join(layout.scores_dir, os.path.basename(shard_uri))


def score_shard(
    layout: RunLayout,
    shard_uri: str,
    *,
    batch_size: int = 256,
    gpu_batch_size: int = 0,
    device: str = "auto",
    metamorphic: str = "",
    followups: int = 10,
) -> dict:
    """Score every sample of one shard; return ``{"uri", "rows", "seconds", "skipped"}``.

    On ``device`` (auto, cuda, cpu; see ``testprio.model.create_session``). A session that
    runs on CUDA feeds batches of ``gpu_batch_size`` (0: ``batch_size``) through IO binding;
    ``device`` and ``batch_size`` in the result say what was used. With the run's reference
    (``testprio.reference``) the same pass gives coverage and surprise columns; with
    ``metamorphic`` transforms (``parse_metamorphic``), ``followups`` follow-ups per sample
    give ``instability``. ``prioritizers`` in the result lists the optional columns.
    """
    if batch_size <= 0:
        raise TestprioError(f"--batch-size {batch_size} must be a positive number of samples.")
    if gpu_batch_size < 0:
        raise TestprioError(
            f"--gpu-batch-size {gpu_batch_size} must be a positive number of samples, or 0 to "
            "use --batch-size on the GPU too."
        )
    if int(followups) < 1:
        raise TestprioError(f"--followups {followups} must be a positive number.")
    transforms = parse_metamorphic(metamorphic)
    target = scores_uri_for(layout, shard_uri)
    name = os.path.basename(shard_uri)
    if storage.exists(target):
        log.info("score %s: already complete, skipped", name)
        return {"uri": target, "rows": None, "seconds": 0.0, "skipped": True}
    model = storage.read_json(layout.model_json)
    input_spec = TensorSpec(**model["input"])
    output_name = model["class_output"]["name"]
    source_name = model["source"]["name"]
    reference = LoadedReference(layout) if LoadedReference.exists(layout) else None
    hidden = None
    if reference is not None:
        # The hidden layers come out of the same run as the class scores: a plain
        # session.run (IO binding binds the class output only).
        hidden = HiddenPass(
            layout, reference.layers, surprise_reduce=reference.surprise_reduce, device=device
        )
        session = hidden.session
    else:
        with storage.local_copy(layout.model_onnx) as model_path:
            session = create_session(model_path, device=device)
    runner = None
    if session_device(session) == "cuda":
        batch_size = gpu_batch_size or batch_size
        if hidden is None:
            runner = BoundRunner(session, input_spec.name, output_name, "cuda")
    optional = [
        *((*COVERAGE_COLUMNS, *reference.surprise_metrics) if reference else ()),
        *((INSTABILITY,) if transforms is not None else ()),
    ]
    schema = scores_schema(optional)
    log.info(
        "score %s: %s, batches of %d%s",
        name,
        session_device(session),
        batch_size,
        f", with {', '.join(optional)}" if optional else "",
    )

    def predict(x: np.ndarray) -> np.ndarray:
        return np.concatenate(
            [
                run_class_output(
                    session,
                    input_spec.name,
                    output_name,
                    x[start : start + batch_size],
                    source_name,
                    runner=runner,
                )
                for start in range(0, len(x), batch_size)
            ]
        )

    started = time.time()
    rows = 0
    with contextlib.ExitStack() as files:
        parquet = files.enter_context(storage.open_parquet(shard_uri))
        # Entered first, so closed (published) last: the scores file marks the shard done.
        writer = files.enter_context(storage.parquet_writer(target, schema, use_dictionary=False))
        sample_shape = tuple(shard_sample_shape(parquet.schema_arrow))
        cells_writer = design_writer = unstable = cells = None
        if reference is not None:
            cells = cells_schema(reference)
            cells_writer = files.enter_context(
                storage.parquet_writer(
                    cells_uri_for(layout, shard_uri), cells, use_dictionary=False
                )
            )
        if transforms is not None:
            unstable = _Metamorphic(transforms, int(followups), sample_shape)
            design_writer = files.enter_context(
                storage.parquet_writer(metamorphic_uri_for(layout, shard_uri), unstable.schema)
            )
        total = parquet.metadata.num_rows

        def finish(
            chunk: pa.RecordBatch,
            outputs: np.ndarray,
            layers: tuple[list[np.ndarray], np.ndarray] | None,
            instability: np.ndarray | None,
            design: pa.Table | None,
        ) -> None:
            """Softmax, metrics and the writes of one inferred chunk (on the post thread)."""
            nonlocal rows
            extra: dict[str, np.ndarray] = {}
            probs = class_probabilities(outputs, model["output_kind"])
            if layers is not None:
                packed = _reference_scores(reference, layers, probs.argmax(axis=1), extra)
                cells_writer.write_batch(
                    pa.RecordBatch.from_arrays(
                        [
                            chunk.column("sample_id"),
                            *(packed_array(packed[c]) for c in COVERAGE_COLUMNS),
                        ],
                        schema=cells,
                    )
                )
            if design is not None:
                extra[INSTABILITY] = instability
                design_writer.write_table(design)
            writer.write_batch(_scores_batch(chunk, probs, extra, schema))
            rows += chunk.num_rows
            log.info("score %s: %s/%s rows scored", name, f"{rows:,}", f"{total:,}")

        # Read, check and write in chunks of whole inference batches (no ragged batch per
        # chunk): per-call overhead of Parquet decoding, metrics and row groups stays small
        # next to inference. Three threads overlap: the next chunk is read while this one is
        # inferred, and the last one's metrics and writes run meanwhile (``_Pipelined``). On
        # a GPU node, where the CPU is otherwise idle, the stage then takes about as long as
        # the slowest of the three instead of their sum.
        sample_bytes = TENSOR_DTYPE.itemsize * int(np.prod(sample_shape))
        chunk_rows = batch_size * max(1, CHUNK_BYTES // (sample_bytes * batch_size))
        post = files.enter_context(_Pipelined())
        check_sample_shape(input_spec, sample_shape, source_name)
        for chunk, x in _prefetched(shard_batches(parquet, chunk_rows, name=shard_uri)):
            sample_ids = chunk.column("sample_id").to_numpy()
            layers = instability = design = None
            if hidden is None:
                outputs = predict(x)
            else:
                outputs, layers = _hidden_chunk(hidden, x, batch_size)
            check_finite(outputs, sample_ids, source_name)
            if unstable is not None:
                # Inference again, so on this thread: an IO binding is not thread-safe.
                instability, design = unstable(predict, x, sample_ids)
            ids_and_labels = chunk.select(["sample_id", "label"])
            post.submit(finish, ids_and_labels, outputs, layers, instability, design)
        post.drain()
    seconds = time.time() - started
    log.info(
        "score %s: %d rows in %.2f s (%.0f rows/s)",
        name,
        rows,
        seconds,
        rows / seconds if seconds else float("inf"),
    )
    return {
        "uri": target,
        "rows": rows,
        "seconds": seconds,
        "skipped": False,
        "device": session_device(session),
        "batch_size": batch_size,
        "prioritizers": optional,
    }


def _hidden_chunk(
    hidden: HiddenPass, x: np.ndarray, batch_size: int
) -> tuple[np.ndarray, tuple[list[np.ndarray], np.ndarray]]:
    """Class outputs ``(n, K)``, and per-layer ``(n, units)`` activations with the surprise
    vectors ``(n, surprise units)`` of a chunk."""
    outputs, layers, vectors = [], [], []
    for start in range(0, len(x), batch_size):
        out, acts, surprise_vectors = hidden(x[start : start + batch_size])
        outputs.append(out)
        layers.append(acts)
        vectors.append(surprise_vectors)
    joined = [np.concatenate(parts) for parts in zip(*layers, strict=True)]
    return np.concatenate(outputs), (joined, np.concatenate(vectors))


def _reference_scores(
    reference: LoadedReference,
    hidden: tuple[list[np.ndarray], np.ndarray],
    predicted: np.ndarray,
    extra: dict[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """Coverage (CTM counts) and surprise columns into ``extra``; returns each coverage
    metric's covered cells, ``np.packbits`` rows. ``hidden``: the per-layer activations and
    the surprise vectors (``HiddenPass``)."""
    layers, vectors = hidden
    packed = {}
    for metric in COVERAGE_COLUMNS:
        counts, covered = coverage.COVERAGE_METRICS[metric](
            layers, reference.profile, **reference.coverage_params[metric]
        )
        extra[metric] = counts.astype(np.int32)
        packed[metric] = np.packbits(covered, axis=1)
        del covered
    for metric in reference.surprise_metrics:
        extra[metric] = surprise.SURPRISE_METRICS[metric](
            reference.surprise, vectors, predicted
        ).astype(np.float32)
    return packed
