"""Preprocessing ops for any numeric samples (arrays, tabular features, images alike).

Arithmetic (``scale``, ``minmax``, ``clip``, ``cast``) and per-channel statistics
(``standardize``, ``center``: given, or computed from the pool in a streaming pass). The op
contract is in ``testprio.ingest.preprocess``'s docstring.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

import numpy as np

from testprio.errors import TestprioError
from testprio.ingest.preprocess_base import (
    NUMBER,
    Op,
    Param,
    choices_text,
    is_int,
    one_of,
    optional,
    parse_channel_axis,
    parse_number,
    parse_numbers,
    parse_positive_numbers,
    parse_range,
    row_blocks,
    working_float,
)

STATISTIC = "a number or a list of numbers (one per channel)"
CHANNEL_AXIS = '"last", "first" or an axis of the sample (an integer)'

# --- arithmetic ops ----------------------------------------------------------------------


class Scale(Op):
    """``y = x * multiply / divide + offset``, e.g. ``{"op": "scale", "divide": 255}``."""

    name = "scale"
    params = {
        "multiply": Param(parse_number, NUMBER, 1.0),
        "divide": Param(parse_number, "a non-zero finite number", 1.0),
        "offset": Param(parse_number, NUMBER, 0.0),
    }
    multiply: float
    divide: float
    offset: float

    def _check(self) -> None:
        if self.divide == 0:
            raise ValueError("has divide=0; give a non-zero number")

    def apply(self, x: np.ndarray) -> np.ndarray:
        y = working_float(x)
        # Multiply and divide apart, skipping the neutral ones: 255 / 255 stays exactly 1.
        if self.multiply != 1:
            y = y * self.multiply
        if self.divide != 1:
            y = y / self.divide
        if self.offset != 0:
            y = y + self.offset
        return y


class MinMax(Op):
    """Each sample mapped linearly onto ``range``: its min to range[0], its max to range[1].

    A constant sample maps to range[0].
    """

    name = "minmax"
    params = {
        "range": Param(parse_range, "a [low, high] list of numbers with low < high", (0.0, 1.0))
    }
    range: tuple[float, float]

    def apply(self, x: np.ndarray) -> np.ndarray:
        y = working_float(x)
        if y.size == 0:
            return y
        flat = y.reshape(len(y), -1)
        low, high = flat.min(axis=1), flat.max(axis=1)
        span = high - low
        factor = np.divide(
            self.range[1] - self.range[0], span, out=np.zeros_like(span), where=span > 0
        )
        shape = (len(y),) + (1,) * (y.ndim - 1)
        return (y - low.reshape(shape)) * factor.reshape(shape) + self.range[0]


class Clip(Op):
    """Values limited to ``[min, max]``; either bound may be left out, not both."""

    name = "clip"
    params = {
        "min": Param(optional(parse_number), NUMBER, None),
        "max": Param(optional(parse_number), NUMBER, None),
    }
    min: float | None
    max: float | None

    def _check(self) -> None:
        if self.min is None and self.max is None:
            raise ValueError("has neither min nor max; give at least one bound")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"has min={self.min:g} above max={self.max:g}; give min <= max")

    def apply(self, x: np.ndarray) -> np.ndarray:
        return np.clip(working_float(x), self.min, self.max)


_CAST_DTYPES = ("float32", "float16", "float64", "uint8", "int8", "int16", "int32")


class Cast(Op):
    """Values as saved in ``dtype``: integer types round (half to even) and clip to the range.

    NaN becomes 0 under an integer cast, as nothing else can hold it.
    """

    name = "cast"
    params = {"dtype": Param(one_of(*_CAST_DTYPES), choices_text(*_CAST_DTYPES))}
    dtype: str

    def apply(self, x: np.ndarray) -> np.ndarray:
        target = np.dtype(self.dtype)
        if x.dtype == target:
            return x
        if target.kind == "f":
            return x.astype(target)
        info = np.iinfo(target)
        values = np.nan_to_num(x.astype(np.float64), nan=0.0)
        return np.clip(np.rint(values), info.min, info.max).astype(target)


# --- per-channel statistics ----------------------------------------------------------------


def _channel_batch_axis(channel_axis: str | int, sample_ndim: int) -> int | None:
    """The batch axis holding channels, or None where the whole sample is one channel."""
    if is_int(channel_axis):
        if not -sample_ndim <= channel_axis < sample_ndim:
            raise ValueError(
                f"channel_axis {channel_axis} is not an axis of samples with {sample_ndim} "
                "axes; give one of their axes"
            )
        return channel_axis % sample_ndim + 1
    if sample_ndim == 1:
        return 1  # (F,) features: each its own channel
    if sample_ndim in (0, 2):
        return None  # (H, W): one channel
    return sample_ndim if channel_axis == "last" else 1


class _Moments:
    """Per-channel count, mean and sum of squared deviations, merged batch by batch.

    Each batch's moments are computed around its own mean and merged with Chan, Golub and
    LeVeque's update, in float64: stable for long pools with large means.
    """

    def __init__(self) -> None:
        self.count = 0
        self.mean: np.ndarray | None = None
        self.m2: np.ndarray | None = None

    def add(self, values: np.ndarray) -> None:
        """``values`` ``(M, C)`` float64: M observations of C channels."""
        count = len(values)
        if count == 0:
            return
        mean = values.mean(axis=0)
        m2 = np.square(values - mean).sum(axis=0)
        if self.mean is None:
            self.count, self.mean, self.m2 = count, mean, m2
            return
        if mean.shape != self.mean.shape:
            raise ValueError(
                f"the samples have {len(mean)} channels in one batch and {len(self.mean)} in "
                "another; give samples of one shape"
            )
        total = self.count + count
        delta = mean - self.mean
        self.mean = self.mean + delta * (count / total)
        self.m2 = self.m2 + m2 + np.square(delta) * (self.count * count / total)
        self.count = total


def _add_batch(moments: _Moments, batch: np.ndarray, channel_axis: str | int) -> None:
    if len(batch) == 0:
        return
    if batch.dtype.kind == "f":  # ingest quarantines these samples
        batch = batch[np.isfinite(batch.reshape(len(batch), -1)).all(axis=1)]
    axis = _channel_batch_axis(channel_axis, batch.ndim - 1)
    for block in row_blocks(batch):
        values = block[..., None] if axis is None else np.moveaxis(block, axis, -1)
        moments.add(values.reshape(-1, values.shape[-1]).astype(np.float64))


class _PerChannel(Op):
    """An op with per-channel statistics, given or computed from the pool by ``fit``."""

    channel_axis: str | int
    stats: ClassVar[tuple[str, ...]]

    @property
    def needs_fit(self) -> bool:
        return getattr(self, self.stats[0]) is None

    def _check(self) -> None:
        given = [getattr(self, stat) is not None for stat in self.stats]
        if any(given) and not all(given):
            raise ValueError(
                f"gives only some of {' and '.join(self.stats)}; give all, or none to "
                "compute them from the pool"
            )

    def fit(self, batches: Iterable[np.ndarray]) -> None:
        if not self.needs_fit:
            raise RuntimeError(f"{self.name} already has its statistics")
        where = self._where or f"op '{self.name}'"
        moments = _Moments()
        try:
            for batch in batches:
                _add_batch(moments, np.asarray(batch), self.channel_axis)
        except ValueError as exc:
            raise TestprioError(
                f"{where} cannot compute its statistics: {str(exc).rstrip('.')}."
            ) from None
        if moments.mean is None:
            raise TestprioError(
                f"{where} found no samples with finite values to compute "
                f"{' and '.join(self.stats)} from; give them in the op, or a pool with usable "
                "samples."
            )
        self._set_statistics(moments)

    def _set_statistics(self, moments: _Moments) -> None:
        raise NotImplementedError

    def _per_channel(self, values: float | tuple[float, ...], x: np.ndarray, what: str):
        """Statistic ``values`` shaped to broadcast against ``x``, in ``x``'s dtype."""
        array = np.asarray(values, dtype=x.dtype)
        if array.size == 1:
            return array.reshape(())
        axis = _channel_batch_axis(self.channel_axis, x.ndim - 1)
        channels = 1 if axis is None else x.shape[axis]
        if array.size != channels:
            where = (
                "one channel"
                if axis is None
                else f"{channels} channel{'s' * (channels != 1)} on sample axis {axis - 1}"
            )
            raise ValueError(
                f"{what} has {array.size} values but the samples have {where}; give one value "
                "per channel or set channel_axis"
            )
        shape = [1] * x.ndim
        shape[axis] = channels
        return array.reshape(shape)

    def _probe(self, x: np.ndarray) -> np.ndarray:
        if self.needs_fit:
            _channel_batch_axis(self.channel_axis, x.ndim - 1)
            return working_float(x)
        return self.apply(x)


