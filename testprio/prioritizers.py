"""The names of the prioritizers, once: what ``--metric`` (prioritize) and ``--prioritizers``
(evaluate) accept, which score column each reads, and how its order is made.

A prioritizer orders the pool most-worth-labelling first. Most sort one per-sample score
column descending (ties by ``sample_id``); the coverage-additive (CAM) ones choose greedily
over the covered cells of the whole pool (``testprio.coverage.cam_order``).
"""

from __future__ import annotations

from dataclasses import dataclass

from testprio.coverage import COVERAGE_METRICS
from testprio.errors import TestprioError
from testprio.metrics import METRICS
from testprio.surprise import SURPRISE_METRICS

# Families of prioritizers and the run option that makes the score stage compute them.
CLASS_FAMILY, COVERAGE_FAMILY, SURPRISE_FAMILY, METAMORPHIC_FAMILY = (
    "class",
    "coverage",
    "surprise",
    "metamorphic",
)
# How a coverage metric orders: CTM by its per-sample total, CAM coverage-additive.
COVERAGE_ORDERS = ("ctm", "cam")
# KMNC's per-sample total hardly varies (every in-range unit covers one section), so the
# plain name means its coverage-additive order, as in the literature.
ALIASES = {"kmnc": "kmnc-cam"}
INSTABILITY = "instability"


@dataclass(frozen=True)
class PrioritizerName:
    """``column``: the score column read; ``order``: ``score`` (column descending) or ``cam``
    (coverage-additive over that column's covered cells)."""

    name: str
    column: str
    order: str
    family: str


def _table() -> dict[str, PrioritizerName]:
    table = {name: PrioritizerName(name, name, "score", CLASS_FAMILY) for name in METRICS}
    for metric in COVERAGE_METRICS:
        for how in COVERAGE_ORDERS:
            order = "cam" if how == "cam" else "score"
            table[f"{metric}-{how}"] = PrioritizerName(
                f"{metric}-{how}", metric, order, COVERAGE_FAMILY
            )
    for alias, name in ALIASES.items():
        table[alias] = PrioritizerName(
            alias, table[name].column, table[name].order, COVERAGE_FAMILY
        )
    for metric in SURPRISE_METRICS:
        table[metric] = PrioritizerName(metric, metric, "score", SURPRISE_FAMILY)
    table[INSTABILITY] = PrioritizerName(INSTABILITY, INSTABILITY, "score", METAMORPHIC_FAMILY)
    return table


NAMES: dict[str, PrioritizerName] = _table()
# Score columns of the optional families, in the order scores shards hold them.
COVERAGE_COLUMNS = tuple(COVERAGE_METRICS)
SURPRISE_COLUMNS = tuple(SURPRISE_METRICS)
OPTIONAL_COLUMNS = (*COVERAGE_COLUMNS, *SURPRISE_COLUMNS, INSTABILITY)
# The run option that makes each optional family available (for the refusal sentence).
ENABLED_BY = {
    COVERAGE_FAMILY: "give --train-data R (the reference pool, normally the training data)",
    SURPRISE_FAMILY: "give --train-data R (the reference pool, normally the training data)",
    METAMORPHIC_FAMILY: "give --metamorphic default (or a comma list of transforms)",
}


# What a ranking by each family puts first, for reports (the class metrics: less sure first).
MEANING = {
    CLASS_FAMILY: "higher = less sure",
    COVERAGE_FAMILY: "more covered neuron cells first",
    SURPRISE_FAMILY: "higher = more surprising against the reference",
    METAMORPHIC_FAMILY: "higher = more follow-ups change class",
}


def meaning(name: str) -> str:
    """What ordering by prioritizer ``name`` puts first, in a few words."""
    found = lookup(name)
    if found.order == "cam":
        return "most newly covered neuron cells first (coverage-additive)"
    return MEANING[found.family]


def lookup(name: str) -> PrioritizerName:
    """The prioritizer called ``name``; an unknown name is refused in one sentence."""
    if name not in NAMES:
        raise TestprioError(f"unknown metric '{name}'; choose one of {', '.join(NAMES)}.")
    return NAMES[name]


def check_available(name: str, *, families: set[str] | frozenset[str]) -> PrioritizerName:
    """``name`` if the run computes its family (``class`` always); else one sentence saying
    which option enables it."""
    found = lookup(name)
    if found.family != CLASS_FAMILY and found.family not in families:
        raise TestprioError(
            f"--metric {name} is not computed in this run; {ENABLED_BY[found.family]} to "
            "compute it."
        )
    return found
