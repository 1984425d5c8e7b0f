"""Metamorphic stability: which small input changes flip the model's predicted class.

The design
----------
For every source sample, ``followups`` follow-up inputs are made. Each follow-up applies a
random subset of the chosen transforms, every transform included independently with
probability 1/2 (a randomised 2^T factorial design; a follow-up with no transform is the
control cell), each with parameters drawn uniformly from the transform's range. A follow-up
*violates* the metamorphic relation "small changes keep the class" when its predicted class
differs from the source's predicted class. No labels are needed.

- ``run_metamorphic`` gives per sample ``instability`` (share of its follow-ups that
  violate; higher = more unstable, a label-free prioritizer score) and the tidy design table,
  one row per follow-up.
- ``attribution`` (testprio/causal.py) reads the design table and says which transform
  causes the violations: differences in means (ATE, valid because assignment is randomised)
  with cluster-bootstrap intervals, a regression with pairwise interactions, per class, and
  Shapley values over the transform set.

Transforms work on preprocessed tensors: images ``(N, C, H, W)``, ``(N, H, W, C)`` or
``(N, H, W)`` (``layout``), or any tensor ``(N, ...)`` with ``layout=None`` (then only
``noise``). Intensity changes are relative to each sample's own values (its value range or
standard deviation), so the same ranges suit [0, 1] pixels and standardized inputs; nothing is
clipped, because a preprocessed tensor has no known valid range. Geometric transforms
interpolate bilinearly and repeat the edge pixels outside the image ("nearest" border), so no
artificial black border appears in standardized data.

Reproducibility: the follow-ups of a sample depend only on ``(seed, sample_id)`` (each source
has its own generator), so results do not depend on ``batch_size`` or on how the pool is
split into shards.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from testprio.causal import factorial_attribution
from testprio.errors import TestprioError

Array = np.ndarray


@dataclass(frozen=True)
class Transform:
    """One transform: default parameter ranges, the ranges a user may choose, and the code.

    ``apply(x, params, normal)`` maps a float batch (``(n, C, H, W)`` for image transforms,
    ``(n, ...)`` otherwise) to a batch of the same shape; ``params`` holds one ``(n,)`` array
    per parameter; ``normal`` is a standard normal field shaped like ``x`` for transforms with
    ``needs_normal`` (drawn by the caller from each source's own generator), else None.
    """

    params: dict[str, tuple[float, float]]
    limits: dict[str, tuple[float, float]]
    apply: Callable[[Array, dict[str, Array], Array | None], Array]
    image: bool
    description: str
    needs_normal: bool = False


# ---------------------------------------------------------------------------- image kernels


def _warp(x: Array, inverse: Array, shift: Array) -> Array:
    """Resample ``x (n, C, H, W)``: output pixel p reads input ``inverse @ (p - c - shift) + c``.

    ``c`` is the image centre, ``inverse (n, 2, 2)`` and ``shift (n, 2)`` act on (row, column)
    pixel coordinates. Bilinear interpolation; coordinates outside the image are clamped to
    the border (edge pixels repeat).
    """
    n, channels, height, width = x.shape
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    centre = np.array([(height - 1) / 2.0, (width - 1) / 2.0])
    out = np.stack([rows.ravel(), cols.ravel()]).astype(np.float64) - centre[:, None]
    src = inverse @ (out[None] - shift[:, :, None]) + centre[None, :, None]  # (n, 2, HW)
    y = np.clip(src[:, 0], 0, height - 1)
    xx = np.clip(src[:, 1], 0, width - 1)
    # Rounding noise (cos 90 deg = 6e-17) must not move an exact pixel to its neighbour.
    y = np.where(np.abs(y - np.round(y)) < 1e-9, np.round(y), y)
    xx = np.where(np.abs(xx - np.round(xx)) < 1e-9, np.round(xx), xx)
    y0 = np.floor(y).astype(np.int64)
    x0 = np.floor(xx).astype(np.int64)
    y1 = np.minimum(y0 + 1, height - 1)
    x1 = np.minimum(x0 + 1, width - 1)
    wy = (y - y0).astype(x.dtype)[:, None]
    wx = (xx - x0).astype(x.dtype)[:, None]
    flat = x.reshape(n, channels, height * width)

    def gather(yi: Array, xi: Array) -> Array:
        return np.take_along_axis(flat, (yi * width + xi)[:, None, :], axis=2)

    top = gather(y0, x0) * (1 - wx) + gather(y0, x1) * wx
    bottom = gather(y1, x0) * (1 - wx) + gather(y1, x1) * wx
    return (top * (1 - wy) + bottom * wy).reshape(x.shape)


def _rotate(x: Array, p: dict[str, Array], normal: Array | None) -> Array:
    theta = np.deg2rad(p["degrees"])
    cos, sin = np.cos(theta), np.sin(theta)
    # Forward map on (row, col) with rows pointing down turns the picture counter-clockwise
    # for positive degrees (as np.rot90); the warp needs its inverse, the transpose.
    inverse = np.stack([np.stack([cos, sin], -1), np.stack([-sin, cos], -1)], 1)
    return _warp(x, inverse, np.zeros((len(x), 2)))


def _translate(x: Array, p: dict[str, Array], normal: Array | None) -> Array:
    height, width = x.shape[2:]
    shift = np.stack([p["dy"] * height, p["dx"] * width], -1)
    return _warp(x, np.broadcast_to(np.eye(2), (len(x), 2, 2)), shift)


def _scale(x: Array, p: dict[str, Array], normal: Array | None) -> Array:
    inverse = np.eye(2)[None] / p["factor"][:, None, None]
    return _warp(x, inverse, np.zeros((len(x), 2)))


def _brightness(x: Array, p: dict[str, Array], normal: Array | None) -> Array:
    axes = tuple(range(1, x.ndim))
    spread = x.max(axis=axes, keepdims=True) - x.min(axis=axes, keepdims=True)
    return x + _per_row(p["delta"], x) * spread


def _contrast(x: Array, p: dict[str, Array], normal: Array | None) -> Array:
    mean = x.mean(axis=(2, 3), keepdims=True)
    return mean + _per_row(p["factor"], x) * (x - mean)


def _blur(x: Array, p: dict[str, Array], normal: Array | None) -> Array:
    """Separable Gaussian blur, edges repeated; each kernel ends at its own 3 sigma."""
    sigma = np.maximum(p["sigma"], 1e-6)  # sigma 0 is the identity, not a division by zero
    radius = int(np.ceil(3 * sigma.max()))
    offsets = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 * (offsets[None, :] / sigma[:, None]) ** 2)
    # Taps beyond a sample's own radius weigh exactly 0, so its blur (to the last bit) never
    # depends on the other samples of the batch.
    weights[np.abs(offsets)[None, :] > np.ceil(3 * sigma)[:, None]] = 0
    weights /= weights.sum(axis=1, keepdims=True)
    for axis in (2, 3):
        size = x.shape[axis]
        out = np.zeros_like(x)
        for offset, weight in zip(offsets, weights.T, strict=True):
            taken = np.take(x, np.clip(np.arange(size) + offset, 0, size - 1), axis=axis)
            out += _per_row(weight, x) * taken
        x = out
    return x


def _noise(x: Array, p: dict[str, Array], normal: Array | None) -> Array:
    axes = tuple(range(1, x.ndim))
    std = x.std(axis=axes, keepdims=True)
    return x + _per_row(p["sigma"], x) * std * normal.astype(x.dtype, copy=False)


def _per_row(values: Array, x: Array) -> Array:
    """``(n,)`` parameters shaped to broadcast over ``x (n, ...)`` in x's dtype."""
    return values.astype(x.dtype).reshape((len(x),) + (1,) * (x.ndim - 1))


# Applied in this order (geometry, then intensity, then blur, then sensor noise).
TRANSFORMS: dict[str, Transform] = {
    "rotate": Transform(
        params={"degrees": (-15.0, 15.0)},
        limits={"degrees": (-360.0, 360.0)},
        apply=_rotate,
        image=True,
        description="rotate about the image centre by `degrees` (positive: counter-clockwise)",
    ),
    "translate": Transform(
        params={"dx": (-0.1, 0.1), "dy": (-0.1, 0.1)},
        limits={"dx": (-1.0, 1.0), "dy": (-1.0, 1.0)},
        apply=_translate,
        image=True,
        description="shift right by `dx` of the width and down by `dy` of the height",
    ),
    "scale": Transform(
        params={"factor": (0.9, 1.1)},
        limits={"factor": (0.01, 100.0)},
        apply=_scale,
        image=True,
        description="zoom about the image centre by `factor` (> 1 enlarges)",
    ),
    "brightness": Transform(
        params={"delta": (-0.2, 0.2)},
        limits={"delta": (-10.0, 10.0)},
        apply=_brightness,
        image=True,
        description="add `delta` times the sample's value range (max - min)",
    ),
    "contrast": Transform(
        params={"factor": (0.7, 1.3)},
        limits={"factor": (0.0, 100.0)},
        apply=_contrast,
        image=True,
        description="scale deviations from each channel's mean by `factor`",
    ),
    "blur": Transform(
        params={"sigma": (0.3, 1.0)},
        limits={"sigma": (0.0, 50.0)},
        apply=_blur,
        image=True,
        description="Gaussian blur with standard deviation `sigma` pixels",
    ),
    "noise": Transform(
        params={"sigma": (0.01, 0.05)},
        limits={"sigma": (0.0, 100.0)},
        apply=_noise,
        image=False,
        needs_normal=True,
        description="add Gaussian noise of `sigma` times the sample's standard deviation",
    ),
}


# ---------------------------------------------------------------------------------- layouts


@dataclass(frozen=True)
class _Layout:
    ndim: int | None  # None: any number of axes (at least one sample axis)
    to_nchw: Callable[[Array], Array]
    from_nchw: Callable[[Array], Array]


LAYOUTS: dict[str | None, _Layout] = {
    "NCHW": _Layout(4, lambda a: a, lambda a: a),
    "NHWC": _Layout(4, lambda a: a.transpose(0, 3, 1, 2), lambda a: a.transpose(0, 2, 3, 1)),
    "NHW": _Layout(3, lambda a: a[:, None], lambda a: a[:, 0]),
    None: _Layout(None, lambda a: a, lambda a: a),
}


def default_transforms(layout: str | None) -> list[str]:
    """Every transform for an image layout; only ``noise`` for ``layout=None``."""
    _check_layout(layout)
    return [name for name, spec in TRANSFORMS.items() if layout is not None or not spec.image]


def image_layout(shape: tuple[int, ...]) -> str | None:
    """The layout of ``(N, *shape)`` samples for image transforms: NCHW, NHWC, NHW or None."""
    if len(shape) == 3 and shape[0] in (1, 3, 4):
        return "NCHW"
    if len(shape) == 3 and shape[-1] in (1, 3, 4):
        return "NHWC"
    if len(shape) == 2:
        return "NHW"
    return None


# Images whose shorter side is at most this many pixels get TINY_IMAGE_RANGES instead of the
# metamorphic defaults: on 8x8 digits the defaults (rotate 15 degrees, shift 0.1, ...) flip
# 46% of follow-ups of a digits MLP; these flip 14%, and instability's APFD rises slightly
# (normalized 0.755 -> 0.775 on the same model and pool).
TINY_IMAGE_SIDE = 16
TINY_IMAGE_RANGES: dict[str, dict[str, tuple[float, float]]] = {
    "rotate": {"degrees": (-5.0, 5.0)},
    "translate": {"dx": (-0.05, 0.05), "dy": (-0.05, 0.05)},
    "scale": {"factor": (0.95, 1.05)},
    "brightness": {"delta": (-0.05, 0.05)},
    "contrast": {"factor": (0.9, 1.1)},
    "blur": {"sigma": (0.1, 0.4)},
    "noise": {"sigma": (0.01, 0.03)},
}
# Where the spatial axes of one sample are, per layout.
_SPATIAL_AXES = {"NCHW": (1, 2), "NHWC": (0, 1), "NHW": (0, 1)}


def metamorphic_ranges(shape: tuple[int, ...], layout: str | None) -> dict | None:
    """``TINY_IMAGE_RANGES`` for images of ``shape`` (one sample) with a side of at most
    ``TINY_IMAGE_SIDE`` pixels, else None (the metamorphic defaults)."""
    if layout not in _SPATIAL_AXES:
        return None
    side = min(shape[axis] for axis in _SPATIAL_AXES[layout])
    return TINY_IMAGE_RANGES if side <= TINY_IMAGE_SIDE else None


def describe_transforms() -> list[dict]:
    """The registry as JSON-ready records: name, description, default ranges, images only."""
    return [
        {
            "name": name,
            "description": spec.description,
            "params": {key: list(bounds) for key, bounds in spec.params.items()},
            "images_only": spec.image,
        }
        for name, spec in TRANSFORMS.items()
    ]


# ----------------------------------------------------------------------------------- runner


@dataclass
class MetamorphicResult:
    """What ``run_metamorphic`` found.

    ``instability (N,)`` share of a sample's follow-ups whose class differs from the source's
    (higher = more unstable); ``source_class (N,)``; ``transforms`` in application order;
    ``design``: tidy columns, one row per follow-up (see ``run_metamorphic``).
    """

    instability: Array
    source_class: Array
    sample_ids: Array
    transforms: list[str]
    design: dict[str, Array] = field(repr=False)

    def design_records(self) -> list[dict]:
        """The design as JSON-ready records (NaN parameters of unapplied transforms -> None)."""
        names = list(self.design)
        columns = [self.design[name].tolist() for name in names]
        return [
            {
                name: (None if isinstance(value, float) and math.isnan(value) else value)
                for name, value in zip(names, row, strict=True)
            }
            for row in zip(*columns, strict=True)
        ]


# Follow-ups per source sample: a chunk holds at least one source with all its follow-ups,
# so this bounds the memory of one predict call whatever the batch size.
MAX_FOLLOWUPS = 1_000


def run_metamorphic(
    predict: Callable[[Array], Array],
    x: Array,
    *,
    transforms: Sequence[str] | None = None,
    followups: int = 10,
    seed: int = 0,
    layout: str | None = "NCHW",
    ranges: Mapping[str, Mapping[str, tuple[float, float]]] | None = None,
    sample_ids: Array | None = None,
    batch_size: int = 256,
) -> MetamorphicResult:
    """Run the randomised factorial metamorphic design on ``x`` and record every follow-up.

    ``predict(batch)`` takes a batch in x's layout and dtype and returns its predicted classes
    ``(n,)`` or class scores ``(n, K)`` (argmax taken). ``x`` is a floating-point ``(N, ...)``
    array laid out as ``layout`` ("NCHW", "NHWC", "NHW"; None for any tensor, noise only).
    ``transforms`` defaults to ``default_transforms(layout)``; ``ranges`` overrides parameter
    ranges, e.g. ``{"rotate": {"degrees": (-30, 30)}}``. ``sample_ids (N,)`` (default 0..N-1,
    non-negative) seed each source's generator together with ``seed``. ``predict`` sees at
    most ``batch_size`` inputs at a time (sources and their follow-ups; at least one source).

    The design table has one row per follow-up: ``sample_id``, ``followup`` (0..F-1), one
    int8 0/1 column per transform (named as it), ``<transform>_<param>`` float64 (the drawn
    value, NaN where the transform was not applied), ``source_class``, ``followup_class`` and
    ``violated`` (int8, 1 where the classes differ).
    """
    chosen = _check_transforms(transforms, layout)
    bounds = _check_ranges(ranges, chosen)
    x = _check_x(x, layout, chosen)
    ids = _check_sample_ids(sample_ids, len(x))
    for name, value, least in (("followups", followups, 1), ("batch_size", batch_size, 1)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < least:
            raise TestprioError(
                f"metamorphic {name} must be an integer >= {least}, got {value!r}; pass e.g. "
                f"{name}=10."
            )
    if followups > MAX_FOLLOWUPS:
        raise TestprioError(
            f"metamorphic followups {followups:,} is more than the limit of {MAX_FOLLOWUPS:,}: "
            "a sample's follow-ups are predicted at once; pass e.g. followups=10."
        )
    _check_seed(seed)
    return _run(predict, x, chosen, bounds, int(followups), int(seed), layout, ids, batch_size)


def _run(
    predict: Callable[[Array], Array],
    x: Array,
    chosen: list[str],
    bounds: dict[str, dict[str, tuple[float, float]]],
    followups: int,
    seed: int,
    layout: str | None,
    ids: Array,
    batch_size: int,
) -> MetamorphicResult:
    arrangement = LAYOUTS[layout]
    per_chunk = max(1, batch_size // (followups + 1))
    param_columns = [(name, key) for name in chosen for key in bounds[name]]
    n = len(x)
    instability = np.zeros(n)
    source_class = np.zeros(n, dtype=np.int64)
    parts: dict[str, list[Array]] = {}
    for start in range(0, n, per_chunk):
        sources = x[start : start + per_chunk]
        chunk_ids = ids[start : start + per_chunk]
        work = arrangement.to_nchw(sources)
        draws = [
            _draw_followups(seed, sid, followups, chosen, bounds, work.shape[1:])
            for sid in chunk_ids
        ]
        applied = np.concatenate([d[0] for d in draws])  # (c*F, T) bool
        values = {col: np.concatenate([d[1][col] for d in draws]) for col in param_columns}
        batch = np.repeat(work, followups, axis=0).astype(_compute_dtype(x.dtype))
        for index, name in enumerate(chosen):
            rows = np.flatnonzero(applied[:, index])
            if rows.size == 0:
                continue
            spec = TRANSFORMS[name]
            normal = np.concatenate([d[2][name] for d in draws]) if spec.needs_normal else None
            params = {key: values[(name, key)][rows] for key in bounds[name]}
            batch[rows] = spec.apply(batch[rows], params, normal)
        followup_inputs = arrangement.from_nchw(batch).astype(x.dtype)
        classes = _predict_classes(predict, np.concatenate([sources, followup_inputs]))
        count = len(sources)
        source, after = classes[:count], classes[count:]
        violated = after != np.repeat(source, followups)
        instability[start : start + count] = violated.reshape(count, followups).mean(axis=1)
        source_class[start : start + count] = source
        columns = {
            "sample_id": np.repeat(chunk_ids, followups),
            "followup": np.tile(np.arange(followups, dtype=np.int64), count),
        }
        for index, name in enumerate(chosen):
            columns[name] = applied[:, index].astype(np.int8)
        for name, key in param_columns:
            columns[f"{name}_{key}"] = np.where(
                applied[:, chosen.index(name)], values[(name, key)], np.nan
            )
        columns["source_class"] = np.repeat(source, followups)
        columns["followup_class"] = after
        columns["violated"] = violated.astype(np.int8)
        for key, column in columns.items():
            parts.setdefault(key, []).append(column)
    design = {key: np.concatenate(chunks) for key, chunks in parts.items()}
    return MetamorphicResult(instability, source_class, ids, list(chosen), design)


def _draw_followups(
    seed: int,
    sample_id: int,
    followups: int,
    chosen: list[str],
    bounds: dict[str, dict[str, tuple[float, float]]],
    sample_shape: tuple[int, ...],
) -> tuple[Array, dict[tuple[str, str], Array], dict[str, Array]]:
    """One source's assignment ``(F, T)``, parameters ``(F,)`` each, and noise fields.

    Its own generator, seeded by (seed, sample_id), makes a sample's follow-ups independent
    of batching and sharding. Parameters are drawn whether or not the transform is applied,
    so changing one transform's indicator never shifts another's draws.
    """
    rng = np.random.default_rng([seed, int(sample_id)])
    applied = rng.random((followups, len(chosen))) < 0.5
    values = {
        (name, key): rng.uniform(low, high, size=followups)
        for name in chosen
        for key, (low, high) in bounds[name].items()
    }
    normals = {
        name: rng.standard_normal((int(applied[:, index].sum()), *sample_shape), dtype=np.float32)
        for index, name in enumerate(chosen)
        if TRANSFORMS[name].needs_normal
    }
    return applied, values, normals


def _compute_dtype(dtype: np.dtype) -> np.dtype:
    return np.dtype(np.float64) if dtype == np.float64 else np.dtype(np.float32)


def _predict_classes(predict: Callable[[Array], Array], batch: Array) -> Array:
    out = np.asarray(predict(batch))
    if out.ndim == 2 and len(out) == len(batch) and out.shape[1] >= 1:
        return out.argmax(axis=1).astype(np.int64)
    if out.ndim == 1 and len(out) == len(batch) and _integral(out):
        return out.astype(np.int64)
    raise TestprioError(
        f"the metamorphic predict function returned shape {out.shape} ({out.dtype}) for a batch "
        f"of {len(batch)} inputs; it must return classes ({len(batch)},) as integers or class "
        f"scores ({len(batch)}, K)."
    )


def _integral(values: Array) -> bool:
    if np.issubdtype(values.dtype, np.integer):
        return True
    return np.issubdtype(values.dtype, np.floating) and bool(
        np.all(np.isfinite(values)) and np.all(values == np.round(values))
    )


# ------------------------------------------------------------------------------ attribution


def attribution(
    design: Mapping[str, Array],
    *,
    seed: int = 0,
    n_boot: int = 1000,
    by_class: bool = True,
    confidence: float = 0.95,
) -> dict:
    """Which transforms cause the violations in ``design`` (``MetamorphicResult.design``).

    ``design`` maps column names to arrays (the design dict, or a pandas DataFrame with its
    columns); the transforms are its indicator columns named after ``TRANSFORMS``. Per
    transform: violation rate with and without it, ATE (difference in means) with a cluster
    bootstrap percentile interval (source samples resampled, ``n_boot`` replicates, seeded),
    the regression with pairwise interactions (main effect and implied ATE), and the Shapley
    value; with ``by_class`` the same per source predicted class. Returns a JSON-serialisable
    dict (NaN -> None); see testprio/causal.py for every key and how to read it.
    """
    _check_seed(seed)
    if isinstance(n_boot, bool) or not isinstance(n_boot, int | np.integer) or n_boot < 0:
        raise TestprioError(
            f"attribution n_boot must be a non-negative integer, got {n_boot!r}; pass e.g. 1000."
        )
    if (
        isinstance(confidence, bool)
        or not isinstance(confidence, float | int)
        or not (0 < confidence < 1)
    ):
        raise TestprioError(
            f"attribution confidence must be between 0 and 1, got {confidence!r}; pass e.g. 0.95."
        )
    names = [name for name in TRANSFORMS if name in design]
    if not names:
        raise TestprioError(
            "the metamorphic design has no transform indicator column (one of "
            f"{', '.join(TRANSFORMS)}); pass result.design from run_metamorphic."
        )
    columns = {}
    for key in ("sample_id", "source_class", "violated", *names):
        if key not in design:
            raise TestprioError(
                f"the metamorphic design lacks column {key!r}; pass result.design from "
                "run_metamorphic."
            )
        columns[key] = np.asarray(design[key])
    rows = len(columns["violated"])
    for key, column in columns.items():
        if column.shape != (rows,) or not _integral(column):
            raise TestprioError(
                f"the metamorphic design column {key!r} must hold {rows} integers, got shape "
                f"{column.shape} ({column.dtype}); pass result.design from run_metamorphic."
            )
    for key in ("violated", *names):
        if not np.isin(columns[key], (0, 1)).all():
            raise TestprioError(
                f"the metamorphic design column {key!r} must hold only 0 and 1; pass "
                "result.design from run_metamorphic."
            )
    if rows == 0:
        raise TestprioError("the metamorphic design has no rows; run run_metamorphic on samples.")
    groups = columns["source_class"].astype(np.int64) if by_class else None
    return factorial_attribution(
        np.column_stack([columns[name] for name in names]),
        columns["violated"],
        columns["sample_id"].astype(np.int64),
        names=names,
        groups=groups,
        seed=int(seed),
        n_boot=int(n_boot),
        confidence=float(confidence),
    )


# ------------------------------------------------------------------------------- validation


def _check_layout(layout: str | None) -> None:
    if layout not in LAYOUTS:
        names = ", ".join(repr(key) for key in LAYOUTS)
        raise TestprioError(
            f"unknown metamorphic layout {layout!r}; choose one of {names} (None: any tensor, "
            "noise only)."
        )


def _check_transforms(transforms: Sequence[str] | None, layout: str | None) -> list[str]:
    _check_layout(layout)
    if transforms is None:
        return default_transforms(layout)
    if isinstance(transforms, str):
        transforms = [part.strip() for part in transforms.split(",") if part.strip()]
    names = list(transforms)
    if not names:
        raise TestprioError(
            f"metamorphic transforms is empty; name at least one of {', '.join(TRANSFORMS)}."
        )
    for name in names:
        if name not in TRANSFORMS:
            raise TestprioError(
                f"unknown metamorphic transform {name!r}; choose from {', '.join(TRANSFORMS)}."
            )
        if layout is None and TRANSFORMS[name].image:
            raise TestprioError(
                f"metamorphic transform {name!r} needs images but layout is None; pass "
                "layout='NCHW', 'NHWC' or 'NHW' for image tensors, or use only 'noise'."
            )
    if len(set(names)) != len(names):
        raise TestprioError(
            f"metamorphic transforms {names} name a transform twice; name each once."
        )
    # Registry order, so the same set always means the same composition.
    return [name for name in TRANSFORMS if name in names]


def _check_ranges(
    ranges: Mapping[str, Mapping[str, tuple[float, float]]] | None, chosen: list[str]
) -> dict[str, dict[str, tuple[float, float]]]:
    bounds = {name: dict(TRANSFORMS[name].params) for name in chosen}
    for name, overrides in (ranges or {}).items():
        if name not in bounds:
            raise TestprioError(
                f"metamorphic ranges name transform {name!r}, which is not among the chosen "
                f"transforms ({', '.join(chosen)}); add it to transforms or drop its range."
            )
        spec = TRANSFORMS[name]
        for key, pair in overrides.items():
            if key not in spec.params:
                raise TestprioError(
                    f"metamorphic transform {name!r} has no parameter {key!r}; its parameters "
                    f"are {', '.join(spec.params)}."
                )
            least, most = spec.limits[key]
            try:
                low, high = (float(value) for value in pair)
            except (TypeError, ValueError):
                low = high = math.nan
            if not (least <= low <= high <= most):
                raise TestprioError(
                    f"metamorphic range {pair!r} for {name}.{key} is invalid; give (low, high) "
                    f"with {least:g} <= low <= high <= {most:g}."
                )
            bounds[name][key] = (low, high)
    return bounds


def _check_x(x: Array, layout: str | None, chosen: list[str]) -> Array:
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise TestprioError(
            f"metamorphic input has dtype {x.dtype}; transforms need a floating-point tensor, "
            "so pass the preprocessed (float32) pool."
        )
    wanted = LAYOUTS[layout].ndim
    if wanted is not None and x.ndim != wanted:
        raise TestprioError(
            f"metamorphic input has shape {x.shape}, but layout {layout!r} needs {wanted} axes; "
            "pass the layout of the tensors (NCHW, NHWC, NHW) or layout=None with only 'noise'."
        )
    if x.ndim < 2 or len(x) == 0:
        raise TestprioError(
            f"metamorphic input has shape {x.shape}; pass a non-empty batch (N, ...) of samples."
        )
    if not np.all(np.isfinite(x)):
        raise TestprioError(
            "metamorphic input holds NaN or Inf; pass finite samples (ingest quarantines them)."
        )
    return x


def _check_sample_ids(sample_ids: Array | None, n: int) -> Array:
    if sample_ids is None:
        return np.arange(n, dtype=np.int64)
    ids = np.asarray(sample_ids)
    if ids.shape != (n,) or not np.issubdtype(ids.dtype, np.integer) or (ids < 0).any():
        raise TestprioError(
            f"metamorphic sample_ids must be {n} non-negative integers (one per sample), got "
            f"shape {ids.shape} ({ids.dtype}); pass the pool's sample_id column."
        )
    return ids.astype(np.int64)


def _check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise TestprioError(f"metamorphic seed must be a non-negative integer, got {seed!r}.")
