"""The prioritizers as the evaluation runs them: each orders the pool, most worth labelling
first, from what a ``Context`` holds (the pool, the training reference, the model's hidden
activations computed once and shared).

``PRIORITIZERS`` is the registry by name: the class-probability metrics and ``random``,
plus the coverage, surprise and metamorphic families when their modules are installed. The
names themselves (what ``--prioritizers`` accepts, aliases) are ``testprio.prioritizers``'.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from testprio import metrics, retrain
from testprio.errors import TestprioError

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
# Metamorphic follow-ups per sample for the instability prioritizer (--followups).
INSTABILITY_FOLLOWUPS = 10


class Context:
    """The pool and the training reference as the prioritizers need them, with the hidden
    activations computed on first use and shared between prioritizers.

    ``pool_probs`` ``(N, K)`` float64; ``pool_ids`` ``(N,)`` int64 (ties break by it);
    ``pool_x`` ``(N, *shape)``; ``train_x`` and ``train_probs`` likewise for the reference.
    ``extras`` collects what a prioritizer wants recorded beside its figures; ``scores``
    holds the ``(N,)`` per-sample scores the last order sorted by (None for ``random``),
    for the check that they are not constant (``testprio.summary.score_spread``).
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
        surprise_reduce: str = "mean",
        coverage_params: dict[str, dict] | None = None,
        metamorphic_transforms: Iterable[str] = (),
        followups: int = 0,
    ) -> None:
        self.model = model
        self.chosen_layers = tuple(layers)
        self.chosen_surprise_layer = surprise_layer
        self.surprise_reduce = surprise_reduce
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
        self.scores: np.ndarray | None = None
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
        """``(N, units)`` activations of :attr:`surprise_layer` for ``part``, a feature map
        reduced by ``surprise_reduce`` (coverage's layers always average over space)."""
        if self.surprise_layer in self.layers and self.surprise_reduce == "mean":
            return self.activations(part)[self.layers.index(self.surprise_layer)]
        key = f"{part}:{self.surprise_layer}:{self.surprise_reduce}"
        if key not in self._activations:
            from testprio.activations import flatten_activation

            x = self.pool_x if part == "pool" else self.train_x
            (output,) = retrain.onnx_outputs(self._require_model(), [self.surprise_layer], x)
            self._activations[key] = [flatten_activation(output, reduce=self.surprise_reduce)]
        return self._activations[key][0]

    def describe_layers(self) -> dict:
        """What evaluation.json records under ``layers``."""
        return {
            "coverage": self.layers,
            "surprise": self.surprise_layer,
            "surprise_reduce": self.surprise_reduce,
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
        context.scores = scores
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
            context.scores = scores  # CAM: they order what adds no new coverage
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
            context.scores = scores
            return order_by_score(scores, context.pool_ids)

        title = f"{metric.upper()} surprise adequacy (last hidden layer or --surprise-layer)"
        return Prioritizer(metric, title, order)

    return {metric: make(metric) for metric in surprise.SURPRISE_METRICS}


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
        context.scores = result.instability
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


# Prioritizer families that read hidden layers (registered names start with these).
_LAYER_FAMILIES = ("nac-", "kmnc", "nbc-", "snac-", "tknc-", "lsa", "dsa", "mdsa")


def hidden_settings(
    context: Context,
    prioritizers: Iterable[str],
    *,
    layers_chosen: bool,
    coverage_params: dict[str, dict],
) -> dict:
    """``layers`` and ``coverage_params`` for evaluation.json, when one of ``prioritizers``
    read them (or ``--layers`` was given: ``layers_chosen``); else ``{}``."""
    used = [name for name in prioritizers if name.startswith(_LAYER_FAMILIES)]
    if not used and not layers_chosen:
        return {}
    settings: dict[str, Any] = {"layers": context.describe_layers()}
    if any(name.startswith(_LAYER_FAMILIES[:5]) for name in used):
        from testprio.coverage import COVERAGE_DEFAULTS

        settings["coverage_params"] = {
            metric: {**defaults, **coverage_params.get(metric, {})}
            for metric, defaults in COVERAGE_DEFAULTS.items()
        }
    return settings
