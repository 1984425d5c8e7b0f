"""The convert stage's child process: one framework's converter, in a process of its own.

A converter module (``convert_pytorch``, ``convert_tensorflow``, ``convert_paddle``) offers:

- ``convert(source, target, input_shape, *, fmt, pool_shape, source_name) -> dict`` writes
  ``target``: one self-contained ONNX file whose input has a dynamic batch axis where the
  framework allows (a Paddle model saved with a fixed one keeps it). It returns
  facts about the conversion (converter, versions, the example input it used).
  ``input_shape`` is the per-sample shape the user gave (or ``None``); ``pool_shape`` is that
  of the pool's samples, the last resort of a framework that needs an example input.
- ``run_source(source, x, *, fmt, source_name)`` runs the source model with its framework on
  a float32 batch ``(N, *sample_shape)`` and returns its outputs: a list in the ONNX model's
  output order, or a dict by output name. When ``target`` fixes the batch size at B, the
  worker calls it with batches of exactly B.

The convert stage (``testprio.convert``) never imports a framework: it starts
``python -m testprio.convert.worker REQUEST.json`` (``worker_main``), which imports one
converter module, converts, runs the source model on the parity samples and writes its
result as JSON. TensorFlow and Paddle crash when imported into one process, and a crash in
a framework's native code then fails the conversion with a sentence instead of taking the
stage down. This module imports no framework itself.

``fmt`` is the saved format that ``testprio.convert`` detected (``torchscript``,
``exported_program``, ``keras``, ``keras_h5``, ``saved_model``, ``paddle_json``,
``paddle_pdmodel``).
"""

from __future__ import annotations

import importlib
import json
import re
import sys
import time
from collections.abc import Callable
from typing import Any

# Opset of every converted model: supported by torch.onnx (both exporters), tf2onnx 1.17,
# paddle2onnx 2.1 and the onnx and onnxruntime versions testprio is tested with.
OPSET = 18
# Example batch for exporters that trace: more than 1, so that nothing specialises on a
# batch of one (torch.export treats sizes 0 and 1 as constants).
EXAMPLE_BATCH = 4
_ANSI = re.compile(r"\x1b\[[0-9;]*m")

# The one line of code that saves each format testprio converts, by format name: shown in
# error messages (and in the README's table).
SAVE_LINES = {
    "onnx": "torch.onnx.export(model, (example,), 'model.onnx', dynamo=True)",
    "torchscript": "torch.jit.save(torch.jit.script(model.eval()), 'model.pt')",
    "exported_program": (
        "torch.export.save(torch.export.export(model.eval(), (example,), "
        "dynamic_shapes=({0: torch.export.Dim('batch')},)), 'model.pt2')"
    ),
    "keras": "model.save('model.keras')",
    "keras_h5": "model.save('model.h5')",
    "saved_model": "model.export('saved_model_dir')",
    "paddle_json": (
        "paddle.jit.save(layer, 'model/inference', "
        "input_spec=[paddle.static.InputSpec([None, C, H, W], 'float32')])"
    ),
    "paddle_pdmodel": (
        "paddle.jit.save(layer, 'model/inference', "
        "input_spec=[paddle.static.InputSpec([None, C, H, W], 'float32')])"
    ),
}


def describe(exc: BaseException, limit: int = 300) -> str:
    """``Type: first line of the message`` of a framework's exception, for one sentence."""
    lines = [line.strip() for line in _ANSI.sub("", str(exc)).splitlines() if line.strip()]
    first = lines[0] if lines else ""
    text = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _normalise_outputs(outputs: Any, onnx_path: str) -> list:
    """Source outputs as a list in the ONNX model's output order."""
    if not isinstance(outputs, dict):
        return list(outputs)
    import onnx

    names = [value.name for value in onnx.load(onnx_path, load_external_data=False).graph.output]
    if set(names) <= set(outputs):
        return [outputs[name] for name in names]
    return list(outputs.values())


