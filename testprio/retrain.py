"""Retrain: fine-tune the model on its training reference plus a selection of the pool, and
measure the accuracy on a held-out split.

One method per source framework (``RETRAINERS``):

- ``pytorch``: the TorchScript (``.pt``) or exported-program (``.pt2``) model itself is
  fine-tuned (Adam, cross-entropy) in a child process (``testprio.retrain_worker``).
- ``tensorflow``: the Keras model (``.keras``/``.h5``) is fine-tuned (``model.fit``) in a
  child process of its own: TensorFlow and torch never share a process.
- ``onnx``: an ONNX model has no training graph; its classifier head (the last linear
  layer, ``Gemm`` or ``MatMul`` + ``Add``) is retrained as a multinomial logistic
  regression on the penultimate activations, in NumPy, starting from the model's own head
  weights. Everything before the head stays frozen.

Every method is deterministic for a given seed: the seed sets the batch order and any
framework randomness (dropout). A job's accuracy is ``mean(argmax(model(x_test)) == y_test)``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from testprio import scratch
from testprio.errors import TestprioError
from testprio.log import get_logger
from testprio.metrics import softmax

log = get_logger("retrain")


@dataclass(frozen=True)
class RetrainSettings:
    """How each fine-tuning runs (the same for every job of an evaluation)."""

    epochs: int = 3
    batch_size: int = 64
    learning_rate: float = 1e-3


@dataclass(frozen=True)
class RetrainData:
    """Every array a retraining needs. ``x_*`` are ``(N, *sample_shape)`` float32 in the
    model's input layout, ``y_*`` ``(N,)`` int64 class indices."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_pool: np.ndarray
    y_pool: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


@dataclass(frozen=True)
class RetrainJob:
    """Fine-tune on the training reference plus pool rows ``selected`` (positions), with
    ``seed``; ``key`` names the result."""

    key: str
    selected: np.ndarray
    seed: int


@dataclass(frozen=True)
class SourceModel:
    """The model to retrain: the user's file (``path``, local) in its detected ``fmt``, the
    converted ONNX file, and which ONNX output holds the class scores."""

    framework: str
    fmt: str
    path: str
    onnx_path: str
    class_output: str
    output_kind: str  # logits or probabilities
    name: str = ""  # as the user knows it (the file name), for messages


METHOD_DESCRIPTIONS = {
    "pytorch": "PyTorch fine-tuning of the whole model (Adam, cross-entropy) on the training "
    "reference plus the selection",
    "tensorflow": "Keras fine-tuning of the whole model (model.fit, Adam) on the training "
    "reference plus the selection",
    "onnx": "ONNX model: only the classifier head (the last linear layer) is retrained, as a "
    "multinomial logistic regression on the penultimate activations, from the model's own "
    "head weights (Adam, cross-entropy); the layers before it stay frozen",
}


# --- jobs -------------------------------------------------------------------------------


def _distinct(jobs: list[RetrainJob]) -> tuple[list[RetrainJob], dict[str, str]]:
    """Jobs with the same selection and seed train the same model: run each once.

    Returns the distinct jobs and, for every key, the key of the job that computes it.
    """
    seen: dict[tuple[bytes, int], str] = {}
    distinct, alias = [], {}
    for job in jobs:
        signature = (np.sort(np.asarray(job.selected, dtype=np.int64)).tobytes(), int(job.seed))
        if signature not in seen:
            seen[signature] = job.key
            distinct.append(job)
        alias[job.key] = seen[signature]
    return distinct, alias


def check_settings(settings: RetrainSettings) -> None:
    if settings.epochs < 1:
        raise TestprioError(f"--epochs {settings.epochs} must be a positive number of epochs.")
    if settings.batch_size < 1 or not settings.learning_rate > 0:
        raise TestprioError(
            "the retraining batch size and learning rate must be positive; keep the defaults."
        )


def retrain(
    source: SourceModel,
    data: RetrainData,
    jobs: list[RetrainJob],
    *,
    settings: RetrainSettings | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, float]:
    """Held-out accuracy in [0, 1] of the model fine-tuned for each job, by job key.

    The method is ``RETRAINERS[source.framework]``. ``progress(done, total)`` is called as
    distinct jobs finish.
    """
    settings = settings or RetrainSettings()
    check_settings(settings)
    if source.framework not in RETRAINERS:
        raise TestprioError(
            f"retraining {source.framework} models is not supported; retraining works for "
            f"{', '.join(RETRAINERS)} models (convert the model to ONNX for head retraining)."
        )
    distinct, alias = _distinct(jobs)
    log.info(
        "retrain: %d fine-tunings (%d distinct) by %s", len(jobs), len(distinct), source.framework
    )
    accuracies = RETRAINERS[source.framework](source, data, distinct, settings, progress)
    return {key: accuracies[computed] for key, computed in alias.items()}


# --- ONNX: the classifier head ------------------------------------------------------------

