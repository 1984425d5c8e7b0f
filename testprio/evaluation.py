"""Evaluate: does labelling the top of a prioritizer's ranking pay off, and which one to trust?

For a model, a labeled pool, a held-out labeled test split and the model's (labeled)
training reference, each prioritizer of ``PRIORITIZERS`` orders the pool once (``random``
once per seed), and is judged by

- **APFD** of its order over the pool's misclassified samples (raw and normalized,
  ``testprio.summary.apfd``);
- **faults found** at each budget ``b`` (percent of the pool): misclassified samples among
  its top ``ceil(b * N / 100)``;
- its **fault-detection curve** over the whole pool (share of faults found against share of
  the pool inspected, ``CURVE_POINTS`` evenly spaced ranks; the mean over seeds for
  ``random``);
- **retraining**: the model fine-tuned on its training reference plus its top-b% with their
  labels (``testprio.retrain``), once per seed, and its accuracy on the test split: mean
  and 95% t-interval over the seeds. For a deterministic prioritizer the seed changes only
  the fine-tuning's randomness (batch order, dropout); for ``random`` it also draws the
  selection.

``run_evaluation`` does the I/O (ingest the three data sets, convert the model, write
``{root}/{run_id}/evaluation.json``); ``evaluate_orders``, ``fault_curve``, ``budget_size``
and ``winners`` are pure. The file's name and its reading as tables (``evaluation_frames``)
are ``testprio.evaluation_file``'s, which the report imports too.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from testprio import convert, ingest, metrics, retrain, storage
from testprio.errors import TestprioError
from testprio.evaluation_file import EVALUATION_VERSION, evaluation_frames, evaluation_uri
from testprio.ingest import sources
from testprio.layout import RunLayout, finish_run, stage, start_run
from testprio.log import get_logger
from testprio.summary import apfd

log = get_logger("evaluate")

DEFAULT_BUDGETS = (1.0, 2.0, 5.0, 10.0)
DEFAULT_SEEDS = 5
DEFAULT_EPOCHS = 3
# The prioritizers an evaluation runs when none are named, in this order (those whose
# module is not installed are left out).
DEFAULT_PRIORITIZERS = (
    "gini",
    "entropy",
    "margin",
    "least_confidence",
    "instability",
    "nac-cam",
    "kmnc",
    "dsa",
    "random",
)
INFERENCE_BATCH = 512
# Points of each prioritizer's fault-detection curve in evaluation.json: every 1% of the
# pool (ranks 0, N/100, ..., N), enough for a smooth line at about 2 KB a prioritizer.
CURVE_POINTS = 101


# --- what prioritizers see ----------------------------------------------------------------


class Context:
    """The pool and the training reference as the prioritizers need them, with the hidden
    activations computed on first use and shared between prioritizers.

    ``pool_probs`` ``(N, K)`` float64; ``pool_ids`` ``(N,)`` int64 (ties break by it);
    ``pool_x`` ``(N, *shape)``; ``train_x`` and ``train_probs`` likewise for the reference.
    ``extras`` collects what a prioritizer wants recorded beside its figures.
    """

    def __init__(
        self,
        *,
        model: onnx.ModelProto | None,
        class_output: str,
        pool_ids: np.ndarray,
        pool_x: np.ndarray,
        pool_probs: np.ndarray,
        train_x: np.ndarray,
        train_probs: np.ndarray,
        layers: Iterable[str] = (),
        surprise_layer: str = "",
        coverage_params: dict[str, dict] | None = None,
        metamorphic_transforms: Iterable[str] = (),
        followups: int = 0,
    ) -> None:
        self.model = model
        self.chosen_layers = tuple(layers)
        self.chosen_surprise_layer = surprise_layer
        self.coverage_params = coverage_params or {}
        self.metamorphic_transforms = tuple(metamorphic_transforms)
        self.followups = int(followups) or INSTABILITY_FOLLOWUPS
        self.class_output = class_output
        self.pool_ids = np.asarray(pool_ids, dtype=np.int64)
        self.pool_x = pool_x
        self.pool_probs = pool_probs
        self.train_x = train_x
        self.train_probs = train_probs
        self.extras: dict[str, dict] = {}
        self._activations: dict[str, list[np.ndarray]] = {}

    @functools.cached_property
    def layers(self) -> list[str]:
        """The hidden layers coverage (and by default surprise) reads: ``--layers``, checked
        against the model, else ``activations.hidden_layer_names``."""
        from testprio import activations

        model = self._require_model()
        if self.chosen_layers:
            activations.with_layer_outputs(model, list(self.chosen_layers))  # names checked
            return list(self.chosen_layers)
        found = activations.hidden_layer_names(model)
        if not found:
            raise TestprioError(
                "the ONNX model has no hidden layer (Relu, Tanh, Sigmoid, Gemm, Conv, ...) for "
                "the coverage and surprise prioritizers; name tensors with --layers, or leave "
                "those prioritizers out."
            )
        return found

    @functools.cached_property
    def surprise_layer(self) -> str:
        """``--surprise-layer``, else the last of :attr:`layers` (as Kim et al. apply it)."""
        from testprio import activations

        name = self.chosen_surprise_layer
        if not name:
            return self.layers[-1]
        model = self._require_model()
        if name not in {output for node in model.graph.node for output in node.output}:
            choices = ", ".join(activations.hidden_layer_names(model)) or "(none found)"
            raise TestprioError(
                f"--surprise-layer {name!r} is not a tensor of the model; name a node output "
                f"such as the hidden layers {choices}."
            )
        return name

    def _require_model(self) -> onnx.ModelProto:
        if self.model is None:
            raise TestprioError("this prioritizer needs the ONNX model's hidden layers.")
        return self.model

    def activations(self, part: str) -> list[np.ndarray]:
        """Per hidden layer ``(N, units)`` activations of ``part`` (``pool`` or ``train``)."""
        if part not in self._activations:
            from testprio.activations import flatten_activation

            x = self.pool_x if part == "pool" else self.train_x
            outputs = retrain.onnx_outputs(self._require_model(), self.layers, x)
            self._activations[part] = [flatten_activation(a) for a in outputs]
        return self._activations[part]

    def surprise_activations(self, part: str) -> np.ndarray:
        """``(N, units)`` activations of :attr:`surprise_layer` for ``part``."""
        if self.surprise_layer in self.layers:
            return self.activations(part)[self.layers.index(self.surprise_layer)]
        key = f"{part}:{self.surprise_layer}"
        if key not in self._activations:
            from testprio.activations import flatten_activation

            x = self.pool_x if part == "pool" else self.train_x
            (output,) = retrain.onnx_outputs(self._require_model(), [self.surprise_layer], x)
            self._activations[key] = [flatten_activation(output)]
        return self._activations[key][0]

    def describe_layers(self) -> dict:
        """What evaluation.json records under ``layers``."""
        return {
            "coverage": self.layers,
            "surprise": self.surprise_layer,
            "chosen": "--layers" if self.chosen_layers else "default (hidden_layer_names)",
        }

    def positions(self, ids: np.ndarray) -> np.ndarray:
        """Pool positions of ``sample_id``s (an order of ids -> an order of positions)."""
        where = {int(sample_id): i for i, sample_id in enumerate(self.pool_ids)}
        return np.array([where[int(sample_id)] for sample_id in ids], dtype=np.int64)


def order_by_score(scores: np.ndarray, sample_ids: np.ndarray) -> np.ndarray:
    """Positions by ``scores`` descending (higher = more worth labelling), ties by id."""
    return np.lexsort((np.asarray(sample_ids), -np.asarray(scores, dtype=np.float64)))


@dataclass(frozen=True)
class Prioritizer:
    """``order(context, seed)`` -> pool positions, most worth labelling first.

    ``seeded``: the order depends on the seed (a different selection per seed).
    """

    name: str
    description: str
    order: Callable[[Context, int], np.ndarray]
    seeded: bool = False


def _uncertainty(name: str) -> Prioritizer:
    def order(context: Context, seed: int) -> np.ndarray:
        # float32 like the score stage's columns, so the evaluation's order is the ranking's
        scores = metrics.METRICS[name](context.pool_probs).astype(np.float32)
        return order_by_score(scores, context.pool_ids)

    return Prioritizer(name, f"{name} of the class probabilities (higher = less sure)", order)


def _random_order(context: Context, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(len(context.pool_ids))


PRIORITIZERS: dict[str, Prioritizer] = {
    **{name: _uncertainty(name) for name in metrics.METRICS},
    "random": Prioritizer(
        "random", "a uniformly random order (a new one per seed)", _random_order, seeded=True
    ),
}


def _coverage_prioritizers() -> dict[str, Prioritizer]:
    """NAC, KMNC, NBC, SNAC, TKNC as CTM (per-sample total) and CAM (coverage-additive)
    orders over the hidden layers, boundaries from the training reference."""
    from testprio import coverage

    def make(metric: str, how: str) -> Prioritizer:
        def order(context: Context, seed: int) -> np.ndarray:
            profile = coverage.NeuronProfile(context.layers)
            profile.update(context.activations("train")).finish()
            params = {
                **coverage.COVERAGE_DEFAULTS.get(metric, {}),
                **context.coverage_params.get(metric, {}),
            }
            scores, covered = coverage.COVERAGE_METRICS[metric](
                context.activations("pool"), profile, **params
            )
            if how == "ctm":
                ids = coverage.ctm_order(scores, context.pool_ids)
            else:
                ids = coverage.cam_order(covered, scores, context.pool_ids)
            return context.positions(ids)

        title = {"ctm": "per-sample total", "cam": "coverage-additive order"}[how]
        return Prioritizer(f"{metric}-{how}", f"{metric.upper()} coverage, {title}", order)

    found = {
        f"{metric}-{how}": make(metric, how)
        for metric in coverage.COVERAGE_METRICS
        for how in ("ctm", "cam")
    }
    # Plain names (kmnc = kmnc-cam): the one table of testprio.prioritizers.
    from testprio.prioritizers import ALIASES

    for alias, name in ALIASES.items():
        found[alias] = Prioritizer(alias, found[name].description, found[name].order)
    return found


def _surprise_prioritizers() -> dict[str, Prioritizer]:
    """LSA, DSA, MDSA on the last hidden layer against the training reference."""
    from testprio import surprise

    def make(metric: str) -> Prioritizer:
        def order(context: Context, seed: int) -> np.ndarray:
            train = context.surprise_activations("train")
            pool = context.surprise_activations("pool")
            reference = surprise.fit_reference(
                train, context.train_probs.argmax(axis=1), metrics=(metric,)
            )
            scores = surprise.SURPRISE_METRICS[metric](
                reference, pool, context.pool_probs.argmax(axis=1)
            )
            return order_by_score(scores, context.pool_ids)

        title = f"{metric.upper()} surprise adequacy (last hidden layer or --surprise-layer)"
        return Prioritizer(metric, title, order)

    return {metric: make(metric) for metric in surprise.SURPRISE_METRICS}


INSTABILITY_FOLLOWUPS = 10


def _metamorphic_prioritizers() -> dict[str, Prioritizer]:
    """Instability under metamorphic transforms (label-free), with causal attribution."""
    from testprio import metamorphic

    def order(context: Context, seed: int) -> np.ndarray:
        from testprio.model import create_session

        model = context._require_model()
        session = create_session(model.SerializeToString(), device="cpu")
        input_name = session.get_inputs()[0].name

        def predict(batch: np.ndarray) -> np.ndarray:
            return session.run([context.class_output], {input_name: batch.astype(np.float32)})[0]

        shape = tuple(context.pool_x.shape[1:])
        layout = metamorphic.image_layout(shape)
        ranges = metamorphic.metamorphic_ranges(shape, layout)
        transforms = list(context.metamorphic_transforms) or metamorphic.default_transforms(layout)
        # Seed 0 for every evaluation seed: the order is the prioritizer's, the seeds vary
        # the fine-tuning (as for the other deterministic prioritizers).
        result = metamorphic.run_metamorphic(
            predict,
            context.pool_x,
            transforms=transforms,
            followups=context.followups,
            seed=0,
            layout=layout,
            ranges=ranges and {name: ranges[name] for name in transforms if name in ranges},
            sample_ids=context.pool_ids,
        )
        extras = {
            "description": f"share of {context.followups} metamorphic follow-ups whose class "
            "changes",
            "metamorphic": {
                "transforms": result.transforms,
                "followups": context.followups,
                "layout": layout,
                "ranges": {
                    name: {
                        param: list((ranges or {}).get(name, {}).get(param, bounds))
                        for param, bounds in metamorphic.TRANSFORMS[name].params.items()
                    }
                    for name in result.transforms
                },
                "tiny_image_ranges": ranges is not None,
                "violation_rate": float(np.mean(result.design["violated"]))
                if len(result.design["violated"])
                else None,
            },
        }
        try:
            extras["attribution"] = metamorphic.attribution(result.design, seed=0, n_boot=200)
        except TestprioError as exc:
            extras.update(attribution=None, attribution_error=str(exc))
        context.extras["instability"] = extras
        return order_by_score(result.instability, context.pool_ids)

    return {
        "instability": Prioritizer(
            "instability",
            f"share of {INSTABILITY_FOLLOWUPS} metamorphic follow-ups whose class changes",
            order,
        )
    }


# The other engineers' prioritizer families, registered when their module is installed.
OPTIONAL_FAMILIES = (_coverage_prioritizers, _surprise_prioritizers, _metamorphic_prioritizers)
for _family in OPTIONAL_FAMILIES:
    try:
        PRIORITIZERS.update(_family())
    except ImportError:
        pass


def default_prioritizers() -> list[str]:
    return [name for name in DEFAULT_PRIORITIZERS if name in PRIORITIZERS]


# --- options ----------------------------------------------------------------------------


@dataclass(frozen=True)
class EvaluateOptions:
    """What to evaluate and how (each field is a ``testprio evaluate`` option)."""

    budgets: tuple[float, ...] = DEFAULT_BUDGETS
    prioritizers: tuple[str, ...] = ()  # empty: default_prioritizers()
    seeds: int = DEFAULT_SEEDS
    split: float = 0.0  # share of the pool held out when no test data is given
    epochs: int = DEFAULT_EPOCHS
    framework: str = "auto"
    output_kind: str = "auto"
    output_name: str = ""
    input_shape: str = ""
    layers: tuple[str, ...] = ()  # empty: activations.hidden_layer_names
    surprise_layer: str = ""  # empty: the last of the layers
    coverage_params: dict[str, dict] = field(default_factory=dict)  # {metric: {param: value}}
    metamorphic_transforms: tuple[str, ...] = ()  # empty: those of the sample layout
    followups: int = INSTABILITY_FOLLOWUPS
    ingest: ingest.IngestOptions = field(default_factory=ingest.IngestOptions)


def parse_budgets(text: str) -> tuple[float, ...]:
    """``"1,2,5,10"`` -> ``(1.0, 2.0, 5.0, 10.0)``: percents of the pool, in (0, 100]."""
    try:
        budgets = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise TestprioError(
            f"--budgets '{text}' is not a list of numbers; give percents of the pool like 1,2,5,10."
        ) from None
    return check_budgets(budgets)


def check_budgets(budgets: Iterable[float]) -> tuple[float, ...]:
    budgets = tuple(float(b) for b in budgets)
    if not budgets or any(not math.isfinite(b) or not 0 < b <= 100 for b in budgets):
        raise TestprioError(
            f"--budgets {','.join(f'{b:g}' for b in budgets) or '(empty)'} must be percents of "
            "the pool above 0 and at most 100, like 1,2,5,10."
        )
    return tuple(sorted(set(budgets)))


def parse_prioritizers(text: str) -> tuple[str, ...]:
    return check_prioritizers(part.strip() for part in text.split(",") if part.strip())


def check_prioritizers(names: Iterable[str]) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(names))  # unique, in the given order
    unknown = [name for name in names if name not in PRIORITIZERS]
    if unknown:
        raise TestprioError(
            f"unknown prioritizer(s) {', '.join(unknown)}; choose from "
            f"{', '.join(sorted(PRIORITIZERS))}."
        )
    return names or tuple(default_prioritizers())


def parse_names(text: str) -> tuple[str, ...]:
    """``"a, b,,c"`` -> ``("a", "b", "c")`` (``--layers``, ``--metamorphic-transforms``)."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def parse_coverage_params(text: str) -> dict[str, dict]:
    """``--coverage-params '{"kmnc": {"sections": 20}}'`` -> that dict (checked)."""
    if not text.strip():
        return {}
    import json

    try:
        params = json.loads(text)
    except ValueError:
        params = None
    if not isinstance(params, dict):
        raise TestprioError(
            f"--coverage-params {text!r} is not a JSON object; give one like "
            '\'{"kmnc": {"sections": 20}, "nac": {"threshold": 0.5}}\'.'
        )
    return check_coverage_params(params)


