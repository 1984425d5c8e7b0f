"""Preprocessing: ops applied to each batch of the pool in the ingest stage, and presets.

The op contract
---------------
- A batch is an array ``(N, *sample_shape)``. Image samples arrive channels-last, ``(H, W)``
  or ``(H, W, C)``, usually uint8 0..255; array pools may hold any numeric dtype. An op maps
  a batch to a numeric batch with the same N; ``Preprocessor.apply`` casts the chain's output
  to float32.
- An op is built from a JSON spec ``{"op": NAME, **params}`` through the table ``OPS``;
  ``record()`` gives the exact spec back, computed statistics included, and ``build_op`` of
  that record rebuilds an identical op.
- ``apply`` treats every sample on its own (a sample alone and inside a batch give the same
  output) and changes nothing, so the head of a chain may run per image in decoding threads.
  ``fit`` is the only method that changes an op.
- dtypes: the image ops (``rgb``, ``grayscale``, ``rgb_to_y``, ``equalize``, ``resize``,
  ``center_crop``) keep uint8 data uint8, rounded and clipped as Pillow stores an image, so a
  preset computes what a Pillow-based training pipeline computed; other dtypes go through in
  float. Arithmetic ops give float32 (float64 input stays float64).
- Statistics (``standardize`` and ``center`` without ``mean``/``std``) are computed in a
  streaming pass over the pool: float64 moments per batch, merged with Chan et al.'s formula,
  in constant memory. Samples holding NaN or Inf are left out (ingest quarantines them).
- Layout: a chain starts channels-last, unless its first ``layout`` op converts to NHWC, which
  says the pool is channels-first up to that op (NCHW arrays). ``layout`` ops then alternate.
  Image ops need channels-last samples: ``build`` rejects one where samples are NCHW.
- Per-channel ops (``standardize``, ``center``) take ``channel_axis``: ``"last"`` (the
  default where samples are channels-last), ``"first"`` (the default where they are NCHW) or
  an axis of the sample. With ``"last"``/``"first"``: ``(F,)`` samples have F channels (each
  feature standardized on its own, as for tabular data), ``(H, W)`` samples one channel, and
  samples of 3 or more axes have their channels on the last/first axis.

A problem the user can fix raises TestprioError naming the op, e.g. ``op [3] (resize) of
--ops``: op indexes count from 0, as in the JSON list.
"""

from __future__ import annotations

import copy
import difflib
import json
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from testprio.errors import TestprioError

CUSTOM = "custom"  # the spec name that marks where the custom op runs
DEFAULT_SOURCE = "the op list"
# Rows of a batch handled at once where an op needs temporaries several times its size.
_BLOCK_VALUES = 2**22

# --- parameters ------------------------------------------------------------------------

_REQUIRED = object()


@dataclass(frozen=True)
class Param:
    """One parameter of an op: how to read a JSON value, what to ask for, its default."""

    parse: Callable[[Any], Any]  # raises ValueError on a value of the wrong kind
    expected: str  # completes "give ..."
    default: Any = _REQUIRED


class ParamError(ValueError):
    """A parameter value of the wrong kind."""

    def __init__(self, key: str, value: Any, expected: str):
        super().__init__(f"has {key}={_show(value)}; give {expected}")


def _show(value: Any) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(value)
    return float(value)


