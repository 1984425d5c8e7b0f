"""The evaluation's three labeled data sets: ingested like a run's pool, read back whole
(``Labeled``), the test split held out of the pool when none is given, and the model's class
probabilities of each."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from testprio import ingest, storage
from testprio.errors import TestprioError
from testprio.ingest import sources
from testprio.layout import RunLayout
from testprio.log import get_logger

log = get_logger("evaluate")

# Samples per inference call of the converted model.
INFERENCE_BATCH = 512


@dataclass(frozen=True)
class Labeled:
    """One ingested data set: ``ids (N,)`` int64, ``x (N, *shape)`` float32, ``y (N,)`` int64."""

    ids: np.ndarray
    x: np.ndarray
    y: np.ndarray

    def subset(self, positions: np.ndarray) -> Labeled:
        return Labeled(self.ids[positions], self.x[positions], self.y[positions])


def read_labeled(layout: RunLayout, what: str) -> Labeled:
    """Every sample of ``layout``'s shards; ``what`` names the data set in errors."""
    manifest = storage.read_json(layout.data_manifest)
    ids, xs, ys = [], [], []
    for shard in manifest["shards"]:
        uri = storage.join(layout.data_dir, shard["name"])
        for batch, x in ingest.iter_shard_batches(uri, 4096):
            labels = batch.column("label")
            if labels.null_count:
                raise TestprioError(
                    f"{labels.null_count} sample(s) of {what} have no label; the evaluation "
                    "needs every sample of the pool, test and training data labeled (.npz "
                    "key y, a label column, or class folders)."
                )
            ids.append(batch.column("sample_id").to_numpy())
            xs.append(np.array(x, dtype=np.float32))
            ys.append(labels.to_numpy().astype(np.int64))
    if not ids:
        raise TestprioError(
            f"{what} has no usable samples (all quarantined or empty); give data the model "
            "can read."
        )
    return Labeled(np.concatenate(ids), np.concatenate(xs), np.concatenate(ys))


def split_pool(pool: Labeled, share: float, *, seed: int = 0) -> tuple[Labeled, Labeled]:
    """``(pool, test)``: a seeded random ``share`` of the pool held out as the test split."""
    count = int(round(share * len(pool.ids)))
    if count < 1 or count >= len(pool.ids):
        raise TestprioError(
            f"--split {share} leaves {len(pool.ids) - count} pool and {count} test samples of "
            f"{len(pool.ids)}; both need at least one: choose a share like 0.3."
        )
    order = np.random.default_rng(seed).permutation(len(pool.ids))
    test, kept = np.sort(order[:count]), np.sort(order[count:])
    return pool.subset(kept), pool.subset(test)


def class_probabilities(session, model_record: dict, x: np.ndarray, source_name: str) -> np.ndarray:
    """``(N, K)`` class probabilities of ``x`` through the converted model's session."""
    from testprio.model import run_class_output
    from testprio.score import class_probabilities as to_probabilities

    input_name = model_record["input"]["name"]
    output_name = model_record["class_output"]["name"]
    parts = [
        run_class_output(session, input_name, output_name, x[i : i + INFERENCE_BATCH], source_name)
        for i in range(0, len(x), INFERENCE_BATCH)
    ]
    if not parts:
        return np.zeros((0, 0))
    return to_probabilities(np.concatenate(parts), model_record["output_kind"])


def ingest_all(
    layout: RunLayout,
    data: str,
    test_data: str,
    train_data: str,
    options: ingest.IngestOptions,
) -> dict[str, RunLayout]:
    """Ingest the pool into ``layout``, the training data (and the test data, when given)
    into its ``train`` (``test``) folder; returns where each part went, by part name."""
    parts = {
        "pool": (layout, data),
        "train": (RunLayout(storage.join(layout.uri, "train")), train_data),
    }
    if test_data:
        parts["test"] = (RunLayout(storage.join(layout.uri, "test")), test_data)
    for part, (where, uri) in parts.items():
        log.info("evaluate: ingesting the %s data %s", part, sources.redact_url(uri))
        ingest.ingest(where, uri, options)
    return {part: where for part, (where, _) in parts.items()}