def check_coverage_params(params: dict) -> dict[str, dict]:
    """Each ``{metric: {param: number}}`` names a coverage metric and one of its parameters
    (``coverage.COVERAGE_DEFAULTS``), with a number of the default's kind."""
    if not params:
        return {}
    from testprio.coverage import COVERAGE_DEFAULTS

    known = "; ".join(
        f"{metric}: {', '.join(defaults)}" for metric, defaults in COVERAGE_DEFAULTS.items()
    )
    for metric, values in params.items():
        if metric not in COVERAGE_DEFAULTS or not isinstance(values, dict):
            raise TestprioError(
                f"--coverage-params names {metric!r}, not a coverage metric with its "
                f"parameters; give {{metric: {{parameter: value}}}} with these ({known})."
            )
        for name, value in values.items():
            default = COVERAGE_DEFAULTS[metric].get(name)
            kind = int if isinstance(default, int) else (int, float)
            if default is None or isinstance(value, bool) or not isinstance(value, kind):
                raise TestprioError(
                    f"--coverage-params {metric}.{name}={value!r} is not a parameter of "
                    f"{metric} with a {'whole ' if kind is int else ''}number; parameters "
                    f"and defaults: {known}."
                )
    return {metric: dict(values) for metric, values in params.items()}


def check_options(options: EvaluateOptions) -> EvaluateOptions:
    """Every option checked; returns them with the defaults filled in."""
    if int(options.seeds) < 1:
        raise TestprioError(f"--seeds {options.seeds} must be 1 or more.")
    if isinstance(options.followups, bool) or int(options.followups) < 1:
        raise TestprioError(f"--followups {options.followups} must be 1 or more.")
    if options.metamorphic_transforms:
        from testprio.metamorphic import TRANSFORMS

        unknown = [name for name in options.metamorphic_transforms if name not in TRANSFORMS]
        if unknown:
            raise TestprioError(
                f"unknown metamorphic transform(s) {', '.join(unknown)} in "
                f"--metamorphic-transforms; choose from {', '.join(TRANSFORMS)}."
            )
    check_coverage_params(options.coverage_params)
    if not 0 <= float(options.split) < 1:
        raise TestprioError(
            f"--split {options.split} must be a share of the pool from 0 up to (not "
            "including) 1, like 0.3."
        )
    retrain.check_settings(retrain.RetrainSettings(epochs=int(options.epochs)))
    ingest.check_options(options.ingest)
    return EvaluateOptions(
        **{
            **options.__dict__,
            "budgets": check_budgets(options.budgets),
            "prioritizers": check_prioritizers(options.prioritizers),
            "followups": int(options.followups),
        }
    )


