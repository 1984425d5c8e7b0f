"""TensorFlow -> ONNX with tf2onnx: Keras files (``.keras``, ``.h5``) and SavedModel folders.

Both convert through a ``tf.function`` with tf2onnx's ``from_function``: a Keras model is
called inside one (``tf2onnx.convert.from_keras`` fails on Keras 3 models: it looks up
Keras 3's symbolic tensors by name, ``KeyError: 'keras_tensor_5'``); a SavedModel's
``serving_default`` signature (or its only one) is called inside one. The function returns
a dict, whose keys name the ONNX outputs: the output layers' names for a Keras model (the
dict's own keys when the model returns a dict), the signature's output keys for a
SavedModel. Either way the input signature has a batch axis of ``None``, so the ONNX batch
axis is dynamic whatever batch size the model was built with. The parity check runs the
Keras model itself, eagerly, not the traced function. tf2onnx leaves an operation it cannot
translate in the graph under its TensorFlow name; testprio's ONNX check then names it and
the opset.
"""

from __future__ import annotations

import functools
import os
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf2onnx  # noqa: E402

from testprio.convert.worker import OPSET, SAVE_LINES, describe  # noqa: E402
from testprio.errors import TestprioError  # noqa: E402

SERVING_SIGNATURE = "serving_default"


def _load_keras(source: str) -> Any:
    import keras

    return keras.models.load_model(source, compile=False)


LOADERS = {"keras": _load_keras, "keras_h5": _load_keras, "saved_model": tf.saved_model.load}


@functools.lru_cache(maxsize=2)
def _load(source: str, fmt: str, source_name: str) -> Any:
    try:
        return LOADERS[fmt](source)
    except Exception as exc:  # Keras and TensorFlow raise many unrelated types here
        raise TestprioError(
            f"TensorFlow could not load model {source_name} ({describe(exc)}); check that it is "
            f"complete (and needs no custom classes) and save it again with {SAVE_LINES[fmt]}."
        ) from None


def _signature(loaded: Any, source_name: str) -> Any:
    signatures = dict(loaded.signatures)
    if SERVING_SIGNATURE in signatures:
        return signatures[SERVING_SIGNATURE]
    if len(signatures) == 1:
        return next(iter(signatures.values()))
    names = ", ".join(f"'{name}'" for name in signatures) or "none"
    raise TestprioError(
        f"SavedModel {source_name} has no '{SERVING_SIGNATURE}' signature to convert "
        f"(signatures: {names}); export it with model.export(dir) or "
        "tf.saved_model.save(model, dir, signatures=...)."
    )


def _dynamic_batch(shape: Any, dtype: Any, name: str) -> tf.TensorSpec:
    return tf.TensorSpec([None, *list(shape)[1:]], dtype, name=name)


def _output_names(model: Any, count: int) -> list[str]:
    """Names of a Keras model's ``count`` outputs: its output layers' names, else output_i."""
    names = list(getattr(model, "output_names", None) or [])
    if len(names) != count and count == 1 and getattr(model, "layers", None):
        names = [model.layers[-1].name]  # a Sequential model names no outputs; its last layer
    if len(set(names)) != count:
        names = [f"output_{i}" for i in range(count)]
    return names


def _keras_outputs(model: Any, args: tuple) -> dict:
    """The Keras model's outputs for ``args`` (one tensor per input) as a dict by name."""
    outputs = model(args[0] if len(args) == 1 else list(args), training=False)
    if isinstance(outputs, dict):
        return dict(outputs)
    if not isinstance(outputs, list | tuple):
        outputs = [outputs]
    return dict(zip(_output_names(model, len(outputs)), outputs, strict=True))


def _keras_input_specs(model: Any) -> list[tf.TensorSpec]:
    return [
        _dynamic_batch(tensor.shape, tensor.dtype, getattr(tensor, "name", "") or f"input_{i}")
        for i, tensor in enumerate(model.inputs)
    ]


def _convert_keras(model: Any, target: str) -> None:
    specs = _keras_input_specs(model)

    @tf.function(input_signature=specs, autograph=False)
    def serve(*args):
        return _keras_outputs(model, args)

    tf2onnx.convert.from_function(serve, input_signature=specs, opset=OPSET, output_path=target)


def _serving_function(signature: Any) -> tuple[Any, list[tf.TensorSpec]]:
    """A tf.function over the signature with a ``None`` batch axis on every input."""
    inputs = signature.structured_input_signature[1]
    names = list(inputs)
    specs = [_dynamic_batch(inputs[n].shape, inputs[n].dtype, n) for n in names]

    @tf.function(input_signature=specs, autograph=False)
    def serve(*args):
        return signature(**dict(zip(names, args, strict=True)))

    return serve, specs


def _convert_saved_model(loaded: Any, target: str, source_name: str) -> None:
    serve, specs = _serving_function(_signature(loaded, source_name))
    tf2onnx.convert.from_function(serve, input_signature=specs, opset=OPSET, output_path=target)


def convert(
    source: str,
    target: str,
    input_shape: tuple[int, ...] | None,
    *,
    fmt: str,
    pool_shape: tuple[int, ...] | None = None,
    source_name: str = "",
) -> dict:
    """Write ``target`` from a Keras file or a SavedModel folder; return the facts.

    TensorFlow models carry their input signature, so ``input_shape`` is not needed.
    """
    source_name = source_name or source
    loaded = _load(source, fmt, source_name)
    try:
        with tf.device("/cpu:0"):
            if fmt == "saved_model":
                _convert_saved_model(loaded, target, source_name)
            else:
                _convert_keras(loaded, target)
    except TestprioError:
        raise
    except Exception as exc:  # tf2onnx's and TensorFlow's own errors
        raise TestprioError(
            f"tf2onnx could not convert model {source_name} ({describe(exc)}); check that the "
            "model runs in TensorFlow, or convert it to ONNX yourself and pass the .onnx file."
        ) from None
    return {
        "converter": "tf2onnx",
        "converter_version": tf2onnx.__version__,
        "framework": "tensorflow",
        "framework_version": tf.__version__,
        "opset": OPSET,
    }


def _numpy_outputs(outputs: Any) -> list | dict:
    if isinstance(outputs, dict):
        return {name: np.asarray(value) for name, value in outputs.items()}
    if isinstance(outputs, list | tuple):
        return [np.asarray(value) for value in outputs]
    return [np.asarray(outputs)]


def run_source(source: str, x: np.ndarray, *, fmt: str, source_name: str = "") -> list | dict:
    """The TensorFlow model's own outputs for ``x`` (a dict by name for a SavedModel)."""
    loaded = _load(source, fmt, source_name or source)
    with tf.device("/cpu:0"):
        if fmt == "saved_model":
            signature = _signature(loaded, source_name)
            (name,) = list(signature.structured_input_signature[1])
            return _numpy_outputs(signature(**{name: tf.constant(x)}))
        return _numpy_outputs(_keras_outputs(loaded, (tf.constant(x),)))