# Ops between the head's linear layer and the class output that do not change the argmax or
# that the head's loss accounts for (Softmax: output_kind probabilities).
_PASS_THROUGH = {"Softmax", "Identity", "Dropout", "LogSoftmax"}


@dataclass(frozen=True)
class LinearHead:
    """``logits = features @ weight + bias``: ``weight (D, K)``, ``bias (K,)``."""

    features: str
    weight: np.ndarray
    bias: np.ndarray


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {output: node for node in graph.node for output in node.output}


def _attribute(node: onnx.NodeProto, name: str, default):
    for attribute in node.attribute:
        if attribute.name == name:
            return onnx.helper.get_attribute_value(attribute)
    return default


def _gemm_head(node: onnx.NodeProto, weights: dict[str, np.ndarray]) -> LinearHead | None:
    a, b, *rest = node.input
    if b not in weights or _attribute(node, "transA", 0):
        return None
    weight = weights[b].astype(np.float64)
    if _attribute(node, "transB", 0):
        weight = weight.T
    weight = weight * float(_attribute(node, "alpha", 1.0))
    bias = np.zeros(weight.shape[1])
    if rest and rest[0]:
        if rest[0] not in weights:
            return None
        bias = np.broadcast_to(weights[rest[0]].astype(np.float64), bias.shape).copy()
        bias *= float(_attribute(node, "beta", 1.0))
    return LinearHead(a, weight, bias)


def find_linear_head(model: onnx.ModelProto, class_output: str) -> LinearHead:
    """The last linear layer before ``class_output`` (through Softmax/Identity/Dropout).

    Raises TestprioError with one sentence when the model does not end in one.
    """
    graph = model.graph
    weights = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    producers = _producers(graph)
    node = producers.get(class_output)
    while node is not None and node.op_type in _PASS_THROUGH:
        node = producers.get(node.input[0])
    head = None
    if node is not None and node.op_type == "Gemm":
        head = _gemm_head(node, weights)
    elif node is not None and node.op_type == "Add":
        bias_name = next((name for name in node.input if name in weights), None)
        other = next((name for name in node.input if name not in weights), None)
        matmul = producers.get(other) if other else None
        if bias_name and matmul is not None and matmul.op_type == "MatMul":
            if matmul.input[1] in weights and weights[matmul.input[1]].ndim == 2:
                weight = weights[matmul.input[1]].astype(np.float64)
                bias = np.broadcast_to(weights[bias_name].astype(np.float64), weight.shape[1:])
                head = LinearHead(matmul.input[0], weight, bias.copy())
    if head is None:
        raise TestprioError(
            f"the ONNX model's class output '{class_output}' does not come from a linear "
            "layer (Gemm, or MatMul + Add), so its head cannot be retrained; pass the PyTorch "
            "or Keras model instead, which is fine-tuned whole."
        )
    return head


