"""PaddlePaddle -> ONNX with paddle2onnx: inference models saved by ``paddle.jit.save``.

Paddle 3 writes ``NAME.json`` (a PIR program) + ``NAME.pdiparams``; Paddle 2 wrote
``NAME.pdmodel`` + ``NAME.pdiparams``. ``source`` is the graph file; its weights lie beside
it under the same name. The source model runs through Paddle Inference (``paddle.inference``),
which reads both kinds. The batch axis is whatever ``InputSpec`` the model was saved with:
``None`` gives a dynamic one; a fixed one (``[1, C, H, W]``) converts too, and testprio then
runs it (and the source, for parity) that many samples at a time.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np
import paddle
import paddle2onnx

from testprio.convert.worker import OPSET, SAVE_LINES, describe
from testprio.errors import TestprioError

SAVE_LINE = SAVE_LINES["paddle_json"]


def params_path(graph: str) -> str:
    """``NAME.pdiparams`` beside the graph file ``NAME.json`` or ``NAME.pdmodel``."""
    return os.path.splitext(graph)[0] + ".pdiparams"


def convert(
    source: str,
    target: str,
    input_shape: tuple[int, ...] | None,
    *,
    fmt: str,
    pool_shape: tuple[int, ...] | None = None,
    source_name: str = "",
) -> dict:
    """Write ``target`` from a Paddle inference model; return the facts.

    Paddle inference models carry their input spec, so ``input_shape`` is not needed.
    """
    source_name = source_name or source
    try:
        paddle2onnx.export(
            source,
            params_path(source),
            target,
            opset_version=OPSET,
            auto_upgrade_opset=False,
            enable_onnx_checker=False,  # testprio checks every model itself
            verbose=False,
        )
    except Exception as exc:  # paddle2onnx raises plain Exceptions from its C++ core
        raise TestprioError(
            f"paddle2onnx could not convert model {source_name} ({describe(exc)}); check that "
            f"the files are complete and save them again with {SAVE_LINE}."
        ) from None
    if not os.path.exists(target):
        raise TestprioError(
            f"paddle2onnx wrote no ONNX model for {source_name} (it may use an operator that "
            f"paddle2onnx cannot convert to opset {OPSET}; its log names it); convert it to "
            "ONNX yourself and pass the .onnx file."
        )
    return {
        "converter": "paddle2onnx",
        "converter_version": paddle2onnx.__version__,
        "framework": "paddle",
        "framework_version": paddle.__version__,
        "opset": OPSET,
    }


@functools.lru_cache(maxsize=2)
def _predictor(source: str, source_name: str) -> Any:
    from paddle import inference

    config = inference.Config(source, params_path(source))
    config.disable_gpu()
    config.disable_glog_info()
    try:
        return inference.create_predictor(config)
    except Exception as exc:  # Paddle's C++ errors
        raise TestprioError(
            f"Paddle Inference could not load model {source_name} ({describe(exc)}); save it "
            f"again with {SAVE_LINE}."
        ) from None


def run_source(source: str, x: np.ndarray, *, fmt: str, source_name: str = "") -> list:
    """The Paddle model's own outputs for ``x``, in fetch order (the ONNX output order)."""
    predictor = _predictor(source, source_name or source)
    (input_name,) = predictor.get_input_names()
    handle = predictor.get_input_handle(input_name)
    handle.reshape(list(x.shape))
    handle.copy_from_cpu(np.ascontiguousarray(x))
    predictor.run()
    return [
        predictor.get_output_handle(name).copy_to_cpu() for name in predictor.get_output_names()
    ]