# --- pure figures -----------------------------------------------------------------------


def budget_size(n: int, budget: float) -> int:
    """Samples in the top ``budget`` percent of ``n``: ``ceil(budget * n / 100)``, at least 1."""
    # The small slack keeps 10% of 100 at 10 despite float round-off.
    return min(n, max(1, math.ceil(budget * n / 100 - 1e-9)))


def curve_ranks(n: int, *, points: int = CURVE_POINTS) -> np.ndarray:
    """Up to ``points`` evenly spaced numbers of samples inspected, from 0 to ``n`` (both
    always included), rounded to whole ranks: ``(P,)`` int64, ascending, unique."""
    return np.unique(np.linspace(0, n, min(points, n + 1)).round().astype(np.int64))


def fault_curve(
    orders: list[np.ndarray], misclassified: np.ndarray, *, points: int = CURVE_POINTS
) -> list[list[float]] | None:
    """The fault-detection curve of ``orders`` (one per seed, pool positions, most
    interesting first) over ``misclassified`` ``(N,)`` bool: ``[[share of the pool
    inspected, share of the faults found], ...]`` at :func:`curve_ranks` (the first point is
    ``[0, 0]``, the last ``[1, 1]``), exact at those ranks; with several orders the share
    found is their mean at each rank. None when the pool has no fault. Higher is better.
    """
    misclassified = np.asarray(misclassified, dtype=bool)
    n, faults = len(misclassified), int(misclassified.sum())
    if not n or not faults:
        return None
    ranks = curve_ranks(n, points=points)
    found = np.mean(
        [np.concatenate([[0], np.cumsum(misclassified[order])])[ranks] for order in orders],
        axis=0,
    )
    # Six decimals: far below a pixel, and short numbers in the file.
    return [
        [round(float(x), 6), round(float(y), 6)]
        for x, y in zip(ranks / n, found / faults, strict=True)
    ]