def with_extra_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` that also outputs the intermediate tensors ``names`` (float)."""
    extended = onnx.ModelProto()
    extended.CopyFrom(model)
    present = {output.name for output in extended.graph.output}
    for name in names:
        if name not in present:
            extended.graph.output.append(
                onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
            )
    return extended


def onnx_outputs(
    model: onnx.ModelProto, names: list[str], x: np.ndarray, *, batch_size: int = 512
) -> list[np.ndarray]:
    """The tensors ``names`` of ``model`` (extended to output them) for ``x``, in batches."""
    from testprio.model import create_session

    session = create_session(with_extra_outputs(model, names).SerializeToString(), device="cpu")
    input_name = session.get_inputs()[0].name
    parts = [
        session.run(names, {input_name: x[start : start + batch_size]})
        for start in range(0, len(x), batch_size)
    ]
    return [np.concatenate([part[i] for part in parts]) for i in range(len(names))]


def _adam_head(
    features: np.ndarray,
    labels: np.ndarray,
    head: LinearHead,
    *,
    seed: int,
    settings: RetrainSettings,
) -> tuple[np.ndarray, np.ndarray]:
    """Mini-batch Adam on the softmax cross-entropy of ``features @ W + b``, from ``head``."""
    weight, bias = head.weight.copy(), head.bias.copy()
    moments = [
        np.zeros_like(weight),
        np.zeros_like(weight),
        np.zeros_like(bias),
        np.zeros_like(bias),
    ]
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    rng = np.random.default_rng(seed)
    onehot = np.eye(weight.shape[1])[labels]
    step = 0
    for _ in range(settings.epochs):
        order = rng.permutation(len(features))
        for start in range(0, len(order), settings.batch_size):
            rows = order[start : start + settings.batch_size]
            grad_logits = (softmax(features[rows] @ weight + bias) - onehot[rows]) / len(rows)
            step += 1
            for index, (param, grad) in enumerate(
                ((weight, features[rows].T @ grad_logits), (bias, grad_logits.sum(axis=0)))
            ):
                m, v = moments[2 * index], moments[2 * index + 1]
                m *= beta1
                m += (1 - beta1) * grad
                v *= beta2
                v += (1 - beta2) * grad**2
                m_hat = m / (1 - beta1**step)
                v_hat = v / (1 - beta2**step)
                param -= settings.learning_rate * m_hat / (np.sqrt(v_hat) + eps)
    return weight, bias


def head_features(source: SourceModel, data: RetrainData) -> tuple[LinearHead, dict]:
    """The model's linear head and the penultimate activations ``(N, D)`` of train, pool
    and test; checks that the head reproduces the model's class output."""
    model = onnx.load(source.onnx_path)
    head = find_linear_head(model, source.class_output)
    features = {}
    for part in ("train", "pool", "test"):
        x = getattr(data, f"x_{part}")
        feats, outputs = onnx_outputs(model, [head.features, source.class_output], x)
        feats = feats.reshape(len(x), -1).astype(np.float64)
        if feats.shape[1] != head.weight.shape[0]:
            raise TestprioError(
                f"the ONNX model's head input '{head.features}' has {feats.shape[1]} features "
                f"but its weight expects {head.weight.shape[0]}; pass the PyTorch or Keras "
                "model instead, which is fine-tuned whole."
            )
        if len(x):
            logits = feats @ head.weight + head.bias
            expected = softmax(logits) if source.output_kind == "probabilities" else logits
            if not np.allclose(expected, outputs, atol=1e-3, rtol=1e-3):
                raise TestprioError(
                    f"the ONNX model's last linear layer does not reproduce its class output "
                    f"'{source.class_output}', so its head cannot be retrained; pass the "
                    "PyTorch or Keras model instead, which is fine-tuned whole."
                )
        features[part] = feats
    return head, features


def _retrain_onnx_head(
    source: SourceModel,
    data: RetrainData,
    jobs: list[RetrainJob],
    settings: RetrainSettings,
    progress: Callable[[int, int], None] | None,
) -> dict[str, float]:
    head, features = head_features(source, data)
    results = {}
    for done, job in enumerate(jobs, start=1):
        selected = np.asarray(job.selected, dtype=np.int64)
        x = np.concatenate([features["train"], features["pool"][selected]])
        y = np.concatenate([data.y_train, data.y_pool[selected]]).astype(np.int64)
        weight, bias = _adam_head(x, y, head, seed=job.seed, settings=settings)
        predicted = (features["test"] @ weight + bias).argmax(axis=1)
        results[job.key] = float((predicted == data.y_test).mean())
        if progress:
            progress(done, len(jobs))
    return results


# --- PyTorch and Keras: the whole model, in a child process ------------------------------


def _retrain_in_child(
    source: SourceModel,
    data: RetrainData,
    jobs: list[RetrainJob],
    settings: RetrainSettings,
    progress: Callable[[int, int], None] | None,
) -> dict[str, float]:
    """Run ``python -m testprio.retrain_worker REQUEST.json`` for all ``jobs`` at once (one
    framework import, one model load); its stdout lines ``done N/M`` report progress."""
    output_names = [output.name for output in onnx.load(source.onnx_path).graph.output]
    with scratch.folder("retrain") as work:
        arrays = os.path.join(work, "data.npz")
        np.savez(arrays, **{name: getattr(data, name) for name in RetrainData.__dataclass_fields__})
        request = {
            "framework": source.framework,
            "format": source.fmt,
            "source": source.path,
            "source_name": source.name,
            "output_index": output_names.index(source.class_output),
            "output_kind": source.output_kind,
            "data": arrays,
            "jobs": [
                {"key": job.key, "selected": np.asarray(job.selected).tolist(), "seed": job.seed}
                for job in jobs
            ],
            "epochs": settings.epochs,
            "batch_size": settings.batch_size,
            "learning_rate": settings.learning_rate,
            "result": os.path.join(work, "result.json"),
        }
        request_path = os.path.join(work, "request.json")
        with open(request_path, "w", encoding="utf-8") as handle:
            json.dump(request, handle)
        tail: list[str] = []
        with subprocess.Popen(
            [sys.executable, "-m", "testprio.retrain_worker", request_path],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        ) as child:
            for line in child.stdout:
                line = line.rstrip()
                if line.startswith("done ") and progress:
                    done, _, total = line[5:].partition("/")
                    progress(int(done), int(total))
                else:
                    tail = [*tail[-19:], line]
        if not os.path.exists(request["result"]):
            log.warning("the retraining process's last output:\n%s", "\n".join(tail))
            raise TestprioError(
                f"the {source.framework} retraining process stopped without a result (exit "
                f"status {child.returncode}); check that the model trains in its framework "
                "(the log shows the process's output)."
            )
        with open(request["result"], encoding="utf-8") as handle:
            result = json.load(handle)
    if "error" in result:
        raise TestprioError(result["error"])
    return result["accuracies"]


RETRAINERS: dict[str, Callable[..., dict[str, float]]] = {
    "pytorch": _retrain_in_child,
    "tensorflow": _retrain_in_child,
    "onnx": _retrain_onnx_head,
}
