"""The preprocessing op base class ``Op`` and how ops read their JSON parameters (``Param``).

The op contract (shapes, dtypes, statistics, layout) is in ``testprio.ingest.preprocess``'s
docstring. The parsers and helpers here are shared by the op families:
``preprocess_arrays`` (arithmetic and per-channel statistics) and ``preprocess_images``
(image ops and layout).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

# Rows of a batch handled at once where an op needs temporaries several times its size.
_BLOCK_VALUES = 2**22

# --- parameters ------------------------------------------------------------------------

REQUIRED = object()


@dataclass(frozen=True)
class Param:
    """One parameter of an op: how to read a JSON value, what to ask for, its default."""

    parse: Callable[[Any], Any]  # raises ValueError on a value of the wrong kind
    expected: str  # completes "give ..."
    default: Any = REQUIRED


class ParamError(ValueError):
    """A parameter value of the wrong kind."""

    def __init__(self, key: str, value: Any, expected: str):
        super().__init__(f"has {key}={show_value(value)}; give {expected}")


def show_value(value: Any) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(value)
    return float(value)


def optional(parse: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def parse_optional(value: Any) -> Any:
        return None if value is None else parse(value)

    return parse_optional


def parse_numbers(value: Any) -> float | tuple[float, ...]:
    """A number (every channel) or a non-empty list of them (one per channel)."""
    if isinstance(value, list | tuple):
        if not value:
            raise ValueError(value)
        return tuple(parse_number(item) for item in value)
    return parse_number(value)


def parse_positive_numbers(value: Any) -> float | tuple[float, ...]:
    numbers = parse_numbers(value)
    if min(numbers if isinstance(numbers, tuple) else (numbers,)) <= 0:
        raise ValueError(value)
    return numbers


def parse_size(value: Any) -> int | tuple[int, int]:
    if is_int(value) and value > 0:
        return int(value)
    if isinstance(value, list | tuple) and len(value) == 2:
        if all(is_int(item) and item > 0 for item in value):
            return int(value[0]), int(value[1])
    raise ValueError(value)


def parse_range(value: Any) -> tuple[float, float]:
    if isinstance(value, list | tuple) and len(value) == 2:
        low, high = parse_number(value[0]), parse_number(value[1])
        if low < high:
            return low, high
    raise ValueError(value)


def parse_channel_axis(value: Any) -> str | int:
    if value in ("last", "first") or is_int(value):
        return value
    raise ValueError(value)


def one_of(*choices: str) -> Callable[[Any], str]:
    def parse_choice(value: Any) -> str:
        if isinstance(value, str) and value in choices:
            return value
        raise ValueError(value)

    return parse_choice


def choices_text(*choices: str) -> str:
    return "one of " + ", ".join(f'"{choice}"' for choice in choices)


NUMBER = "a finite number"


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(item) for item in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


# --- the op base class -------------------------------------------------------------------


class Op:
    """A batch transform ``(N, ...) -> (N, ...)`` built from ``{"op": name, **params}``.

    Subclasses declare ``name`` and ``params``; the constructor reads each parameter with its
    ``Param.parse`` (ValueError on a bad value) and then runs ``_check`` for rules between
    parameters. ``per_sample_safe`` False (the custom op) keeps an op and the rest of the
    chain out of the per-sample head (``Preprocessor.split``); ``needs_channels_last`` marks
    image ops.
    """

    name: ClassVar[str]
    params: ClassVar[dict[str, Param]] = {}
    per_sample_safe: ClassVar[bool] = True
    needs_channels_last: ClassVar[bool] = False
    _where: str | None = None  # how errors name this op, e.g. "op [3] (resize) of --ops"

    def __init__(self, **values: Any):
        unknown = sorted(set(values) - set(self.params))
        if unknown:
            raise TypeError(f"{self.name} takes no parameter {', '.join(unknown)}")
        for key, param in self.params.items():
            value = values.get(key, param.default)
            if value is REQUIRED:
                raise TypeError(f"{self.name} needs parameter {key}")
            if key in values:
                try:
                    value = param.parse(value)
                except (ValueError, TypeError):
                    raise ParamError(key, value, param.expected) from None
            setattr(self, key, value)
        self._check()

    def _check(self) -> None:
        """Rules between parameters; raises ValueError("has ...; give ...")."""

    @property
    def needs_fit(self) -> bool:
        """True while statistics still have to be computed from the pool."""
        return False

    def apply(self, x: np.ndarray) -> np.ndarray:
        """``(N, ...) -> (N, ...)``; ValueError saying what the op needs if it cannot."""
        raise NotImplementedError

    def fit(self, batches: Iterable[np.ndarray]) -> None:
        """Compute statistics from the pool's batches (as they reach this op); most have none."""

    def record(self) -> dict:
        """The exact spec of this op, computed statistics included."""
        return {"op": self.name, **{key: _jsonable(getattr(self, key)) for key in self.params}}

    def close(self) -> None:
        """Release what the op holds (the custom op's process); may be called twice."""

    def _probe(self, x: np.ndarray) -> np.ndarray:
        """What ``apply`` gives for the shape, even before ``fit``."""
        return self.apply(x)

    def __repr__(self) -> str:
        params = ", ".join(f"{key}={getattr(self, key)!r}" for key in self.params)
        return f"{type(self).__name__}({params})"


def working_float(x: np.ndarray) -> np.ndarray:
    """Working float dtype: float64 stays, anything else becomes float32."""
    return x if x.dtype in (np.float32, np.float64) else x.astype(np.float32)


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Values as an 8-bit image stores them: rounded, clipped to 0..255 (NaN -> 0)."""
    if x.dtype == np.uint8:
        return x
    values = np.nan_to_num(x.astype(np.float64, copy=False), nan=0.0)
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def row_blocks(x: np.ndarray) -> Iterator[np.ndarray]:
    """``x`` in blocks of rows of at most ``_BLOCK_VALUES`` values (at least one row)."""
    per_row = max(1, int(np.prod(x.shape[1:], dtype=np.int64)))
    step = max(1, _BLOCK_VALUES // per_row)
    for start in range(0, len(x), step):
        yield x[start : start + step]
