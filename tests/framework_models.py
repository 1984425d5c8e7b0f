"""Tiny seeded models saved by TensorFlow/Keras and PaddlePaddle, for the converter tests.

TensorFlow and Paddle crash when imported into one process, and the test process imports
neither: each builder runs in a child process of its own::

    python -m tests.framework_models keras OUT_DIR POOL.npy  # also a trained Sequential
    python -m tests.framework_models paddle OUT_DIR POOL.npy [--fixed-batch]

Each writes its model files into OUT_DIR and ``reference.npy``: the framework's own class
outputs on the samples of POOL.npy, which the tests compare the ONNX conversion against.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

CLASSES = 10
REPO = Path(__file__).resolve().parent.parent


def build(kind: str, out: Path, pool: Path, *extra: str, env: dict | None = None) -> Path:
    """Run one builder in a child process (from the test process); returns ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "tests.framework_models", kind, str(out), str(pool), *extra],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    return out


def keras_models(out: Path, x: np.ndarray) -> None:
    """A small CNN on (8, 8, 1) images (NHWC), softmax output: .keras, .h5 and SavedModel."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1), name="image")
    hidden = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    hidden = keras.layers.Flatten()(hidden)
    outputs = keras.layers.Dense(CLASSES, activation="softmax", name="probabilities")(hidden)
    model = keras.Model(inputs, outputs)
    model.save(out / "model.keras")
    model.save(out / "model.h5")
    model.export(out / "saved_model", verbose=False)
    np.save(out / "reference.npy", model(x, training=False).numpy())
    sequential_model(out, x)


def sequential_model(out: Path, x: np.ndarray) -> None:
    """A Keras 3 Sequential CNN trained for one epoch on seeded random data, as users save
    one: ``sequential.keras``, ``sequential.h5`` and ``sequential_reference.npy``."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(CLASSES, activation="softmax"),
        ]
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    train_x = rng.uniform(0, 1, (64, 8, 8, 1)).astype(np.float32)
    model.fit(train_x, rng.integers(0, CLASSES, 64), epochs=1, batch_size=16, verbose=0)
    model.save(out / "sequential.keras")
    model.save(out / "sequential.h5")
    np.save(out / "sequential_reference.npy", model(x, training=False).numpy())


def paddle_model(out: Path, x: np.ndarray, *, fixed_batch: bool = False) -> None:
    """A small CNN on (1, 8, 8) images with logits output, saved by paddle.jit.save.

    Paddle 3 writes ``inference.json``; with ``FLAGS_enable_pir_api=0`` in the environment
    it writes the older ``inference.pdmodel``.
    """
    import paddle

    class PaddleCnn(paddle.nn.Layer):
        def __init__(self):
            super().__init__()
            self.conv = paddle.nn.Conv2D(1, 4, 3, padding=1)
            self.fc = paddle.nn.Linear(4 * 8 * 8, CLASSES)

        def forward(self, x):
            return self.fc(paddle.flatten(paddle.nn.functional.relu(self.conv(x)), 1))

    paddle.seed(0)
    layer = PaddleCnn()
    layer.eval()
    batch = 1 if fixed_batch else None
    spec = [paddle.static.InputSpec([batch, 1, 8, 8], "float32", "image")]
    paddle.jit.save(layer, str(out / "inference"), input_spec=spec)
    np.save(out / "reference.npy", layer(paddle.to_tensor(x)).numpy())


def main(argv: list[str]) -> int:
    kind, out, pool = argv[0], Path(argv[1]), np.load(argv[2])
    out.mkdir(parents=True, exist_ok=True)
    if kind == "keras":
        keras_models(out, pool)
    else:
        paddle_model(out, pool, fixed_batch="--fixed-batch" in argv)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
