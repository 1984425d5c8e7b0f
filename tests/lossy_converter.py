"""A faulty PyTorch converter for the parity tests: testprio's own, then every bias dropped.

Registered in place of ``testprio.convert.CONVERTERS["pytorch"]`` by a test; the convert
stage runs it in its child process like any converter, and the source model still runs
with PyTorch itself, so parity has a real, known difference to find.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from testprio.convert import pytorch


def convert(source, target, input_shape, **options) -> dict:
    facts = pytorch.convert(source, target, input_shape, **options)
    model = onnx.load(target)
    for index, tensor in enumerate(model.graph.initializer):
        if len(tensor.dims) == 1 and "bias" in tensor.name:
            zeros = np.zeros(tensor.dims, numpy_helper.to_array(tensor).dtype)
            model.graph.initializer[index].CopyFrom(numpy_helper.from_array(zeros, tensor.name))
    onnx.save(model, target)
    return {**facts, "converter": "lossy (biases dropped)"}


run_source = pytorch.run_source