def evaluate_orders(
    orders: list[np.ndarray], misclassified: np.ndarray, budgets: Iterable[float]
) -> dict:
    """APFD, faults found and the fault-detection curve of one prioritizer's ``orders`` (one
    per seed, positions into the pool, most interesting first) over ``misclassified``
    ``(N,)`` bool.

    Returns ``{"apfd": {"raw", "normalized"} (means over the orders; None without faults),
    "faults": [{"budget", "selected", "found", "of"}], "curve": fault_curve(...)}``; with
    several orders each also carries ``per_seed`` lists.
    """
    misclassified = np.asarray(misclassified, dtype=bool)
    n, faults = len(misclassified), int(misclassified.sum())
    per_order = [apfd(misclassified[order]) for order in orders]
    result: dict[str, Any] = {"apfd": None, "faults": []}
    if per_order[0] is not None:
        raw = [float(a["raw"]) for a in per_order]
        normalized = [a["normalized"] for a in per_order]
        result["apfd"] = {
            "raw": float(np.mean(raw)),
            "normalized": None if None in normalized else float(np.mean(normalized)),
        }
        if len(orders) > 1:
            result["apfd"].update(raw_per_seed=raw, normalized_per_seed=normalized)
    for budget in budgets:
        size = budget_size(n, budget)
        found = [int(misclassified[order[:size]].sum()) for order in orders]
        entry = {
            "budget": budget,
            "selected": size,
            "found": float(np.mean(found)) if len(found) > 1 else found[0],
            "of": faults,
        }
        if len(orders) > 1:
            entry["found_per_seed"] = found
        result["faults"].append(entry)
    result["curve"] = fault_curve(orders, misclassified)
    return result


