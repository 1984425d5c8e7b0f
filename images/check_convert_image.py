"""Checks a converter image from inside it: a tiny seeded model saved by the image's own
framework, in each format testprio converts, goes through ``testprio.convert.<framework>``,
and ONNX Runtime's outputs on the result equal the framework's.

    podman run --rm -i --read-only --tmpfs /tmp --user 10001:10001 \\
        ghcr.io/testprio/convert-pytorch:0.1.0 python3 - pytorch < images/check_convert_image.py

One line per format, then ``ok``; exits 1 when a conversion fails or its outputs differ.
It checks what pruning the image (images/prune-venv.sh) could have broken: the framework,
its exporter and the converter module load and run.
"""

from __future__ import annotations

import importlib
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

CLASSES = 3


def pytorch_models(folder: Path) -> dict[str, Path]:
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
        torch.nn.Linear(2 * 8 * 8, CLASSES),
    ).eval()  # fmt: skip
    example = torch.ones(4, 1, 8, 8)
    torch.jit.save(torch.jit.trace(net, example), folder / "model.pt")
    torch.export.save(torch.export.export(net, (example,)), folder / "model.pt2")
    return {"torchscript": folder / "model.pt", "exported_program": folder / "model.pt2"}


def tensorflow_models(folder: Path) -> dict[str, Path]:
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1), name="image")
    hidden = keras.layers.Conv2D(2, 3, padding="same", activation="relu")(inputs)
    outputs = keras.layers.Dense(CLASSES, activation="softmax")(keras.layers.Flatten()(hidden))
    model = keras.Model(inputs, outputs)
    model.save(folder / "model.keras")
    model.export(folder / "saved_model", verbose=False)
    return {"keras": folder / "model.keras", "saved_model": folder / "saved_model"}


def paddle_models(folder: Path) -> dict[str, Path]:
    import paddle

    paddle.seed(0)
    layer = paddle.nn.Sequential(
        paddle.nn.Conv2D(1, 2, 3, padding=1), paddle.nn.ReLU(), paddle.nn.Flatten(),
        paddle.nn.Linear(2 * 8 * 8, CLASSES),
    )  # fmt: skip
    layer.eval()
    spec = [paddle.static.InputSpec([None, 1, 8, 8], "float32", "image")]
    paddle.jit.save(layer, str(folder / "inference"), input_spec=spec)
    return {"paddle_json": folder / "inference.json"}


# Per framework: its saved models, and the per-sample input shape they take.
FRAMEWORKS = {
    "pytorch": (pytorch_models, (1, 8, 8)),
    "tensorflow": (tensorflow_models, (8, 8, 1)),
    "paddle": (paddle_models, (1, 8, 8)),
}


def check(framework: str, folder: Path) -> list[str]:
    build, sample_shape = FRAMEWORKS[framework]
    converter = importlib.import_module(f"testprio.convert.{framework}")
    x = np.random.default_rng(0).normal(0, 1, (5, *sample_shape)).astype(np.float32)
    failures = []
    # Saving writes caches under $HOME (Paddle's dy2static), read-only in a task's container;
    # converting must not need it, and runs with $HOME as it is.
    home = os.environ.get("HOME")
    os.environ["HOME"] = str(folder)
    try:
        sources = build(folder)
    finally:
        if home is not None:
            os.environ["HOME"] = home
    for fmt, source in sources.items():
        target = folder / f"{fmt}.onnx"
        try:
            converter.convert(str(source), str(target), sample_shape, fmt=fmt)
            session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
            onnx_out = session.run(None, {session.get_inputs()[0].name: x})[0]
            expected = converter.run_source(str(source), x, fmt=fmt)
            expected = np.asarray(
                next(iter(expected.values())) if isinstance(expected, dict) else expected[0]
            )
            difference = float(np.abs(onnx_out - expected).max())
        except Exception as exc:  # report every format, then fail
            failures.append(f"{fmt}: {type(exc).__name__}: {exc}")
            print(f"{fmt}: FAILED: {type(exc).__name__}: {exc}")
            continue
        verdict = "ok" if onnx_out.shape == (5, CLASSES) and difference < 1e-4 else "FAILED"
        print(f"{fmt}: {verdict} (output {onnx_out.shape}, max difference {difference:.2g})")
        if verdict != "ok":
            failures.append(fmt)
    return failures


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in FRAMEWORKS:
        print(f"usage: check_convert_image.py {{{','.join(FRAMEWORKS)}}}")
        return 2
    with tempfile.TemporaryDirectory() as folder:
        failures = check(argv[0], Path(folder))
    print("ok" if not failures else "failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
