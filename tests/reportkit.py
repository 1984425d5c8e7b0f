"""Small real runs for the report tests: made by the library's own stages (no KFP).

``make_runs(root, folder)`` writes, under ``root`` (local or gs://):

- ``labeled``: 120 real 8x8 digits with labels, two of them NaN (quarantined), shards of 40,
  ranked by gini;
- ``entropy``: the same pool and model ranked by entropy (for Compare);
- ``rgb``: 30 unlabeled 3x8x8 samples (RGB, channels first);
- ``hostile``: a pool whose file name is an HTML tag and a model.json with a ``<script>``
  class name, reported again after the names were added;
- ``failed``: stops in convert (the model expects 1x8x8, the pool is 3x8x8).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from testprio import report, storage
from testprio.errors import TestprioError
from testprio.layout import RunLayout
from tests.conftest import linear_classifier, make_deterministic, write_pool
from tests.stagekit import run_stages

XSS_CLASS = "<script>alert('class')</script>"
XSS_FILE = "<img src=x onerror=alert(1)>.npz"
RUN_IDS = ("labeled", "entropy", "rgb", "hostile", "failed")


def digits(count: int = 120) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.images[:count] / 16.0).astype(np.float32)[:, None]
    return x, data.target[:count].astype(np.int64)


def add_class_names(layout: RunLayout, names: list[str]) -> None:
    model = storage.read_json(layout.model_json)
    model["class_names"] = names
    storage.write_json(layout.model_json, model)


def make_runs(root: str, folder: Path) -> dict[str, RunLayout]:
    folder.mkdir(parents=True, exist_ok=True)
    x, y = digits()
    x = x.copy()
    x[[7, 50]] = np.nan  # quarantined, leaving gaps in sample ids inside shards 0 and 1
    model = linear_classifier(folder / "digits.onnx", seed=1)
    pool = write_pool(folder / "digits.npz", x, y)
    runs = {
        "labeled": run_stages(model, pool, root, "labeled", shard_size=40, top_k=5),
        "entropy": run_stages(
            model, pool, root, "entropy", shard_size=40, top_k=5, metric="entropy"
        ),
    }
    rgb = make_deterministic(2).uniform(-2, 2, (30, 3, 8, 8)).astype(np.float32)
    rgb_model = linear_classifier(folder / "rgb.onnx", sample_shape=(3, 8, 8), classes=4)
    runs["rgb"] = run_stages(rgb_model, write_pool(folder / "rgb.npy", rgb), root, "rgb")

    hostile_pool = write_pool(folder / XSS_FILE, x[:40], y[:40])
    runs["hostile"] = run_stages(model, hostile_pool, root, "hostile", shard_size=16)
    add_class_names(runs["hostile"], [XSS_CLASS] + [f"digit {i}" for i in range(1, 10)])
    report.build_report(runs["hostile"])

    try:
        run_stages(model, write_pool(folder / "wrong.npy", rgb), root, "failed")
    except TestprioError:
        runs["failed"] = RunLayout(storage.join(storage.normalize_root(root), "failed"))
    return runs
