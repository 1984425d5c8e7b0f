"""What to evaluate and how: ``EvaluateOptions`` (each field a ``testprio evaluate``
option), the parsing of their CLI text and their checks, with one sentence per bad value."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from dataclasses import dataclass, field

from testprio import ingest, retrain
from testprio.errors import TestprioError
from testprio.evaluation.prioritizers import (
    INSTABILITY_FOLLOWUPS,
    PRIORITIZERS,
    default_prioritizers,
)

DEFAULT_BUDGETS = (1.0, 2.0, 5.0, 10.0)
DEFAULT_SEEDS = 5
DEFAULT_EPOCHS = 3
# --splits: each split repeats the whole evaluation (every order and every fine-tuning), so
# that a typo cannot start days of work.
MAX_SPLITS = 20
# The other counts, bounded for the same reason (and memory: results are kept per seed,
# budget and prioritizer): each seed and each budget fine-tunes the model once per
# prioritizer, each epoch is a pass over the training data plus the selection.
MAX_SEEDS = 100
MAX_EPOCHS = 100
MAX_BUDGETS = 20
# kmnc's sections and tknc's top_neurons size per-sample arrays (units x sections).
MAX_COVERAGE_COUNT = 1_000


@dataclass(frozen=True)
class EvaluateOptions:
    """What to evaluate and how (each field is a ``testprio evaluate`` option)."""

    budgets: tuple[float, ...] = DEFAULT_BUDGETS
    prioritizers: tuple[str, ...] = ()  # empty: default_prioritizers()
    seeds: int = DEFAULT_SEEDS
    split: float = 0.0  # share of the pool held out when no test data is given
    splits: int = 1  # seeded pool/test splits of the pool (with split), each evaluated whole
    epochs: int = DEFAULT_EPOCHS
    framework: str = "auto"
    output_kind: str = "auto"
    output_name: str = ""
    input_shape: str = ""
    layers: tuple[str, ...] = ()  # empty: activations.hidden_layer_names
    surprise_layer: str = ""  # empty: the last of the layers
    surprise_reduce: str = "mean"  # a feature map's vectors: activations.SPATIAL_REDUCTIONS
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
            f"--budgets {','.join(f'{b:g}' for b in budgets[:10]) or '(empty)'}"
            f"{',...' if len(budgets) > 10 else ''} must be percents of the pool above 0 and "
            "at most 100, like 1,2,5,10."
        )
    budgets = tuple(sorted(set(budgets)))
    if len(budgets) > MAX_BUDGETS:
        raise TestprioError(
            f"--budgets names {len(budgets):,} budgets, more than the limit of {MAX_BUDGETS}: "
            "each budget fine-tunes the model once per seed and prioritizer; give fewer, "
            "like 1,2,5,10."
        )
    return budgets


def parse_prioritizers(text: str) -> tuple[str, ...]:
    """``"gini,random"`` -> the names, checked; empty text (a pipeline's unset parameter)
    -> the defaults; text that names none (``","``) is refused."""
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    if text.strip() and not names:
        raise _names_none(text)
    return check_prioritizers(names)


def given_prioritizers(value: str | Iterable[str]) -> tuple[str, ...]:
    """The prioritizers a caller named (command-line text or names), checked. Naming none
    (``''``, ``()``) is refused: leaving the option out is how to get the defaults."""
    names = (
        tuple(part.strip() for part in value.split(",") if part.strip())
        if isinstance(value, str)
        else tuple(value)
    )
    if not names:
        raise _names_none(value if isinstance(value, str) else ",".join(value))
    return check_prioritizers(names)


def _names_none(text: str) -> TestprioError:
    return TestprioError(
        f"--prioritizers '{text}' names no prioritizer; leave the option out for the "
        f"defaults ({', '.join(default_prioritizers())}), or name some of "
        f"{', '.join(sorted(PRIORITIZERS))}."
    )


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
            if kind is int and not 1 <= value <= MAX_COVERAGE_COUNT:
                raise TestprioError(
                    f"--coverage-params {metric}.{name}={value} must be from 1 to "
                    f"{MAX_COVERAGE_COUNT:,}: it sizes an array per sample and unit."
                )
    return {metric: dict(values) for metric, values in params.items()}


def _count(flag: str, value: object, limit: int, why: str) -> int:
    """A count option as a whole number from 1 to ``limit`` (absurd counts exhaust memory
    and time before any result); the pipeline's or the API's digits are read as one."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, float) and value.is_integer():  # a compiled pipeline's 1.0
        value = int(value)
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)
        or not 1 <= value <= limit
    ):
        raise TestprioError(f"{flag} {value} must be a whole number from 1 to {limit:,}: {why}.")
    return int(value)


