"""Score: one sample shard -> ``scores/shard-NNNNN.parquet``.

Streams the shard's row groups in batches through one ONNX Runtime session (CUDA when
available) and writes, per sample: ``sample_id``, ``predicted``, ``confidence``, every
uncertainty metric, ``probs`` and ``label``. Only one batch of tensors is in memory at a
time. A shard whose scores file already exists is complete (files are published
atomically), so a retried task skips it.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pyarrow as pa

from testprio import storage
from testprio.errors import TestprioError
from testprio.ingest import shard_batches
from testprio.layout import RunLayout
from testprio.log import get_logger
from testprio.metrics import METRICS, score_probabilities, softmax
from testprio.model import (
    TensorSpec,
    check_finite,
    check_sample_shape,
    create_session,
    run_class_output,
)

log = get_logger("score")

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


def scores_uri_for(layout: RunLayout, shard_uri: str) -> str:
    return storage.join(layout.scores_dir, os.path.basename(shard_uri))


def score_shard(layout: RunLayout, shard_uri: str, *, batch_size: int = 256) -> dict:
    """Score every sample of one shard; return ``{"uri", "rows", "seconds", "skipped"}``."""
    if batch_size <= 0:
        raise TestprioError(f"--batch-size {batch_size} must be a positive number of samples.")
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
        session = create_session(model_path)
    started = time.time()
    rows = 0
    with (
        storage.open_parquet(shard_uri) as parquet,
        storage.parquet_writer(target, SCORES_SCHEMA) as writer,
    ):
        total = parquet.metadata.num_rows
        for batch, x in shard_batches(parquet, batch_size):
            if rows == 0:
                check_sample_shape(input_spec, tuple(x.shape[1:]), source_name)
            outputs = run_class_output(session, input_spec.name, output_name, x, source_name)
            check_finite(outputs, batch.column("sample_id").to_numpy(), source_name)
            writer.write_batch(
                _scores_batch(batch, class_probabilities(outputs, model["output_kind"]))
            )
            rows += batch.num_rows
            if rows == total or rows // batch_size % 100 == 0:
                log.info("score %s: %s/%s rows scored", name, f"{rows:,}", f"{total:,}")
    seconds = time.time() - started
    log.info(
        "score %s: %d rows in %.2f s (%.0f rows/s)",
        name,
        rows,
        seconds,
        rows / seconds if seconds else float("inf"),
    )
    return {"uri": target, "rows": rows, "seconds": seconds, "skipped": False}
