"""Hidden-layer activations of an ONNX classifier, for coverage and surprise adequacy.

The model is not changed in place: :func:`with_layer_outputs` returns a copy whose graph
also outputs chosen intermediate tensors, so one ONNX Runtime pass yields the class scores
and the activations together. :func:`hidden_layer_names` picks the default layers;
:func:`flatten_activation` turns each into ``(N, units)`` (a feature map by the mean over
space, or flattened whole: :data:`SPATIAL_REDUCTIONS`).

Layer choice (deterministic): walking the graph in its (topological) node order, a layer
is the output of an activation node (Relu, Tanh, Sigmoid, LeakyRelu), or of a linear node
(Gemm, Conv, MatMul) whose output does not go on into an activation (through bias Adds or
BatchNormalization), since then the activation is the layer. Tensors that reach a graph
output without passing another linear node are the class head (logits, probabilities) and
are left out. Of the rest the last ``limit`` are kept: deeper layers carry the features
coverage and surprise adequacy work on, and the bound keeps their cost fixed.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from testprio.errors import TestprioError

ACTIVATION_OPS = frozenset({"Relu", "Tanh", "Sigmoid", "LeakyRelu"})
LINEAR_OPS = frozenset({"Gemm", "Conv", "MatMul"})
# Ops between a linear node and its activation that belong to the same layer.
_SAME_LAYER_OPS = frozenset({"Add", "BatchNormalization"})


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    return users


def _feeds_activation(name: str, users: dict[str, list[onnx.NodeProto]]) -> bool:
    for node in users.get(name, []):
        if node.op_type in ACTIVATION_OPS:
            return True
        if node.op_type in _SAME_LAYER_OPS and any(
            _feeds_activation(out, users) for out in node.output
        ):
            return True
    return False


def _head_tensors(graph: onnx.GraphProto, users: dict[str, list[onnx.NodeProto]]) -> set[str]:
    """Tensors from which a graph output is reached without passing a linear node."""
    outputs = {o.name for o in graph.output}
    head: set[str] = set()
    # Reverse topological order: a tensor is head when it is an output or a non-linear
    # consumer produces a head tensor.
    for node in reversed(graph.node):
        for name in node.output:
            if name in outputs or any(
                user.op_type not in LINEAR_OPS and any(o in head for o in user.output)
                for user in users.get(name, [])
            ):
                head.add(name)
    return head


def _candidates(model: onnx.ModelProto) -> list[str]:
    graph = model.graph
    users = _consumers(graph)
    head = _head_tensors(graph, users)
    names = []
    for node in graph.node:
        if node.op_type in ACTIVATION_OPS:
            picked = node.output[0]
        elif node.op_type in LINEAR_OPS and not _feeds_activation(node.output[0], users):
            picked = node.output[0]
        else:
            continue
        if picked not in head:
            names.append(picked)
    return names


def hidden_layer_names(model: onnx.ModelProto, *, limit: int = 8) -> list[str]:
    """Default hidden layers of ``model``: the last ``limit`` candidates, in graph order."""
    if limit < 1:
        raise TestprioError(f"the layer limit must be at least 1, got {limit}.")
    return _candidates(model)[-limit:]


def _tensor_names(model: onnx.ModelProto) -> set[str]:
    return {name for node in model.graph.node for name in node.output if name}


def with_layer_outputs(model: onnx.ModelProto, layers: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` that also outputs the tensors ``layers`` (after its own outputs).

    Output types and shapes come from ONNX shape inference; a tensor it cannot type is
    declared float32 of unknown shape (the type every layer candidate has).
    """
    known = _tensor_names(model)
    unknown = [name for name in layers if name not in known]
    if unknown:
        choices = ", ".join(_candidates(model)) or "none found"
        raise TestprioError(
            f"layer {unknown[0]!r} in --layers is not a tensor of the model; name node "
            f"outputs such as the hidden layers {choices}."
        )
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    inferred = onnx.shape_inference.infer_shapes(copy)
    types = {v.name: v for v in inferred.graph.value_info}
    present = {o.name for o in copy.graph.output}
    for name in layers:
        if name in present:
            continue
        present.add(name)
        if name in types:
            copy.graph.output.append(types[name])
        else:
            copy.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    return copy


def _spatial_mean(a: np.ndarray) -> np.ndarray:
    return a.mean(axis=tuple(range(2, a.ndim)), dtype=np.float64).astype(np.float32)


def _flattened(a: np.ndarray) -> np.ndarray:
    units = int(np.prod(a.shape[1:]))  # not reshape(N, -1): ambiguous for N == 0
    return a.reshape(a.shape[0], units).astype(np.float32, copy=False)


# How a feature map (N, C, *spatial) becomes (N, units): one unit per channel (the mean over
# space, as the coverage and surprise-adequacy papers do), or one unit per channel and position.
SPATIAL_REDUCTIONS = {"mean": _spatial_mean, "flatten": _flattened}


def check_reduction(reduce: str, *, flag: str = "--surprise-reduce") -> str:
    """``reduce`` if it names one of :data:`SPATIAL_REDUCTIONS`, else one sentence."""
    if reduce not in SPATIAL_REDUCTIONS:
        raise TestprioError(
            f"{flag} {reduce!r} is not one of {', '.join(SPATIAL_REDUCTIONS)}: mean averages "
            "a feature map over space (one unit per channel), flatten keeps every position."
        )
    return reduce


def flatten_activation(a: np.ndarray, *, reduce: str = "mean") -> np.ndarray:
    """One layer's activations as ``(N, units)`` float32.

    ``(N, units)`` stays as is; a feature map ``(N, C, *spatial)`` (ONNX convolutions are
    channels-first) is reduced by ``reduce`` (:data:`SPATIAL_REDUCTIONS`). ``mean`` (the
    default) gives one unit per channel, the mean over the spatial axes: the practice of the
    coverage and surprise-adequacy papers (and dnn-tip's case studies), which keeps the unit
    count independent of the image size. ``flatten`` gives ``C x H x W`` units: what a
    spatial pattern looks like survives, at that many times the memory and distance work.
    ``(N,)`` becomes ``(N, 1)``.
    """
    a = np.asarray(a)
    if a.ndim == 1:
        return a.reshape(-1, 1).astype(np.float32, copy=False)
    if a.ndim == 2:
        return a.astype(np.float32, copy=False)
    return SPATIAL_REDUCTIONS[check_reduction(reduce)](a)


def layer_activations(
    session, feeds: dict, layers: list[str], *, outputs: list[str] = ()
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """One ONNX Runtime run of a :func:`with_layer_outputs` model.

    Returns the values of ``outputs`` (e.g. the class scores) and the flattened
    ``(N, units)`` activations of ``layers``.
    """
    values = session.run([*outputs, *layers], feeds)
    head = list(values[: len(outputs)])
    return head, [flatten_activation(v) for v in values[len(outputs) :]]