def check_test_split(has_test_data: bool, split: float, splits: int, *, cli: bool = True) -> None:
    """Exactly one held-out test split: ``--test-data`` or ``--split`` (with ``--splits``
    only ``--split``). ``cli``: name the options as the command line does, else as the
    pipeline's parameters."""
    name = (lambda flag: flag) if cli else (lambda flag: flag.removeprefix("--").replace("-", "_"))
    if not has_test_data and not split:
        raise TestprioError(
            f"the evaluation needs a held-out test split: give {name('--test-data')}, or "
            f"{name('--split')} with the share of the pool to hold out (e.g. 0.3)."
        )
    if has_test_data and split:
        raise TestprioError(
            f"{name('--split')}{' ' if cli else '='}{split:g} holds out a share of the pool as "
            f"the test split, and {name('--test-data')} gives one; give one of them."
        )
    if has_test_data and splits > 1:
        raise TestprioError(
            f"{name('--splits')}{' ' if cli else '='}{splits} draws a new pool and test split "
            f"from the pool for each split; give {name('--split')} (the share to hold out) "
            f"instead of {name('--test-data')}, whose test split is fixed."
        )


def check_options(options: EvaluateOptions) -> EvaluateOptions:
    """Every option checked; returns them with the defaults filled in."""
    seeds = _count(
        "--seeds",
        options.seeds,
        MAX_SEEDS,
        "each seed fine-tunes the model once per prioritizer and budget",
    )
    epochs = _count("--epochs", options.epochs, MAX_EPOCHS, "each epoch is a pass over the data")
    splits = _count(
        "--splits",
        options.splits,
        MAX_SPLITS,
        "each split repeats the whole evaluation on a new seeded pool/test split",
    )
    from testprio.metamorphic import MAX_FOLLOWUPS

    followups = _count(
        "--followups",
        options.followups,
        MAX_FOLLOWUPS,
        "each sample's follow-ups are predicted at once",
    )
    if options.metamorphic_transforms:
        from testprio.metamorphic import TRANSFORMS

        unknown = [name for name in options.metamorphic_transforms if name not in TRANSFORMS]
        if unknown:
            raise TestprioError(
                f"unknown metamorphic transform(s) {', '.join(unknown)} in "
                f"--metamorphic-transforms; choose from {', '.join(TRANSFORMS)}."
            )
    check_coverage_params(options.coverage_params)
    from testprio.activations import check_reduction

    check_reduction(options.surprise_reduce)
    if not 0 <= float(options.split) < 1:
        raise TestprioError(
            f"--split {options.split} must be a share of the pool from 0 up to (not "
            "including) 1, like 0.3."
        )
    retrain.check_settings(retrain.RetrainSettings(epochs=epochs))
    ingest.check_options(options.ingest)
    return EvaluateOptions(
        **{
            **options.__dict__,
            "budgets": check_budgets(options.budgets),
            "prioritizers": check_prioritizers(options.prioritizers),
            "seeds": seeds,
            "epochs": epochs,
            "followups": followups,
            "splits": splits,
        }
    )
