"""Score: one sample shard -> ``scores/shard-NNNNN.parquet``.

Streams the shard in chunks of about ``CHUNK_BYTES`` of input, each run in inference
batches through one ONNX Runtime session (CUDA with IO binding when the task has a GPU),
and writes, per sample: ``sample_id``, ``predicted``, ``confidence``, every uncertainty
metric, ``probs`` and ``label``. Only one chunk of tensors (and the next, being read) is in
memory at a time. A shard whose scores file already exists is complete (files are
published atomically), so a retried task skips it.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Iterator
from typing import TypeVar

import numpy as np
import pyarrow as pa

from testprio import storage
from testprio.errors import TestprioError
from testprio.ingest import shard_batches, shard_sample_shape
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

log = get_logger("score")
T = TypeVar("T")

# Rows are read, scored and written as one row group in chunks of about this many bytes of
# input (at least one inference batch): large enough that per-chunk overhead vanishes, small
# enough that memory stays flat (bigger chunks fragment the heap across the prefetch thread).
CHUNK_BYTES = 16 * 2**20
SCORE_COLUMNS = ("predicted", "confidence", *METRICS)
SCORES_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.int64(), nullable=False),
        pa.field("predicted", pa.int32(), nullable=False),
        pa.field("confidence", pa.float32(), nullable=False),
        *(pa.field(name, pa.float32(), nullable=False) for name in METRICS),
        pa.field("probs", pa.list_(pa.float32())),
        pa.field("label", pa.int32()),
    ]
)


def class_probabilities(outputs: np.ndarray, output_kind: str) -> np.ndarray:
    """``(N, K)`` class outputs -> probabilities; probabilities are never softmaxed again."""
    if output_kind == "probabilities":
        return outputs.astype(np.float64, copy=False)
    return softmax(outputs)


def _scores_batch(batch: pa.RecordBatch, probs: np.ndarray) -> pa.RecordBatch:
    scores = score_probabilities(probs)
    n, k = probs.shape
    offsets = pa.array(np.arange(0, (n + 1) * k, k, dtype=np.int32))
    prob_lists = pa.ListArray.from_arrays(offsets, pa.array(probs.astype(np.float32).ravel()))
    columns = [batch.column("sample_id"), *(pa.array(scores[c]) for c in SCORE_COLUMNS)]
    return pa.RecordBatch.from_arrays(
        [*columns, prob_lists, batch.column("label")], schema=SCORES_SCHEMA
    )


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


def scores_uri_for(layout: RunLayout, shard_uri: str) -> str:
    return storage.join(layout.scores_dir, os.path.basename(shard_uri))


def score_shard(
    layout: RunLayout,
    shard_uri: str,
    *,
    batch_size: int = 256,
    gpu_batch_size: int = 0,
    device: str = "auto",
) -> dict:
    """Score every sample of one shard; return ``{"uri", "rows", "seconds", "skipped"}``.

    On ``device`` (auto, cuda, cpu; see ``testprio.model.create_session``). A session that
    runs on CUDA feeds batches of ``gpu_batch_size`` (0: ``batch_size``) through IO binding;
    ``device`` and ``batch_size`` in the result say what was used.
    """
    if batch_size <= 0:
        raise TestprioError(f"--batch-size {batch_size} must be a positive number of samples.")
    if gpu_batch_size < 0:
        raise TestprioError(
            f"--gpu-batch-size {gpu_batch_size} must be a positive number of samples, or 0 to "
            "use --batch-size on the GPU too."
        )
    target = scores_uri_for(layout, shard_uri)
    name = os.path.basename(shard_uri)
    if storage.exists(target):
        log.info("score %s: already complete, skipped", name)
        return {"uri": target, "rows": None, "seconds": 0.0, "skipped": True}
    model = storage.read_json(layout.model_json)
    input_spec = TensorSpec(**model["input"])
    output_name = model["class_output"]["name"]
    source_name = model["source"]["name"]
    with storage.local_copy(layout.model_onnx) as model_path:
        session = create_session(model_path, device=device)
    runner = None
    if session_device(session) == "cuda":
        batch_size = gpu_batch_size or batch_size
        runner = BoundRunner(session, input_spec.name, output_name, "cuda")
    log.info("score %s: %s, batches of %d", name, session_device(session), batch_size)
    started = time.time()
    rows = 0
    with (
        storage.open_parquet(shard_uri) as parquet,
        storage.parquet_writer(target, SCORES_SCHEMA, use_dictionary=False) as writer,
    ):
        total = parquet.metadata.num_rows
        # Read, check and write in chunks of many inference batches: per-call overhead of
        # Parquet decoding, metrics and row groups stays small next to inference.
        sample_bytes = 4 * int(np.prod(shard_sample_shape(parquet.schema_arrow)))
        chunk_rows = max(batch_size, CHUNK_BYTES // sample_bytes)
        for chunk, x in _prefetched(shard_batches(parquet, chunk_rows, name=shard_uri)):
            if rows == 0:
                check_sample_shape(input_spec, tuple(x.shape[1:]), source_name)
            outputs = np.concatenate(
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
            check_finite(outputs, chunk.column("sample_id").to_numpy(), source_name)
            writer.write_batch(
                _scores_batch(chunk, class_probabilities(outputs, model["output_kind"]))
            )
            rows += chunk.num_rows
            log.info("score %s: %s/%s rows scored", name, f"{rows:,}", f"{total:,}")
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
    }