def _optional(parse: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def parse_optional(value: Any) -> Any:
        return None if value is None else parse(value)

    return parse_optional


def _numbers(value: Any) -> float | tuple[float, ...]:
    """A number (every channel) or a non-empty list of them (one per channel)."""
    if isinstance(value, list | tuple):
        if not value:
            raise ValueError(value)
        return tuple(_number(item) for item in value)
    return _number(value)


def _positive_numbers(value: Any) -> float | tuple[float, ...]:
    numbers = _numbers(value)
    if min(numbers if isinstance(numbers, tuple) else (numbers,)) <= 0:
        raise ValueError(value)
    return numbers


def _size(value: Any) -> int | tuple[int, int]:
    if _is_int(value) and value > 0:
        return int(value)
    if isinstance(value, list | tuple) and len(value) == 2:
        if all(_is_int(item) and item > 0 for item in value):
            return int(value[0]), int(value[1])
    raise ValueError(value)


def _value_range(value: Any) -> tuple[float, float]:
    if isinstance(value, list | tuple) and len(value) == 2:
        low, high = _number(value[0]), _number(value[1])
        if low < high:
            return low, high
    raise ValueError(value)


def _channel_axis(value: Any) -> str | int:
    if value in ("last", "first") or _is_int(value):
        return value
    raise ValueError(value)


def _one_of(*choices: str) -> Callable[[Any], str]:
    def parse_choice(value: Any) -> str:
        if isinstance(value, str) and value in choices:
            return value
        raise ValueError(value)

    return parse_choice


def _choices(*choices: str) -> str:
    return "one of " + ", ".join(f'"{choice}"' for choice in choices)


NUMBER = "a finite number"
STATISTIC = "a number or a list of numbers (one per channel)"
CHANNEL_AXIS = '"last", "first" or an axis of the sample (an integer)'


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
            if value is _REQUIRED:
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


def _float(x: np.ndarray) -> np.ndarray:
    """Working float dtype: float64 stays, anything else becomes float32."""
    return x if x.dtype in (np.float32, np.float64) else x.astype(np.float32)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    """Values as an 8-bit image stores them: rounded, clipped to 0..255 (NaN -> 0)."""
    if x.dtype == np.uint8:
        return x
    values = np.nan_to_num(x.astype(np.float64, copy=False), nan=0.0)
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _rows(x: np.ndarray) -> Iterator[np.ndarray]:
    """``x`` in blocks of rows of at most ``_BLOCK_VALUES`` values (at least one row)."""
    per_row = max(1, int(np.prod(x.shape[1:], dtype=np.int64)))
    step = max(1, _BLOCK_VALUES // per_row)
    for start in range(0, len(x), step):
        yield x[start : start + step]


# --- arithmetic ops ----------------------------------------------------------------------


class Scale(Op):
    """``y = x * multiply / divide + offset``, e.g. ``{"op": "scale", "divide": 255}``."""

    name = "scale"
    params = {
        "multiply": Param(_number, NUMBER, 1.0),
        "divide": Param(_number, "a non-zero finite number", 1.0),
        "offset": Param(_number, NUMBER, 0.0),
    }
    multiply: float
    divide: float
    offset: float

    def _check(self) -> None:
        if self.divide == 0:
            raise ValueError("has divide=0; give a non-zero number")

    def apply(self, x: np.ndarray) -> np.ndarray:
        y = _float(x)
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
        "range": Param(_value_range, "a [low, high] list of numbers with low < high", (0.0, 1.0))
    }
    range: tuple[float, float]

    def apply(self, x: np.ndarray) -> np.ndarray:
        y = _float(x)
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
        "min": Param(_optional(_number), NUMBER, None),
        "max": Param(_optional(_number), NUMBER, None),
    }
    min: float | None
    max: float | None

    def _check(self) -> None:
        if self.min is None and self.max is None:
            raise ValueError("has neither min nor max; give at least one bound")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"has min={self.min:g} above max={self.max:g}; give min <= max")

    def apply(self, x: np.ndarray) -> np.ndarray:
        return np.clip(_float(x), self.min, self.max)


_CAST_DTYPES = ("float32", "float16", "float64", "uint8", "int8", "int16", "int32")


class Cast(Op):
    """Values as saved in ``dtype``: integer types round (half to even) and clip to the range.

    NaN becomes 0 under an integer cast, as nothing else can hold it.
    """

    name = "cast"
    params = {"dtype": Param(_one_of(*_CAST_DTYPES), _choices(*_CAST_DTYPES))}
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
    if _is_int(channel_axis):
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
    for block in _rows(batch):
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
            return _float(x)
        return self.apply(x)


