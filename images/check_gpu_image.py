"""Checks the runtime-gpu image's ONNX Runtime from inside it: the CUDA execution provider is
built in, and a session asked for CUDA first runs, on the GPU where one is visible, else on
the CPU (ONNX Runtime's fallback) instead of failing.

    podman run --rm -i IMAGE python3 - < images/check_gpu_image.py            # any machine
    podman run --rm -i --device nvidia.com/gpu=all IMAGE python3 - --gpu < ...  # a GPU node

Prints what it found, one ``key: value`` line each, and exits 1 when a check fails. Needs
only the image's own packages (numpy, onnx, onnxruntime): the model is built here.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def tiny_classifier() -> bytes:
    """``softmax(input @ weight)``: input ``(N, 4)`` float32, output ``(N, 3)``."""
    weight = helper.make_tensor(
        "weight", TensorProto.FLOAT, [4, 3], np.arange(12, dtype=np.float32) / 12
    )
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["input", "weight"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 3])],
        initializer=[weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu", action="store_true", help="fail unless CUDA runs the session")
    args = parser.parse_args(argv)

    available = ort.get_available_providers()
    print(f"onnxruntime: {ort.__version__} ({ort.get_device()})")
    print(f"available: {available}")
    session = ort.InferenceSession(tiny_classifier(), providers=[CUDA, CPU])
    used = session.get_providers()
    print(f"used: {used}")
    batch = np.ones((2, 4), dtype=np.float32)
    (probs,) = session.run(None, {"input": batch})
    print(f"output: {probs.shape} rows sum to {probs.sum(axis=1).round(6).tolist()}")

    failures = []
    if CUDA not in available:
        failures.append(f"{CUDA} is not built into this onnxruntime")
    if args.gpu and used[0] != CUDA:
        failures.append(f"the session runs on {used[0]}, not on the GPU")
    if probs.shape != (2, 3) or not np.allclose(probs.sum(axis=1), 1, atol=1e-5):
        failures.append("the session's output is wrong")
    for failure in failures:
        print(f"FAILED: {failure}")
    print("ok" if not failures else "failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
