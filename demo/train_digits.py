"""Train a small CNN on scikit-learn's 8x8 digits and export it to ONNX for the testprio demo.

The data set is split (seeded) into a training half and an "unlabeled pool" half. The model is
deliberately trained only briefly so that some pool samples stay misclassified, which is what makes
test-prioritisation metrics such as APFD meaningful on the pool.

Outputs written to ``--out``:

* ``model.onnx``         -- self-contained ONNX model, input ``input`` (N,1,8,8) float32,
                            output ``logits`` (N,10), dynamic batch dimension.
* ``pool.npz``           -- ``x`` (N,1,8,8) float32 in [0, 1] and ``y`` (N,) int64 labels.
* ``pool_unlabeled.npy`` -- ``x`` only.

Usage::

    python demo/train_digits.py --out DIR [--seed 0] [--epochs 10]
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from sklearn.datasets import load_digits
from torch import nn

DEFAULT_EPOCHS = 10
BATCH_SIZE = 64
LEARNING_RATE = 1e-3
NUM_CLASSES = 10
# Tracing batch size; > 1 sidesteps torch.export's 0/1 size specialisation of the batch dim.
EXPORT_EXAMPLE_BATCH = 4
OPSET_VERSION = 18

Split = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def set_determinism(seed: int) -> None:
    """Seed torch and force deterministic kernels on a fixed number of threads."""
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(2)


def load_split(seed: int = 0) -> Split:
    """Return ``(x_train, y_train, x_pool, y_pool)``; images are float32 (N,1,8,8) in [0, 1]."""
    digits = load_digits()
    x = (digits.images.astype(np.float32) / np.float32(16.0)).reshape(-1, 1, 8, 8)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    half = len(x) // 2
    train_idx, pool_idx = order[:half], order[half:]
    return (
        np.ascontiguousarray(x[train_idx]),
        np.ascontiguousarray(y[train_idx]),
        np.ascontiguousarray(x[pool_idx]),
        np.ascontiguousarray(y[pool_idx]),
    )


def build_model() -> nn.Module:
    """Small CNN for 1x8x8 inputs producing 10 logits."""
    return nn.Sequential(
        nn.Conv2d(1, 16, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 64),
        nn.ReLU(),
        nn.Linear(64, NUM_CLASSES),
    )


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, *, epochs: int, seed: int) -> nn.Module:
    """Train ``model`` in place with Adam and mini-batches; prints one line per epoch."""
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    # A dedicated generator keeps the batch order independent of any other torch RNG use.
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for epoch in range(1, epochs + 1):
        perm = torch.randperm(len(xt), generator=gen)
        total_loss, correct = 0.0, 0
        for start in range(0, len(xt), BATCH_SIZE):
            idx = perm[start : start + BATCH_SIZE]
            logits = model(xt[idx])
            loss = loss_fn(logits, yt[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(idx)
            correct += int((logits.argmax(dim=1) == yt[idx]).sum())
        print(
            f"epoch {epoch}/{epochs}: loss {total_loss / len(xt):.4f}, "
            f"train acc {correct / len(xt):.4f}"
        )
    model.eval()
    return model


@torch.no_grad()
def predict_logits(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """Logits of ``model`` (in eval mode) for a float32 (N,1,8,8) array."""
    model.eval()
    return model(torch.from_numpy(x)).numpy()


def _inline_external_data(path: Path) -> None:
    """Rewrite ``path`` with all tensors stored inside the .onnx file, deleting sidecar files."""
    # Locations must be read before loading the data: loading strips the external-data entries.
    header = onnx.load(str(path), load_external_data=False)
    sidecars = {
        entry.value
        for tensor in header.graph.initializer
        if onnx.external_data_helper.uses_external_data(tensor)
        for entry in tensor.external_data
        if entry.key == "location"
    }
    if not sidecars:
        return
    proto = onnx.load(str(path), load_external_data=True)
    onnx.external_data_helper.convert_model_from_external_data(proto)
    onnx.save_model(proto, str(path), save_as_external_data=False)
    for name in sidecars:
        (path.parent / name).unlink(missing_ok=True)


def export_onnx(model: nn.Module, path: Path) -> Path:
    """Export ``model`` to a self-contained ONNX file with a dynamic batch dimension."""
    model.eval()
    example = torch.zeros(EXPORT_EXAMPLE_BATCH, 1, 8, 8)
    batch = torch.export.Dim("batch", min=1)
    # The exporter logs a warning per missing torchvision op and torch emits a pytree
    # FutureWarning; both are irrelevant here and would only clutter the demo output.
    registration_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    previous_level = registration_log.level
    registration_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.onnx.export(
                model,
                (example,),
                str(path),
                input_names=["input"],
                output_names=["logits"],
                dynamic_shapes=({0: batch},),
                opset_version=OPSET_VERSION,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
    finally:
        registration_log.setLevel(previous_level)
    # Safety net: the dynamo exporter writes a model.onnx.data sidecar (even for tiny models)
    # unless external_data=False is honoured; the file must be self-contained.
    _inline_external_data(path)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    return path


def verify_onnx(path: Path, x: np.ndarray, torch_logits: np.ndarray) -> None:
    """Check ONNX Runtime reproduces the torch logits and accepts batches of 1 and 7."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    onnx_logits = session.run(["logits"], {"input": x})[0]
    np.testing.assert_allclose(onnx_logits, torch_logits, rtol=1e-4, atol=1e-5)
    for size in (1, 7):
        out = session.run(["logits"], {"input": x[:size]})[0]
        assert out.shape == (size, NUM_CLASSES), out.shape
        np.testing.assert_allclose(out, torch_logits[:size], rtol=1e-4, atol=1e-5)


def train_and_export(
    out_dir: Path, *, seed: int = 0, epochs: int = DEFAULT_EPOCHS
) -> dict[str, Path | float | int]:
    """Train on the seeded split, export the model and pool, and return paths and metrics."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    set_determinism(seed)
    x_train, y_train, x_pool, y_pool = load_split(seed)

    model = train(build_model(), x_train, y_train, epochs=epochs, seed=seed)
    pool_logits = predict_logits(model, x_pool)
    pool_accuracy = float((pool_logits.argmax(axis=1) == y_pool).mean())

    model_path = export_onnx(model, out_dir / "model.onnx")
    verify_onnx(model_path, x_pool, pool_logits)

    pool_path = out_dir / "pool.npz"
    # Uncompressed on purpose; np.savez uses a fixed zip member timestamp, so the bytes are
    # reproducible for a given seed.
    np.savez(pool_path, x=x_pool, y=y_pool)
    np.save(out_dir / "pool_unlabeled.npy", x_pool)

    return {
        "model": model_path,
        "pool": pool_path,
        "pool_accuracy": pool_accuracy,
        "train_size": len(x_train),
        "pool_size": len(x_pool),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--seed", type=int, default=0, help="split / training seed")
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help="training epochs")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    result = train_and_export(args.out, seed=args.seed, epochs=args.epochs)
    print(f"pool size: {result['pool_size']} (train size: {result['train_size']})")
    print(f"pool accuracy: {result['pool_accuracy']:.4f}")
    print(f"wrote {result['model']}")
    print(f"wrote {result['pool']}")
    print(f"wrote {args.out / 'pool_unlabeled.npy'}")
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