def _fixed_batch(onnx_path: str) -> int | None:
    """The batch size the converted model's input fixes, or None when its batch is dynamic."""
    import onnx  # not testprio.model: it imports onnxruntime beside the framework

    graph = onnx.load(onnx_path, load_external_data=False).graph
    weights = {init.name for init in graph.initializer}
    inputs = [value for value in graph.input if value.name not in weights]
    dims = inputs[0].type.tensor_type.shape.dim if len(inputs) == 1 else []
    fixed = bool(dims) and dims[0].HasField("dim_value") and dims[0].dim_value > 0
    return int(dims[0].dim_value) if fixed else None


def _run_source(module: Any, request: dict, x: Any) -> list:
    """The source model's outputs for ``x`` in the ONNX output order; a model saved with a
    fixed batch size runs that many samples at a time (the last padded), as ONNX Runtime
    runs its conversion, since its framework may refuse any other batch size."""
    import numpy as np

    source, fmt, name, target = (request[k] for k in ("source", "format", "source_name", "target"))
    batch = _fixed_batch(target)
    if batch is None or batch == len(x):
        outputs = module.run_source(source, x, fmt=fmt, source_name=name)
        return [np.asarray(out) for out in _normalise_outputs(outputs, target)]
    padded = np.concatenate([x, np.repeat(x[-1:], -len(x) % batch, axis=0)])
    chunks = [
        [
            np.asarray(out)
            for out in _normalise_outputs(
                module.run_source(source, padded[i : i + batch], fmt=fmt, source_name=name),
                target,
            )
        ]
        for i in range(0, len(padded), batch)
    ]
    return [
        np.concatenate(parts)[: len(x)] if parts[0].ndim and len(parts[0]) == batch else parts[0]
        for parts in zip(*chunks, strict=True)
    ]


def _convert_and_run(request: dict) -> dict:
    import numpy as np

    from testprio.errors import TestprioError

    module = importlib.import_module(request["module"])
    source, fmt, name = request["source"], request["format"], request["source_name"]
    input_shape = tuple(request["input_shape"]) if request["input_shape"] else None
    started = time.perf_counter()
    conversion = module.convert(
        source,
        request["target"],
        input_shape,
        fmt=fmt,
        pool_shape=tuple(request["pool_shape"]),
        source_name=name,
    )
    conversion["seconds"] = round(time.perf_counter() - started, 3)
    result: dict[str, Any] = {"conversion": conversion, "source_error": None}
    x = np.load(request["samples"])
    try:
        arrays = _run_source(module, request, x)
        np.savez(request["outputs"], *arrays)
        result["source_outputs"] = len(arrays)
    except TestprioError as exc:
        result["source_error"] = str(exc)
    except Exception as exc:  # the framework's own error types
        result["source_error"] = describe(exc)
    return result


def serve_request(
    argv: list[str], work: Callable[[dict], dict], failure: Callable[[dict, BaseException], str]
) -> int:
    """The child-process protocol of the framework workers: read the request JSON named by
    ``argv[0]``, run ``work(request)``, and write its result (or ``{"error": sentence}``, with
    ``failure(request, exc)`` for anything a framework raises) to ``request["result"]``."""
    from testprio.errors import TestprioError

    with open(argv[0], encoding="utf-8") as handle:
        request = json.load(handle)
    try:
        result, code = work(request), 0
    except TestprioError as exc:
        result, code = {"error": str(exc)}, 1
    except Exception as exc:  # anything a framework raises while loading, exporting, training
        result, code = {"error": failure(request, exc)}, 1
    with open(request["result"], "w", encoding="utf-8") as handle:
        json.dump(result, handle)
    sys.stdout.flush()
    return code


def worker_main(argv: list[str]) -> int:
    """``python -m testprio.convert.worker REQUEST.json``: convert, run the source, write result."""
    return serve_request(
        argv,
        _convert_and_run,
        lambda request, exc: (
            f"converting model {request['source_name']} to ONNX failed ({describe(exc)}); "
            "check that the model loads and runs in its framework, or convert it to ONNX "
            "yourself and pass the .onnx file."
        ),
    )


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