def retrain_summary(accuracies: dict[float, list[float]]) -> list[dict]:
    """``[{budget, accuracy_mean, ci_low, ci_high, accuracies}]`` from per-seed accuracies."""
    rows = []
    for budget, values in accuracies.items():
        mean, low, high = retrain.mean_ci(values)
        rows.append(
            {
                "budget": budget,
                "accuracy_mean": mean,
                "ci_low": low,
                "ci_high": high,
                "accuracies": list(values),
            }
        )
    return rows


def _best(entries: list[tuple[str, float]]) -> tuple[list[str], float | None]:
    if not entries:
        return [], None
    top = max(value for _, value in entries)
    return [name for name, value in entries if value >= top - 1e-12], top


def winners(prioritizers: dict[str, dict], budgets: Iterable[float]) -> list[dict]:
    """Per budget, the best prioritizer(s) by mean retrained accuracy and by faults found
    (every one that ties for best is listed; ``random`` competes like the rest)."""
    table = []
    for budget in budgets:
        by_accuracy = [
            (name, row["accuracy_mean"])
            for name, entry in prioritizers.items()
            for row in entry.get("retrain", [])
            if row["budget"] == budget
        ]
        by_faults = [
            (name, row["found"])
            for name, entry in prioritizers.items()
            for row in entry["faults"]
            if row["budget"] == budget
        ]
        best_accuracy, accuracy = _best(by_accuracy)
        best_faults, found = _best(by_faults)
        table.append(
            {
                "budget": budget,
                "by_accuracy": best_accuracy,
                "accuracy_mean": accuracy,
                "by_faults": best_faults,
                "found": found,
            }
        )
    return table


# --- data -------------------------------------------------------------------------------


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


# --- the stage --------------------------------------------------------------------------


def _ingest_all(
    layout: RunLayout, data: str, test_data: str, train_data: str, options: EvaluateOptions
) -> dict[str, RunLayout]:
    parts = {
        "pool": (layout, data),
        "train": (RunLayout(storage.join(layout.uri, "train")), train_data),
    }
    if test_data:
        parts["test"] = (RunLayout(storage.join(layout.uri, "test")), test_data)
    for part, (where, uri) in parts.items():
        log.info("evaluate: ingesting the %s data %s", part, sources.redact_url(uri))
        ingest.ingest(where, uri, options.ingest)
    return {part: where for part, (where, _) in parts.items()}