class Standardize(_PerChannel):
    """Per channel ``(x - mean) / std``; without mean and std both are computed from the pool.

    Computed std is the population std (ddof 0); a channel with std 0 (a constant feature)
    gets std 1, as in scikit-learn's StandardScaler, so it becomes 0 instead of NaN.
    """

    name = "standardize"
    stats = ("mean", "std")
    params = {
        "mean": Param(optional(parse_numbers), STATISTIC, None),
        "std": Param(
            optional(parse_positive_numbers),
            "a positive number or a list of them (per channel)",
            None,
        ),
        "channel_axis": Param(parse_channel_axis, CHANNEL_AXIS, "last"),
    }
    mean: float | tuple[float, ...] | None
    std: float | tuple[float, ...] | None

    def _check(self) -> None:
        super()._check()
        lengths = {len(stat) for stat in (self.mean, self.std) if isinstance(stat, tuple)}
        if len(lengths - {1}) > 1:
            raise ValueError(
                f"has {len(self.mean)} mean values and {len(self.std)} std values; give one "
                "of each per channel"
            )

    def _set_statistics(self, moments: _Moments) -> None:
        std = np.sqrt(moments.m2 / moments.count)
        std[std == 0] = 1.0
        self.mean = tuple(float(value) for value in moments.mean)
        self.std = tuple(float(value) for value in std)

    def apply(self, x: np.ndarray) -> np.ndarray:
        y = working_float(x)
        return (y - self._per_channel(self.mean, y, "mean")) / self._per_channel(self.std, y, "std")


class Center(_PerChannel):
    """Per channel ``x - mean``; without mean it is computed from the pool."""

    name = "center"
    stats = ("mean",)
    params = {
        "mean": Param(optional(parse_numbers), STATISTIC, None),
        "channel_axis": Param(parse_channel_axis, CHANNEL_AXIS, "last"),
    }
    mean: float | tuple[float, ...] | None

    def _set_statistics(self, moments: _Moments) -> None:
        self.mean = tuple(float(value) for value in moments.mean)

    def apply(self, x: np.ndarray) -> np.ndarray:
        y = working_float(x)
        return y - self._per_channel(self.mean, y, "mean")
