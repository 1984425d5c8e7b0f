"""The experiment: ``run_evaluation`` ingests the pool, the training reference and the test
data (or holds a share of the pool out), converts the model, lets every prioritizer order
the pool, judges the orders (fault detection, retraining over seeds) and writes
``{root}/{run_id}/evaluation.json``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import onnx

from testprio import convert, storage
from testprio.errors import TestprioError
from testprio.evaluation.datasets import (
    class_probabilities,
    ingest_all,
    read_labeled,
    split_pool,
)
from testprio.evaluation.fault_detection import evaluate_orders
from testprio.evaluation.options import EvaluateOptions, check_options, check_test_split
from testprio.evaluation.prioritizers import PRIORITIZERS, Context, hidden_settings
from testprio.evaluation.retraining import retrain_orders
from testprio.evaluation.splits import pool_splits
from testprio.evaluation.statistics import comparison_record, winners, with_vs_random
from testprio.evaluation_file import EVALUATION_VERSION, evaluation_uri
from testprio.ingest import sources
from testprio.layout import RunLayout, finish_run, stage, start_run
from testprio.log import get_logger
from testprio.summary import score_spread

log = get_logger("evaluate")


def run_evaluation(
    root: str,
    run_id: str,
    *,
    model: str,
    data: str,
    train_data: str,
    test_data: str = "",
    options: EvaluateOptions | None = None,
) -> dict:
    """Evaluate every prioritizer of ``options`` and write ``{root}/{run_id}/evaluation.json``.

    Returns the evaluation (the JSON's content). ``model``, ``data``, ``train_data`` and
    ``test_data`` (empty: ``options.split`` of the pool) are URIs as ``testprio run`` takes.
    With ``options.splits`` N > 1 the whole evaluation runs once per seeded pool/test split
    (split k holds out ``split_pool(..., seed=k)``); the file's top level pools them
    (``testprio.evaluation.splits``) and ``per_split`` keeps each split's figures.
    """
    options = check_options(options or EvaluateOptions())
    check_test_split(bool(test_data), options.split, options.splits)
    for uri in (data, train_data, test_data):
        if uri:
            sources.check_data_uri(uri)
    detected = convert.detect(model, options.framework)
    layout = RunLayout.create(root, run_id)
    storage.ensure_root(root)
    parameters = {
        "model": model,
        "data": sources.redact_url(data),
        "train_data": sources.redact_url(train_data),
        "test_data": sources.redact_url(test_data),
        "budgets": list(options.budgets),
        "prioritizers": list(options.prioritizers),
        "seeds": int(options.seeds),
        "split": float(options.split),
        "splits": int(options.splits),
        "epochs": int(options.epochs),
        "kind": "evaluation",
    }
    start_run(layout, parameters)
    timings: dict[str, float] = {}
    started = time.time()

    def timed(name: str) -> _Timer:
        return _Timer(timings, name)

    with stage(layout, "evaluate") as figures:
        with timed("ingest"):
            layouts = ingest_all(layout, data, test_data, train_data, options.ingest)
        with timed("convert"):
            record = convert.convert(
                layout,
                model,
                framework=options.framework,
                output_kind=options.output_kind,
                output_name=options.output_name,
                input_shape=options.input_shape,
            )
        pool = read_labeled(layouts["pool"], "the pool (--data)")
        train = read_labeled(layouts["train"], "the training data (--train-data)")
        if test_data:
            parts = [(pool, read_labeled(layouts["test"], "the test data (--test-data)"))]
            held_out = "the test data (--test-data)"
        else:
            parts = [split_pool(pool, options.split, seed=k) for k in range(options.splits)]
            held_out = f"{options.split:g} of the pool" + (
                f", in {options.splits} seeded splits" if options.splits > 1 else ""
            )
        per_split = []
        for k, (pool_k, test_k) in enumerate(parts):
            if len(parts) > 1:
                log.info("evaluate: split %d of %d", k + 1, len(parts))
            per_split.append(
                _evaluate(layout, detected, record, (pool_k, train, test_k), options, timed)
            )
        evaluation = per_split[0] if len(per_split) == 1 else pool_splits(per_split)
        evaluation["comparison"] = comparison_record(
            "seed" if len(per_split) == 1 else "(split, seed)"
        )
        evaluation["splits"] = len(per_split)
        evaluation["test_split"] = held_out
        timings["total"] = time.time() - started
        evaluation["timings"] = {name: round(value, 3) for name, value in timings.items()}
        storage.write_json(evaluation_uri(layout), evaluation)
        figures.update(prioritizers=len(evaluation["prioritizers"]), pool=len(parts[0][0].ids))
    finish_run(layout)
    return evaluation


class _Timer:
    """Adds the seconds spent inside ``with`` to ``timings[name]``."""

    def __init__(self, timings: dict[str, float], name: str) -> None:
        self._timings, self._name = timings, name

    def __enter__(self):
        self._started = time.time()
        return self

    def __exit__(self, *exc) -> None:
        elapsed = time.time() - self._started
        self._timings[self._name] = self._timings.get(self._name, 0.0) + elapsed


def _evaluate(layout, detected, record, datasets, options, timed) -> dict:
    """The evaluation of ``datasets`` ``(pool, train, test)`` with the converted model
    (``record``): what evaluation.json holds, less the test split's name and the timings."""
    from testprio.model import create_session

    pool, train, test = datasets
    source_name = record["source"]["name"]
    with timed("score"), storage.local_copy(layout.model_onnx) as onnx_path:
        session = create_session(onnx_path, device="cpu")
        pool_probs = class_probabilities(session, record, pool.x, source_name)
        train_probs = class_probabilities(session, record, train.x, source_name)
        test_probs = class_probabilities(session, record, test.x, source_name)
        onnx_model = onnx.load(onnx_path)
    classes = pool_probs.shape[1]
    for what, labeled in (("pool", pool), ("training data", train), ("test data", test)):
        if labeled.y.min() < 0 or labeled.y.max() >= classes:
            raise TestprioError(
                f"the {what} has labels outside 0..{classes - 1}, the model's {classes} "
                "classes; give class indices as labels."
            )
    misclassified = pool_probs.argmax(axis=1) != pool.y
    baseline = float((test_probs.argmax(axis=1) == test.y).mean())
    seeds = list(range(int(options.seeds)))
    context = Context(
        model=onnx_model,
        class_output=record["class_output"]["name"],
        pool_ids=pool.ids,
        pool_x=pool.x,
        pool_probs=pool_probs,
        train_x=train.x,
        train_probs=train_probs,
        layers=options.layers,
        surprise_layer=options.surprise_layer,
        surprise_reduce=options.surprise_reduce,
        coverage_params=options.coverage_params,
        metamorphic_transforms=options.metamorphic_transforms,
        followups=options.followups,
    )
    # Named layers are checked before any prioritizer runs: a typo fails at once.
    if options.layers or options.surprise_layer:
        context.surprise_layer  # noqa: B018 - checks --layers and --surprise-layer
    results, orders = _prioritize(context, options, seeds, misclassified, timed)
    with timed("retrain"):
        retrained, retraining, controls = retrain_orders(
            layout,
            detected,
            record,
            datasets,
            orders,
            budgets=options.budgets,
            seeds=seeds,
            epochs=options.epochs,
        )
    for name, rows in retrained.items():
        results[name]["retrain"] = rows
    results = with_vs_random(results)
    return {
        "version": EVALUATION_VERSION,
        "run_id": layout.run_id,
        "model": {
            "name": detected.name,
            "framework": detected.format.framework,
            "format": detected.format.name,
            "classes": classes,
        },
        "samples": {"pool": len(pool.ids), "train": len(train.ids), "test": len(test.ids)},
        "pool": {
            "misclassified": int(misclassified.sum()),
            "accuracy": float(1 - misclassified.mean()),
        },
        "baseline_accuracy": baseline,
        "budgets": list(options.budgets),
        "seeds": seeds,
        "retraining": retraining,
        "prioritizers": results,
        "controls": controls,
        "winners": winners(results, options.budgets),
        **hidden_settings(
            context,
            options.prioritizers,
            layers_chosen=bool(options.layers),
            coverage_params=options.coverage_params,
        ),
    }


def _prioritize(
    context: Context,
    options: EvaluateOptions,
    seeds: list[int],
    misclassified: np.ndarray,
    timed: Callable[[str], _Timer],
) -> tuple[dict[str, dict], dict[str, list[np.ndarray]]]:
    """Every prioritizer of ``options`` orders the pool (once per seed when seeded) and is
    judged on ``misclassified``; returns ``(results by name, orders by name)``. Each result
    says whether the prioritizer's scores are constant on the pool (``degenerate``)."""
    results: dict[str, dict] = {}
    orders: dict[str, list[np.ndarray]] = {}
    for name in options.prioritizers:
        prioritizer = PRIORITIZERS[name]
        began = time.time()
        context.scores = None
        with timed("prioritize"):
            per_seed = [
                prioritizer.order(context, seed)
                for seed in (seeds if prioritizer.seeded else seeds[:1])
            ]
        orders[name] = per_seed
        results[name] = {
            "description": prioritizer.description,
            "seeded": prioritizer.seeded,
            **evaluate_orders(per_seed, misclassified, options.budgets),
            **_spread(context.scores),
            "order_seconds": round(time.time() - began, 3),
            **context.extras.pop(name, {}),
        }
        log.info("evaluate: %s ordered the pool in %.2f s", name, time.time() - began)
    return results, orders


def _spread(scores: np.ndarray | None) -> dict:
    """``score_spread`` of a prioritizer's scores; a random order has none (never degenerate)."""
    if scores is None:
        return {"degenerate": False, "distinct_values": None, "modal_share": None}
    return score_spread(scores)