def _jobs(
    orders: dict[str, list[np.ndarray]], budgets: tuple[float, ...], seeds: list[int], n: int
) -> list[retrain.RetrainJob]:
    jobs = []
    for name, per_seed in orders.items():
        for budget in budgets:
            size = budget_size(n, budget)
            for index, seed in enumerate(seeds):
                order = per_seed[index] if len(per_seed) > 1 else per_seed[0]
                jobs.append(retrain.RetrainJob(f"{name}|{budget}|{seed}", order[:size], seed))
    return jobs


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
    """
    options = check_options(options or EvaluateOptions())
    if not test_data and not options.split:
        raise TestprioError(
            "the evaluation needs a held-out test split: give --test-data, or --split with the "
            "share of the pool to hold out (e.g. 0.3)."
        )
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
        "epochs": int(options.epochs),
        "kind": "evaluation",
    }
    start_run(layout, parameters)
    timings: dict[str, float] = {}
    started = time.time()

    def timed(name: str):
        return _Timer(timings, name)

    with stage(layout, "evaluate") as figures:
        with timed("ingest"):
            layouts = _ingest_all(layout, data, test_data, train_data, options)
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
            test = read_labeled(layouts["test"], "the test data (--test-data)")
        else:
            pool, test = split_pool(pool, options.split)
        held_out = "the test data (--test-data)" if test_data else f"{options.split:g} of the pool"
        evaluation = _evaluate(layout, detected, record, (pool, train, test), options, timed)
        evaluation["test_split"] = held_out
        timings["total"] = time.time() - started
        evaluation["timings"] = {name: round(value, 3) for name, value in timings.items()}
        storage.write_json(evaluation_uri(layout), evaluation)
        figures.update(prioritizers=len(evaluation["prioritizers"]), pool=len(pool.ids))
    finish_run(layout)
    return evaluation


class _Timer:
    def __init__(self, timings: dict[str, float], name: str) -> None:
        self._timings, self._name = timings, name

    def __enter__(self):
        self._started = time.time()
        return self

    def __exit__(self, *exc) -> None:
        elapsed = time.time() - self._started
        self._timings[self._name] = self._timings.get(self._name, 0.0) + elapsed


def _evaluate(layout, detected, record, datasets, options, timed) -> dict:
    import tempfile

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
        coverage_params=options.coverage_params,
        metamorphic_transforms=options.metamorphic_transforms,
        followups=options.followups,
    )
    # Named layers are checked before any prioritizer runs: a typo fails at once.
    if options.layers or options.surprise_layer:
        context.surprise_layer  # noqa: B018 - checks --layers and --surprise-layer
    results: dict[str, dict] = {}
    orders: dict[str, list[np.ndarray]] = {}
    for name in options.prioritizers:
        prioritizer = PRIORITIZERS[name]
        began = time.time()
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
            "order_seconds": round(time.time() - began, 3),
            **context.extras.pop(name, {}),
        }
        log.info("evaluate: %s ordered the pool in %.2f s", name, time.time() - began)

    framework = detected.format.framework
    method = framework if framework in retrain.RETRAINERS else "onnx"
    settings = retrain.RetrainSettings(epochs=int(options.epochs))
    jobs = _jobs(orders, options.budgets, seeds, len(pool.ids))
    data = retrain.RetrainData(train.x, train.y, pool.x, pool.y, test.x, test.y)

    def progress(done: int, total: int) -> None:
        if done == total or done % max(1, total // 10) == 0:
            log.info("evaluate: retraining %d/%d done", done, total)

    with (
        timed("retrain"),
        storage.local_folder(detected.base, list(detected.files)) as folder,
        tempfile.TemporaryDirectory(prefix="testprio-evaluate-") as work,
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
    for name in options.prioritizers:
        per_budget = {
            budget: [accuracies[f"{name}|{budget}|{seed}"] for seed in seeds]
            for budget in options.budgets
        }
        results[name]["retrain"] = retrain_summary(per_budget)
    return {
        "version": EVALUATION_VERSION,
        "run_id": layout.run_id,
        "model": {
            "name": detected.name,
            "framework": framework,
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
        "retraining": {
            "method": method,
            "description": retrain.METHOD_DESCRIPTIONS[method],
            "epochs": settings.epochs,
            "batch_size": settings.batch_size,
            "learning_rate": settings.learning_rate,
            "interval": "95% Student t-interval of the mean over seeds: mean +- "
            "t(0.975, n-1) * s / sqrt(n); zero width with one seed",
        },
        "prioritizers": results,
        "winners": winners(results, options.budgets),
        **_hidden_settings(context, options),
    }


# Prioritizer families that read hidden layers (registered names start with these).
_LAYER_FAMILIES = ("nac-", "kmnc", "nbc-", "snac-", "tknc-", "lsa", "dsa", "mdsa")


def _hidden_settings(context: Context, options: EvaluateOptions) -> dict:
    """``layers`` and ``coverage_params`` for evaluation.json, when a prioritizer read them."""
    used = [name for name in options.prioritizers if name.startswith(_LAYER_FAMILIES)]
    if not used and not options.layers:
        return {}
    settings: dict[str, Any] = {"layers": context.describe_layers()}
    if any(name.startswith(_LAYER_FAMILIES[:5]) for name in used):
        from testprio.coverage import COVERAGE_DEFAULTS

        settings["coverage_params"] = {
            metric: {**defaults, **options.coverage_params.get(metric, {})}
            for metric, defaults in COVERAGE_DEFAULTS.items()
        }
    return settings


def _local_onnx(layout: RunLayout, folder: str) -> str:
    """A local copy of the run's model.onnx in ``folder`` (a temporary one)."""
    import os

    path = os.path.join(folder, "model.onnx")
    with open(path, "wb") as handle:
        handle.write(storage.read_bytes(layout.model_onnx))
    return path


# --- presentation -----------------------------------------------------------------------


def _percent(budget: float) -> str:
    return f"{budget:g}%"


