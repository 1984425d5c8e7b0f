"""Small real models and labeled digits for the evaluate and retrain tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HIDDEN = 32


def digits(seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """scikit-learn's digits split (seeded) into train 600, pool 400, test 400:
    ``(x (N,1,8,8) float32 in [0,1], y (N,) int64)``."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.images.astype(np.float32) / 16).reshape(-1, 1, 8, 8)
    y = data.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    parts = {"train": order[:600], "pool": order[600:1000], "test": order[1000:1400]}
    return {name: (x[rows], y[rows]) for name, rows in parts.items()}


def mlp_weights(x: np.ndarray, y: np.ndarray, *, seed: int = 0, ridge: float = 30.0):
    """A random ReLU layer (64 -> 32) and a ridge-regression head on it: ``W1, b1, W2, b2``.

    A large ``ridge`` keeps the head weak, so that the pool keeps mistakes to find."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.6, (64, HIDDEN)).astype(np.float32)
    b1 = rng.normal(0, 0.1, HIDDEN).astype(np.float32)
    features = np.maximum(x.reshape(len(x), -1) @ w1 + b1, 0)
    targets = np.eye(10)[y]
    w2 = np.linalg.solve(features.T @ features + ridge * np.eye(HIDDEN), features.T @ targets)
    return w1, b1, w2.astype(np.float32), np.zeros(10, np.float32)


def save_mlp(path: Path, weights, *, softmax: bool = False, head: str = "gemm") -> Path:
    """``Flatten -> Gemm -> Relu -> (Gemm | MatMul+Add | Mul) [-> Softmax]`` as ONNX.

    ``head="mul"`` ends in an element-wise Mul: a model without a linear head."""
    w1, b1, w2, b2 = weights
    nodes = [
        helper.make_node("Flatten", ["input"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "W1", "b1"], ["pre"]),
        helper.make_node("Relu", ["pre"], ["hidden"]),
    ]
    initializers = {"W1": w1, "b1": b1, "W2": w2, "b2": b2}
    if head == "gemm":
        nodes.append(helper.make_node("Gemm", ["hidden", "W2", "b2"], ["logits"]))
    elif head == "matmul":
        nodes += [
            helper.make_node("MatMul", ["hidden", "W2"], ["mm"]),
            helper.make_node("Add", ["mm", "b2"], ["logits"]),
        ]
    else:
        nodes += [
            helper.make_node("MatMul", ["hidden", "W2"], ["mm"]),
            helper.make_node("Mul", ["mm", "scale"], ["logits"]),
        ]
        initializers["scale"] = np.full(10, 2.0, np.float32)
    out = "logits"
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1))
        out = "probabilities"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", 10])],
        initializer=[numpy_helper.from_array(v, k) for k, v in initializers.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def save_splits(folder: Path, splits: dict) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, (x, y) in splits.items():
        paths[name] = folder / f"{name}.npz"
        np.savez(paths[name], x=x, y=y)
    return paths


def tiny_digits(seed: int = 0, *, layout: str = "NCHW") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A small split of :func:`digits` for whole-model fine-tuning tests: train 200, pool
    100, test 100; ``layout="NHWC"`` gives ``(N, 8, 8, 1)`` samples, as Keras CNNs take."""
    splits = digits(seed)
    sizes = {"train": 200, "pool": 100, "test": 100}
    small = {name: (x[: sizes[name]], y[: sizes[name]]) for name, (x, y) in splits.items()}
    if layout == "NHWC":
        small = {name: (x.transpose(0, 2, 3, 1).copy(), y) for name, (x, y) in small.items()}
    return small


def build_in_child(kind: str, out: Path) -> Path:
    """Run ``python -m tests.evalkit KIND OUT`` (TensorFlow never enters the test process:
    TF and Paddle crash when imported into one). Returns ``out``."""
    import os
    import subprocess
    import sys

    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "tests.evalkit", kind, str(out)],
        cwd=Path(__file__).resolve().parent.parent,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    return out


def keras_sequential(out: Path) -> Path:
    """A Keras Sequential CNN (Input, Conv2D, Flatten, Dense softmax) fit one epoch on
    :func:`tiny_digits` (NHWC, seeded), saved as ``out/model.keras``."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    x, y = tiny_digits(layout="NHWC")["train"]
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    model.save(out / "model.keras")
    return out / "model.keras"


BUILDERS = {"keras": keras_sequential}


if __name__ == "__main__":
    import sys

    BUILDERS[sys.argv[1]](Path(sys.argv[2]))
