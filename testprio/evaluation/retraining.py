"""Retraining over seeds: for every prioritizer, budget and seed, the model fine-tuned on its
training reference plus that prioritizer's top b% of the pool (``testprio.retrain`` runs
the jobs), and each prioritizer's test accuracy per budget summarized over the seeds; and
the two controls, fine-tuned the same way with the same seeds (``CONTROLS``).

For a deterministic prioritizer the seed changes only the fine-tuning's randomness (batch
order, dropout); for a seeded one (``random``) it also draws the selection.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from testprio import retrain, scratch, storage
from testprio.evaluation.datasets import Labeled
from testprio.evaluation.fault_detection import budget_size
from testprio.evaluation.statistics import INTERVAL, accuracy_summary, retrain_summary
from testprio.layout import RunLayout
from testprio.log import get_logger

if TYPE_CHECKING:
    from testprio.convert.stage import DetectedModel

log = get_logger("evaluate")

# The controls every evaluation retrains, by name: which pool positions each adds to the
# training data (of a pool of n). no_selection: the extra epochs alone; whole_pool: every
# pool sample labelled, the ceiling of any selection.
CONTROLS = {
    "no_selection": lambda n: np.zeros(0, dtype=np.int64),
    "whole_pool": lambda n: np.arange(n, dtype=np.int64),
}


def retrain_jobs(
    orders: dict[str, list[np.ndarray]], budgets: tuple[float, ...], seeds: list[int], n: int
) -> list[retrain.RetrainJob]:
    """One job per prioritizer, budget and seed, keyed ``"{name}|{budget}|{seed}"``: the top
    ``budget_size(n, budget)`` of the prioritizer's order for that seed (its only order when
    it has one); and one per control and seed, keyed ``"control:{name}|{seed}"``."""
    jobs = []
    for name, per_seed in orders.items():
        for budget in budgets:
            size = budget_size(n, budget)
            for index, seed in enumerate(seeds):
                order = per_seed[index] if len(per_seed) > 1 else per_seed[0]
                jobs.append(retrain.RetrainJob(f"{name}|{budget}|{seed}", order[:size], seed))
    for name, selection in CONTROLS.items():
        jobs += [retrain.RetrainJob(f"control:{name}|{seed}", selection(n), seed) for seed in seeds]
    return jobs


def retrain_orders(
    layout: RunLayout,
    detected: DetectedModel,
    record: dict,
    datasets: tuple[Labeled, Labeled, Labeled],
    orders: dict[str, list[np.ndarray]],
    *,
    budgets: tuple[float, ...],
    seeds: list[int],
    epochs: int,
) -> tuple[dict[str, list[dict]], dict, dict[str, dict]]:
    """Retrain for every order of ``orders`` (per prioritizer, one per seed or one for all)
    at each budget and seed, and for the controls at each seed, and measure the accuracy on
    the test split.

    ``datasets``: ``(pool, train, test)``; ``record``: the convert stage's model record.
    Returns ``({prioritizer: retrain_summary rows}, the "retraining" record of
    evaluation.json (the method, its settings and how the interval is computed),
    {control: accuracy_summary})``.
    """
    pool, train, test = datasets
    framework = detected.format.framework
    method = framework if framework in retrain.RETRAINERS else "onnx"
    settings = retrain.RetrainSettings(epochs=int(epochs))
    jobs = retrain_jobs(orders, budgets, seeds, len(pool.ids))
    data = retrain.RetrainData(train.x, train.y, pool.x, pool.y, test.x, test.y)

    def progress(done: int, total: int) -> None:
        if done == total or done % max(1, total // 10) == 0:
            log.info("evaluate: retraining %d/%d done", done, total)

    with (
        storage.local_folder(detected.base, list(detected.files)) as folder,
        scratch.folder("evaluate") as work,
    ):
        path = f"{folder}/{detected.graph}" if detected.graph else folder
        source = retrain.SourceModel(
            framework=method,
            fmt=detected.format.name,
            path=path,
            onnx_path=_local_onnx(layout, work),
            class_output=record["class_output"]["name"],
            output_kind=record["output_kind"],
            name=detected.name,
        )
        accuracies = retrain.retrain(source, data, jobs, settings=settings, progress=progress)
    summaries = {
        name: retrain_summary(
            {
                budget: [accuracies[f"{name}|{budget}|{seed}"] for seed in seeds]
                for budget in budgets
            }
        )
        for name in orders
    }
    controls = {
        name: accuracy_summary([accuracies[f"control:{name}|{seed}"] for seed in seeds])
        for name in CONTROLS
    }
    retraining = {
        "method": method,
        "description": retrain.METHOD_DESCRIPTIONS[method],
        "epochs": settings.epochs,
        "batch_size": settings.batch_size,
        "learning_rate": settings.learning_rate,
        "interval": INTERVAL,
    }
    return summaries, retraining, controls


def _local_onnx(layout: RunLayout, folder: str) -> str:
    """A local copy of the run's model.onnx in ``folder`` (a temporary one)."""
    path = os.path.join(folder, "model.onnx")
    with open(path, "wb") as handle:
        handle.write(storage.read_bytes(layout.model_onnx))
    return path