class Standardize(_PerChannel):
    """Per channel ``(x - mean) / std``; without mean and std both are computed from the pool.

    Computed std is the population std (ddof 0); a channel with std 0 (a constant feature)
    gets std 1, as in scikit-learn's StandardScaler, so it becomes 0 instead of NaN.
    """

    name = "standardize"
    stats = ("mean", "std")
    params = {
        "mean": Param(_optional(_numbers), STATISTIC, None),
        "std": Param(
            _optional(_positive_numbers), "a positive number or a list of them (per channel)", None
        ),
        "channel_axis": Param(_channel_axis, CHANNEL_AXIS, "last"),
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
        y = _float(x)
        return (y - self._per_channel(self.mean, y, "mean")) / self._per_channel(self.std, y, "std")


class Center(_PerChannel):
    """Per channel ``x - mean``; without mean it is computed from the pool."""

    name = "center"
    stats = ("mean",)
    params = {
        "mean": Param(_optional(_numbers), STATISTIC, None),
        "channel_axis": Param(_channel_axis, CHANNEL_AXIS, "last"),
    }
    mean: float | tuple[float, ...] | None

    def _set_statistics(self, moments: _Moments) -> None:
        self.mean = tuple(float(value) for value in moments.mean)

    def apply(self, x: np.ndarray) -> np.ndarray:
        y = _float(x)
        return y - self._per_channel(self.mean, y, "mean")


# --- image ops (channels-last samples) ----------------------------------------------------


def _images(x: np.ndarray) -> np.ndarray:
    """A batch of images as ``(N, H, W, C)``: ``(N, H, W)`` gains a channel axis."""
    if x.ndim == 3:
        return x[..., None]
    if x.ndim == 4:
        return x
    raise ValueError(
        "it needs image samples, (H, W) or channels-last (H, W, C); reshape the pool "
        "(--input-shape) or leave the op out"
    )


def _channel_count_error(channels: int) -> ValueError:
    return ValueError(
        f"it needs images with 1 (L), 2 (LA), 3 (RGB) or 4 (RGBA) channels, not {channels}; "
        "if the samples are channels-first, put a layout op to NHWC first"
    )


# ITU-R luma weights of R, G, B.
_LUMA = {"bt601": (0.299, 0.587, 0.114), "bt709": (0.2126, 0.7152, 0.0722)}


def _luma(x: np.ndarray, weights: tuple[float, float, float]) -> np.ndarray:
    """``(N, H, W, 1)`` luma of a batch of images; L and LA images give their L channel."""
    images = _images(x)
    channels = images.shape[-1]
    if channels in (1, 2):
        return images[..., :1]
    if channels not in (3, 4):
        raise _channel_count_error(channels)
    luma = _float(images[..., :3]) @ np.asarray(weights, dtype=np.float32)
    luma = luma[..., None]
    return _to_uint8(luma) if x.dtype == np.uint8 else luma


class ToRGB(Op):
    """Three channels, as Pillow's ``convert("RGB")``: L and LA repeat L, RGBA drops alpha."""

    name = "rgb"
    needs_channels_last = True

    def apply(self, x: np.ndarray) -> np.ndarray:
        images = _images(x)
        channels = images.shape[-1]
        if channels in (1, 2):
            return np.repeat(images[..., :1], 3, axis=-1)
        if channels in (3, 4):
            return images[..., :3]
        raise _channel_count_error(channels)


class Grayscale(Op):
    """ITU-R 601-2 luma (Pillow's ``convert("L")``) ``(N, H, W, 1)``; L images pass through."""

    name = "grayscale"
    needs_channels_last = True

    def apply(self, x: np.ndarray) -> np.ndarray:
        images = _images(x)
        if x.dtype == np.uint8 and images.shape[-1] in (3, 4):
            # Pillow's own fixed-point formula (Convert.c, L24), so uint8 results match it.
            rgb = images[..., :3].astype(np.uint32)
            luma = (rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16
            return luma.astype(np.uint8)[..., None]
        return _luma(x, _LUMA["bt601"])


class RGBToY(Op):
    """The Y (luma) channel of YCbCr ``(N, H, W, 1)``: ``bt601`` as Pillow's YCbCr, or ``bt709``.

    Full range (JPEG's YCbCr, no 16..235 studio swing); L images pass through.
    """

    name = "rgb_to_y"
    needs_channels_last = True
    params = {"standard": Param(_one_of(*_LUMA), _choices(*_LUMA), "bt601")}
    standard: str

    def apply(self, x: np.ndarray) -> np.ndarray:
        return _luma(x, _LUMA[self.standard])


class Equalize(Op):
    """Histogram equalization of each channel of each image, as Pillow's ``ImageOps.equalize``.

    Values are first stored as uint8 (rounded, clipped to 0..255); the output is uint8.
    """

    name = "equalize"
    needs_channels_last = True

    def apply(self, x: np.ndarray) -> np.ndarray:
        images = _to_uint8(_images(x))
        out = np.empty_like(images)
        start = 0
        for block in _rows(images):
            out[start : start + len(block)] = _equalize(block)
            start += len(block)
        return out.reshape(x.shape) if x.ndim == 3 else out


def _equalize(images: np.ndarray) -> np.ndarray:
    """``ImageOps.equalize`` of every channel of ``(N, H, W, C)`` uint8, vectorized."""
    n, height, width, channels = images.shape
    planes = np.moveaxis(images, -1, 1).reshape(n * channels, height * width)
    # One histogram per plane: offset each plane's values into its own 256 bins.
    codes = planes.astype(np.int32) + (np.arange(n * channels, dtype=np.int32) * 256)[:, None]
    hist = np.bincount(codes.ravel(), minlength=n * channels * 256).reshape(-1, 256)
    # Pillow: step = (pixels - pixels in the highest used bin) // 255, and
    # lut[i] = (step // 2 + pixels below bin i) // step; identity when step is 0.
    highest = 255 - np.argmax(hist[:, ::-1] > 0, axis=1)
    step = (hist.sum(axis=1) - hist[np.arange(len(hist)), highest]) // 255
    below = np.cumsum(hist, axis=1) - hist
    lut = (step[:, None] // 2 + below) // np.maximum(step, 1)[:, None]
    lut = np.where(step[:, None] > 0, lut, np.arange(256))
    lut = np.clip(lut, 0, 255).astype(np.uint8)
    equalized = lut.ravel()[codes].reshape(n, channels, height, width)
    return np.moveaxis(equalized, 1, -1)


_RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


class Resize(Op):
    """Images resized with Pillow: ``size`` int sets the shorter side (aspect kept, as
    torchvision's ``Resize(int)``), ``[h, w]`` the exact size.

    uint8 images are resized as 8-bit images (RGB at once, other channel counts channel by
    channel: no alpha premultiplication) and stay uint8; other dtypes are resized channel by
    channel in Pillow's float mode "F" and give float32.
    """

    name = "resize"
    needs_channels_last = True
    params = {
        "size": Param(_size, "a positive integer or a [height, width] list of them"),
        "resample": Param(_one_of(*_RESAMPLE), _choices(*_RESAMPLE), "bilinear"),
    }
    size: int | tuple[int, int]
    resample: str

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """``(height, width)`` of the resized image."""
        if isinstance(self.size, tuple):
            return self.size
        # torchvision: the shorter side becomes size, the longer one is scaled and truncated.
        if height <= width:
            return self.size, int(self.size * width / height)
        return int(self.size * height / width), self.size

    def apply(self, x: np.ndarray) -> np.ndarray:
        images = _images(x)
        n, height, width, channels = images.shape
        new_height, new_width = self.output_size(height, width)
        if (new_height, new_width) == (height, width):
            return x  # what Pillow does too: an unchanged copy
        if min(new_height, new_width) == 0:
            raise ValueError(f"it would make {height}x{width} images {new_height}x{new_width}")
        resample = _RESAMPLE[self.resample]
        size = (new_width, new_height)
        eight_bit = images.dtype == np.uint8
        out = np.empty((n, new_height, new_width, channels), np.uint8 if eight_bit else np.float32)
        for i in range(n):
            if eight_bit and channels == 3:
                out[i] = np.asarray(Image.fromarray(images[i]).resize(size, resample))
                continue
            for channel in range(channels):
                plane = np.ascontiguousarray(images[i, :, :, channel])
                if not eight_bit:
                    plane = plane.astype(np.float32)
                out[i, :, :, channel] = np.asarray(Image.fromarray(plane).resize(size, resample))
        return out[..., 0] if x.ndim == 3 else out


class CenterCrop(Op):
    """The central ``size`` (int: square, or ``[h, w]``) of each image, as torchvision's
    ``CenterCrop`` places it; a crop larger than the image is an error."""

    name = "center_crop"
    needs_channels_last = True
    params = {"size": Param(_size, "a positive integer or a [height, width] list of them")}
    size: int | tuple[int, int]

    def apply(self, x: np.ndarray) -> np.ndarray:
        height, width = _images(x).shape[1:3]
        crop_height, crop_width = self.size if isinstance(self.size, tuple) else (self.size,) * 2
        if crop_height > height or crop_width > width:
            raise ValueError(
                f"the {crop_height}x{crop_width} crop is larger than the {height}x{width} "
                "images; resize them first or crop less"
            )
        top = int(round((height - crop_height) / 2.0))
        left = int(round((width - crop_width) / 2.0))
        return x[:, top : top + crop_height, left : left + crop_width]


# --- layout --------------------------------------------------------------------------------


class Layout(Op):
    """Channels-last <-> channels-first: ``to`` "NCHW" moves the last axis of each sample to
    the front (``(N, H, W)`` gains a channel: ``(N, 1, H, W)``); "NHWC" moves it back."""

    name = "layout"
    params = {"to": Param(_one_of("NCHW", "NHWC"), _choices("NCHW", "NHWC"))}
    to: str

    def apply(self, x: np.ndarray) -> np.ndarray:
        if x.ndim == 3:
            return x[:, None] if self.to == "NCHW" else x[..., None]
        if x.ndim < 3:
            raise ValueError(
                "it needs samples with 2 or more axes (images); flat samples have no channels "
                "to move"
            )
        return np.moveaxis(x, -1, 1) if self.to == "NCHW" else np.moveaxis(x, 1, -1)


OPS: dict[str, type[Op]] = {
    op.name: op
    for op in (
        Scale,
        MinMax,
        Standardize,
        Center,
        Clip,
        Cast,
        ToRGB,
        Grayscale,
        RGBToY,
        Equalize,
        Resize,
        CenterCrop,
        Layout,
    )
}

# Named op lists. Each reproduces the evaluation transform of its dataset's usual training
# recipe, for images with values 0..255 (uint8 images, or arrays holding such values).
PRESETS: dict[str, list[dict]] = {
    # PyTorch examples/mnist/main.py: ToTensor() then Normalize((0.1307,), (0.3081,)). RGB and
    # RGBA inputs are turned gray first, so any image works -> (1, 28, 28).
    "mnist": [
        {"op": "grayscale"},
        {"op": "resize", "size": [28, 28]},
        {"op": "scale", "divide": 255},
        {"op": "standardize", "mean": [0.1307], "std": [0.3081]},
        {"op": "layout", "to": "NCHW"},
    ],
    # CIFAR-10 training-set channel mean and (population) std of pixels in 0..1, as in most
    # PyTorch CIFAR recipes. Gray images are repeated into RGB (Pillow's convert("RGB"), as
    # image-folder loaders do) -> (3, 32, 32).
    "cifar10": [
        {"op": "rgb"},
        {"op": "resize", "size": [32, 32]},
        {"op": "scale", "divide": 255},
        {"op": "standardize", "mean": [0.4914, 0.4822, 0.4465], "std": [0.2470, 0.2435, 0.2616]},
        {"op": "layout", "to": "NCHW"},
    ],
    # torchvision's ImageNet classification reference (references/classification/presets.py):
    # Resize(256) of the shorter side, CenterCrop(224), ToTensor(), Normalize(ImageNet mean,
    # std). Gray images are repeated into RGB, as torchvision's ImageFolder loader does.
    "imagenet": [
        {"op": "rgb"},
        {"op": "resize", "size": 256},
        {"op": "center_crop", "size": 224},
        {"op": "scale", "divide": 255},
        {"op": "standardize", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
        {"op": "layout", "to": "NCHW"},
    ],
    # Sermanet & LeCun, "Traffic Sign Recognition with Multi-Scale Convolutional Networks"
    # (IJCNN 2011): 32x32 images, the Y channel of YUV only, contrast normalization (here
    # histogram equalization, as common reproductions do), then standardized with statistics
    # computed from the pool. Gray images pass through rgb_to_y -> (1, 32, 32).
    "gtsrb": [
        {"op": "resize", "size": [32, 32]},
        {"op": "rgb_to_y"},
        {"op": "equalize"},
        {"op": "scale", "divide": 255},
        {"op": "standardize"},
        {"op": "layout", "to": "NCHW"},
    ],
}


# --- building ------------------------------------------------------------------------------


def _known(names: Iterable[str]) -> str:
    return ", ".join(sorted(names))


def _did_you_mean(name: Any, names: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(name), list(names), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def build_op(spec: dict, *, where: str = "", channels_first: bool = False) -> Op:
    """One op from its spec ``{"op": NAME, **params}`` (or a record).

    ``where`` names the op in errors; ``channels_first`` says the samples reaching it are NCHW,
    which sets the default ``channel_axis`` of per-channel ops.
    """
    name = spec.get("op")
    where = where or f"op '{name}'"
    op_class = OPS.get(name) if isinstance(name, str) else None
    if op_class is None:
        raise TestprioError(
            f"{where} names unknown op {_show(name)}{_did_you_mean(name, OPS)}; known ops: "
            f"{_known(OPS)} (and '{CUSTOM}', the place of the custom op)."
        )
    given = {key: value for key, value in spec.items() if key != "op"}
    unknown = sorted(set(given) - set(op_class.params))
    if unknown:
        takes = ", ".join(op_class.params) or "no parameters"
        raise TestprioError(
            f"{where} has unknown parameter {', '.join(repr(key) for key in unknown)}"
            f"{_did_you_mean(unknown[0], op_class.params)}; {name} takes {takes}."
        )
    for key, param in op_class.params.items():
        if key not in given and param.default is _REQUIRED:
            raise TestprioError(f"{where} is missing parameter '{key}'; give {param.expected}.")
    if "channel_axis" in op_class.params and "channel_axis" not in given:
        given["channel_axis"] = "first" if channels_first else "last"
    try:
        op = op_class(**given)
    except ValueError as exc:
        raise TestprioError(f"{where} {exc}.") from None
    op._where = where
    return op


def _spec_name(spec: Any, index: int, source: str) -> str:
    example = '{"op": "scale", "divide": 255}'
    if not isinstance(spec, dict):
        raise TestprioError(
            f"op [{index}] of {source} is {_show(spec)[:60]}, not an object; write each op "
            f"like {example}."
        )
    name = spec.get("op")
    if not isinstance(name, str):
        raise TestprioError(
            f'op [{index}] of {source} has no "op" name; write each op like {example}.'
        )
    return name


def _first_layout_to(specs: list) -> str | None:
    for spec in specs:
        if isinstance(spec, dict) and spec.get("op") == "layout":
            return spec.get("to")
    return None


def build(
    specs: list[dict], *, custom_op: Op | None = None, source: str = DEFAULT_SOURCE
) -> Preprocessor:
    """Validate ``specs`` and build their chain.

    A spec ``{"op": "custom"}`` is the place of ``custom_op`` (its other keys are the custom
    op's own record and are not read here); with ``custom_op`` given and no such spec it runs
    last. ``source`` names the list in errors (``"--ops"``, ``"--preset 'mnist'"``). The custom
    op is taken to keep the layout it receives.
    """
    if not isinstance(specs, list):
        raise TestprioError(
            f"{source} is {type(specs).__name__}, not a list of ops; give a JSON list such as "
            '[{"op": "scale", "divide": 255}].'
        )
    # NCHW pools say so with a layout op to NHWC before any layout op to NCHW.
    channels_first = _first_layout_to(specs) == "NHWC"
    switched_at = None  # index of the last layout op
    custom_at = None
    ops: list[Op] = []
    for index, spec in enumerate(specs):
        name = _spec_name(spec, index, source)
        where = f"op [{index}] ({name}) of {source}"
        if name == CUSTOM:
            if custom_op is None:
                raise TestprioError(
                    f"{where} marks the place of a custom op but none was given; give "
                    "--custom-ops or remove the op."
                )
            if custom_at is not None:
                raise TestprioError(
                    f"{where} repeats the custom op (already op [{custom_at}]); keep one."
                )
            custom_at = index
            ops.append(custom_op)
            continue
        op = build_op(spec, where=where, channels_first=channels_first)
        if op.needs_channels_last and channels_first:
            cause = (
                f"op [{switched_at}] (layout) made them NCHW"
                if switched_at is not None
                else "the first layout op says the pool is NCHW up to it"
            )
            raise TestprioError(
                f"{where} needs channels-last images but {cause}; move it to where samples are "
                "channels-last."
            )
        if isinstance(op, Layout):
            if (op.to == "NCHW") == channels_first:
                raise TestprioError(
                    f"{where} converts to {op.to} but the samples are {op.to} already (op "
                    f"[{switched_at}] made them so); remove one of the two."
                )
            channels_first = op.to == "NCHW"
            switched_at = index
        ops.append(op)
    if custom_op is not None and custom_at is None:
        ops.append(custom_op)
    return Preprocessor(ops, source=source)


class CustomPlace(Op):
    """Stands for the custom op while an op list is checked (starts no process)."""

    name = CUSTOM
    per_sample_safe = False

    def apply(self, x: np.ndarray) -> np.ndarray:
        return x


def op_specs(*, preset: str = "", ops: str = "") -> list[dict]:
    """The op list of a run: the JSON list given with --ops ('' -> []), then a preset's list.

    With both, the --ops list runs first: e.g. ``[{"op": "layout", "to": "NHWC"}]`` before a
    preset, for an array pool stored channels-first. An --ops list is checked here (unknown
    ops and parameters, layout order), so that its errors name --ops.
    """
    preset, ops = preset.strip(), ops.strip()
    specs = _parse_ops(ops) if ops else []
    if preset:
        if preset not in PRESETS:
            raise TestprioError(
                f"--preset '{preset}' is not a preset{_did_you_mean(preset, PRESETS)}; known "
                f"presets: {_known(PRESETS)}."
            )
        specs += copy.deepcopy(PRESETS[preset])
        if ops:
            build(specs, custom_op=CustomPlace(), source=chain_source(preset, ops)).close()
    return specs


def chain_source(preset: str, ops: str) -> str:
    """How errors name a run's op list: ``--ops``, ``--preset 'x'``, or both."""
    if preset and ops:
        return f"--ops followed by --preset '{preset}'"
    return f"--preset '{preset}'" if preset else "--ops"


def _parse_ops(ops: str) -> list[dict]:
    try:
        specs = json.loads(ops)
    except json.JSONDecodeError as exc:
        raise TestprioError(
            f"--ops is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
            """give a list such as '[{"op": "scale", "divide": 255}]'."""
        ) from None
    if isinstance(specs, dict):
        raise TestprioError(
            "--ops is one JSON object, not a list; wrap it in [ ] (an op list may hold one op)."
        )
    build(specs, custom_op=CustomPlace(), source="--ops").close()
    return specs


# --- the chain -----------------------------------------------------------------------------


class Preprocessor:
    """A chain of ops; ``apply`` runs them on a batch ``(N, ...)`` and gives float32.

    ``apply`` is thread-safe; ``fit`` is not (run it before applying). ``split`` gives a head
    that ``apply`` leaves in its last op's dtype; the head and tail share the ops, so close
    the chain they came from.
    """

    def __init__(
        self,
        ops: list[Op],
        *,
        source: str = DEFAULT_SOURCE,
        first_index: int = 0,
        output_dtype: type | None = np.float32,
    ):
        self.ops = list(ops)
        self.source = source
        self._first_index = first_index
        self._output_dtype = output_dtype

    def _where(self, index: int) -> str:
        op = self.ops[index]
        return getattr(op, "_where", None) or (
            f"op [{self._first_index + index}] ({op.name}) of {self.source}"
        )

    def _run(self, x: np.ndarray, what: str, *, probe: bool = False) -> np.ndarray:
        for index, op in enumerate(self.ops):
            try:
                y = op._probe(x) if probe and isinstance(op, Op) else op.apply(x)
            except MemoryError:
                raise
            except Exception as exc:
                reason = str(exc).rstrip(".") or type(exc).__name__
                if not isinstance(exc, ValueError | TestprioError):
                    reason = f"{type(exc).__name__}: {reason}"
                raise TestprioError(
                    f"{self._where(index)} cannot take {what(x)}: {reason}."
                ) from exc
            y = np.asarray(y)
            if y.ndim == 0 or len(y) != len(x) or y.dtype.kind not in "biuf":
                raise TestprioError(
                    f"{self._where(index)} turned {what(x)} into {_describe(y)}; an op must "
                    "return one numeric row per input row."
                )
            x = y
        return x

    def apply(self, x: np.ndarray) -> np.ndarray:
        """The chain on a batch ``(N, ...)``; float32 ``(N, *output_shape)``."""
        unfitted = self.first_unfitted()
        if unfitted is not None:
            raise RuntimeError(f"fit {self._where(unfitted)} before applying the chain")
        y = self._run(np.asarray(x), lambda batch: f"a batch of {_describe(batch)}")
        if self._output_dtype is None:
            return y
        return np.ascontiguousarray(y, dtype=self._output_dtype)

    def first_unfitted(self) -> int | None:
        """Index of the first op that still needs statistics from the pool, or None."""
        return next((i for i, op in enumerate(self.ops) if op.needs_fit), None)

    def fit(self, index: int, batches: Iterable[np.ndarray]) -> None:
        """Fit op ``index`` on raw pool ``batches``, each run through the ops before it."""
        if self.first_unfitted() != index:
            raise ValueError(f"op [{index}] is not the first op that needs fitting")
        prefix = Preprocessor(
            self.ops[:index],
            source=self.source,
            first_index=self._first_index,
            output_dtype=None,
        )
        self.ops[index].fit(prefix.apply(batch) for batch in batches)

    def output_shape(self, sample_shape: tuple[int, ...], dtype=np.float32) -> tuple[int, ...]:
        """Shape of one output sample for input samples ``sample_shape`` (one zero sample run
        through the chain; works before ``fit``)."""
        probe = np.zeros((1, *sample_shape), dtype=dtype)
        y = self._run(
            probe, lambda batch: f"samples of {_describe(batch, sample=True)}", probe=True
        )
        return tuple(int(dim) for dim in y.shape[1:])

    def split(self) -> tuple[Preprocessor, Preprocessor]:
        """``(head, tail)``: head = the ops before the first one that is not per-sample safe.

        The head may run on one sample at a time (in decoding threads) and keeps its last op's
        dtype; ``tail.apply(head.apply(x))`` equals ``apply(x)``.
        """
        cut = next(
            (i for i, op in enumerate(self.ops) if not getattr(op, "per_sample_safe", True)),
            len(self.ops),
        )
        head = Preprocessor(
            self.ops[:cut], source=self.source, first_index=self._first_index, output_dtype=None
        )
        tail = Preprocessor(
            self.ops[cut:],
            source=self.source,
            first_index=self._first_index + cut,
            output_dtype=self._output_dtype,
        )
        return head, tail

    def record(self) -> list[dict]:
        """The exact op list, computed statistics included (``build`` of it rebuilds this)."""
        return [op.record() for op in self.ops]

    def close(self) -> None:
        """Close every op (the custom op's process), even if one fails."""
        failure = None
        for op in self.ops:
            try:
                op.close()
            except Exception as exc:  # close the others, then raise the first failure
                failure = failure or exc
        if failure is not None:
            raise failure

    def __enter__(self) -> Preprocessor:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _describe(x: np.ndarray, *, sample: bool = False) -> str:
    shape = x.shape[1:] if sample else x.shape
    return f"shape {tuple(int(dim) for dim in shape)} {x.dtype}"
