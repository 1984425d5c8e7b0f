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

This module is the op registry ``OPS``, ``build``/``build_op``/``op_specs`` and the chain
``Preprocessor``; the ops live by family: ``preprocess_base`` (``Op``, ``Param``),
``preprocess_arrays`` (arithmetic, per-channel statistics), ``preprocess_images`` (image
ops, ``layout``), and the presets in ``preprocess_presets`` (re-exported here as
``PRESETS``).
"""

from __future__ import annotations

import copy
import difflib
import json
from collections.abc import Iterable
from typing import Any

import numpy as np

from testprio.errors import TestprioError
from testprio.ingest.preprocess_arrays import Cast, Center, Clip, MinMax, Scale, Standardize
from testprio.ingest.preprocess_base import REQUIRED, Op, show_value
from testprio.ingest.preprocess_images import (
    CenterCrop,
    Equalize,
    Grayscale,
    Layout,
    Resize,
    RGBToY,
    ToRGB,
)
from testprio.ingest.preprocess_presets import PRESETS

__all__ = [
    "CUSTOM",
    "DEFAULT_SOURCE",
    "OPS",
    "PRESETS",
    "CustomPlace",
    "Op",
    "Preprocessor",
    "build",
    "build_op",
    "chain_source",
    "op_specs",
]

CUSTOM = "custom"  # the spec name that marks where the custom op runs
DEFAULT_SOURCE = "the op list"

# The op registry: every op a spec may name, by its name.
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
            f"{where} names unknown op {show_value(name)}{_did_you_mean(name, OPS)}; known ops: "
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
        if key not in given and param.default is REQUIRED:
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
            f"op [{index}] of {source} is {show_value(spec)[:60]}, not an object; write each op "
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