def format_evaluation(evaluation: dict) -> str:
    """The evaluation as text tables: APFD and faults found, then retrained accuracy."""
    budgets = evaluation["budgets"]
    names = list(evaluation["prioritizers"])
    width = max(len("prioritizer"), *(len(name) for name in names))
    pool = evaluation["pool"]
    lines = [
        f"Pool: {evaluation['samples']['pool']:,} samples, {pool['misclassified']:,} "
        f"misclassified (accuracy {pool['accuracy']:.4f}). Test split: "
        f"{evaluation['samples']['test']:,} samples, baseline accuracy "
        f"{evaluation['baseline_accuracy']:.4f} (the model as given).",
        "",
        "Faults found in the top b% of the pool (of "
        f"{pool['misclassified']:,}) and APFD (normalized: 1 best, ~0.5 random):",
        f"  {'prioritizer':<{width}} {'APFD':>7} {'norm':>7}"
        + "".join(f" {_percent(b):>7}" for b in budgets),
    ]
    for name in names:
        entry = evaluation["prioritizers"][name]
        score = entry["apfd"] or {}
        raw = f"{score['raw']:.4f}" if score.get("raw") is not None else "-"
        norm = f"{score['normalized']:.4f}" if score.get("normalized") is not None else "-"
        found = "".join(f" {row['found']:>7g}" for row in entry["faults"])
        lines.append(f"  {name:<{width}} {raw:>7} {norm:>7}{found}")
    retraining = evaluation["retraining"]
    seeds = len(evaluation["seeds"])
    lines += [
        "",
        f"Test accuracy after retraining on the training data plus the top b% "
        f"({retraining['method']}, {retraining['epochs']} epoch"
        f"{'s' if retraining['epochs'] != 1 else ''}; mean [95% CI] over "
        f"{seeds} seed{'s' if seeds != 1 else ''}):",
        f"  {'prioritizer':<{width}}" + "".join(f" {_percent(b):>22}" for b in budgets),
    ]
    for name in names:
        cells = "".join(
            f" {row['accuracy_mean']:.4f} [{row['ci_low']:.3f},{row['ci_high']:.3f}]"
            for row in evaluation["prioritizers"][name].get("retrain", [])
        )
        lines.append(f"  {name:<{width}}{cells}")
    lines += ["", "Best per budget (by retrained accuracy; by faults found):"]
    for row in evaluation["winners"]:
        accuracy = (
            f"{', '.join(row['by_accuracy'])} ({row['accuracy_mean']:.4f})"
            if row["by_accuracy"]
            else "-"
        )
        faults = f"{', '.join(row['by_faults'])} ({row['found']:g})" if row["by_faults"] else "-"
        lines.append(f"  {_percent(row['budget']):>5}: {accuracy}; {faults}")
    return "\n".join(lines) + "\n"


# --- the pipeline's entry points (plain strings and numbers, as KFP passes them) ----------

# The ingest options a pipeline run may set; each is a testprio run option of that name.
PIPELINE_INGEST_PARAMETERS = ("preset", "ops", "input_shape", "shard_size", "label_column")


def options_from_parameters(
    *,
    budgets: str = "1,2,5,10",
    prioritizers: str = "",
    seeds: int = DEFAULT_SEEDS,
    split: float = 0.0,
    epochs: int = DEFAULT_EPOCHS,
    framework: str = "auto",
    output_kind: str = "auto",
    layers: str = "",
    surprise_layer: str = "",
    coverage_params: str = "",
    metamorphic_transforms: str = "",
    followups: int = INSTABILITY_FOLLOWUPS,
    **ingest_parameters: Any,
) -> EvaluateOptions:
    """The checked ``EvaluateOptions`` of the pipeline's parameters (plain strings and
    numbers); ``ingest_parameters``: any of ``PIPELINE_INGEST_PARAMETERS``."""
    return check_options(
        EvaluateOptions(
            budgets=parse_budgets(str(budgets)),
            prioritizers=parse_prioritizers(str(prioritizers)),
            seeds=int(seeds),
            split=float(split),
            epochs=int(epochs),
            framework=framework,
            output_kind=output_kind,
            input_shape=ingest_parameters.get("input_shape", ""),
            layers=parse_names(str(layers)),
            surprise_layer=str(surprise_layer).strip(),
            coverage_params=parse_coverage_params(str(coverage_params)),
            metamorphic_transforms=parse_names(str(metamorphic_transforms)),
            followups=int(followups),
            ingest=ingest.ingest_options(ingest_parameters),
        )
    )


# The pipeline parameters that are not options (where the data is and the run goes).
_LOCATION_PARAMETERS = ("root", "run_id", "model", "data", "train_data", "test_data")


def validate_parameters(parameters: dict[str, Any]) -> None:
    """Check the ``evaluate`` pipeline's parameters before a run is submitted (what
    ``testprio submit --pipeline evaluate`` checks); one sentence on the first bad one."""
    convert.resolve_framework(str(parameters["model"]), parameters.get("framework") or "auto")
    for name in ("data", "train_data", "test_data"):
        if parameters.get(name):
            sources.check_data_uri(str(parameters[name]))
    if not parameters.get("test_data") and not float(parameters.get("split") or 0):
        raise TestprioError(
            "the evaluation needs a held-out test split: give test_data, or split with the "
            "share of the pool to hold out (e.g. split=0.3)."
        )
    options_from_parameters(
        **{k: v for k, v in parameters.items() if k not in _LOCATION_PARAMETERS}
    )


def run_from_parameters(
    root: str,
    run_id: str,
    *,
    model: str,
    data: str,
    train_data: str,
    test_data: str = "",
    **parameters: Any,
) -> str:
    """``run_evaluation`` from the pipeline's parameters; returns the evaluation.json URI.

    ``parameters``: those of :func:`options_from_parameters`. An empty ``run_id`` gets a
    new timestamped one.
    """
    from testprio.layout import new_run_id
    from testprio.log import configure

    configure()
    run_id = run_id or new_run_id()
    run_evaluation(
        root,
        run_id,
        model=model,
        data=data,
        train_data=train_data,
        test_data=test_data,
        options=options_from_parameters(**parameters),
    )
    return evaluation_uri(RunLayout.create(root, run_id))


@dataclass(frozen=True)
class EvaluationReport:
    """What the report task hands the Kubeflow UI: figures, Markdown and one HTML page."""

    metrics: dict[str, float]
    markdown: str
    html: str


def _metric_name(*parts: Any) -> str:
    """KFP metric names: letters, digits and underscores (``gini_accuracy_5pct``)."""
    text = "_".join(str(part) for part in parts)
    return "".join(char if char.isalnum() else "_" for char in text)


def evaluation_metrics(evaluation: dict) -> dict[str, float]:
    """Per prioritizer: normalized APFD, faults found and mean retrained accuracy per budget;
    plus the baseline accuracy."""
    figures = {"baseline_accuracy": float(evaluation["baseline_accuracy"])}
    for name, entry in evaluation["prioritizers"].items():
        if entry["apfd"] and entry["apfd"]["normalized"] is not None:
            figures[_metric_name(name, "apfd_normalized")] = float(entry["apfd"]["normalized"])
        for row in entry["faults"]:
            figures[_metric_name(name, "faults", f"{row['budget']:g}pct")] = float(row["found"])
        for row in entry.get("retrain", []):
            key = _metric_name(name, "accuracy", f"{row['budget']:g}pct")
            figures[key] = float(row["accuracy_mean"])
    return figures


def evaluation_markdown(evaluation: dict) -> str:
    """The retrained accuracy and faults-found tables, and the winners, in Markdown."""
    budgets = evaluation["budgets"]
    header = "| prioritizer | APFD (norm.) | " + " | ".join(
        f"acc. {b:g}% [95% CI] | faults {b:g}%" for b in budgets
    )
    lines = [
        f"# Evaluation {evaluation['run_id']}",
        "",
        f"Baseline test accuracy (no retraining): **{evaluation['baseline_accuracy']:.4f}**. "
        f"Pool: {evaluation['samples']['pool']} samples, "
        f"{evaluation['pool']['misclassified']} misclassified. Retraining: "
        f"{evaluation['retraining']['description']}; {len(evaluation['seeds'])} seed(s).",
        "",
        header + " |",
        "|" + "---|" * (2 + 2 * len(budgets)),
    ]
    for name, entry in evaluation["prioritizers"].items():
        score = (entry["apfd"] or {}).get("normalized")
        cells = [name, "-" if score is None else f"{score:.4f}"]
        for acc, fault in zip(entry.get("retrain", []), entry["faults"], strict=False):
            cells.append(f"{acc['accuracy_mean']:.4f} [{acc['ci_low']:.3f}, {acc['ci_high']:.3f}]")
            cells.append(f"{fault['found']:g}/{fault['of']}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| budget | best by accuracy | best by faults found |", "|---|---|---|"]
    for row in evaluation["winners"]:
        lines.append(
            f"| {row['budget']:g}% | {', '.join(row['by_accuracy'])} | "
            f"{', '.join(row['by_faults'])} |"
        )
    return "\n".join(lines) + "\n"


def evaluation_html(evaluation: dict) -> str:
    """A self-contained page (no scripts, inline SVG charts) for the Kubeflow UI: retrained
    accuracy, faults found per budget, the fault-detection curves (when the evaluation has
    them) and normalized APFD."""
    import html

    from testprio.report import charts

    frames = evaluation_frames(evaluation)
    figures = [
        charts.retrained_accuracy(frames["retrain"], evaluation["baseline_accuracy"]),
        charts.faults_found(frames["faults"]),
        charts.apfd_bars(frames["apfd"]),
    ]
    if frames["curves"]:  # evaluations written before curves were kept have none
        figures.insert(
            2, charts.fault_detection_curves(frames["curves"], frames["curve_references"])
        )
    svgs = "\n".join(f"<div>{charts.to_svg(figure)}</div>" for figure in figures)
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>Evaluation {html.escape(evaluation['run_id'])}</title></head><body>"
        f"<h1>Evaluation {html.escape(evaluation['run_id'])}</h1>"
        f"<pre>{html.escape(format_evaluation(evaluation))}</pre>{svgs}</body></html>"
    )


def report_outputs(evaluation_json_uri: str) -> EvaluationReport:
    """The report task's outputs for the evaluation at ``evaluation_json_uri``."""
    evaluation = storage.read_json(evaluation_json_uri)
    return EvaluationReport(
        metrics=evaluation_metrics(evaluation),
        markdown=evaluation_markdown(evaluation),
        html=evaluation_html(evaluation),
    )
