"""Small real classifiers exported to ONNX for the activation and coverage tests."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx


def small_cnn():
    """A seeded CNN whose activations are modules, so forward hooks can record them."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(6 * 4 * 4, 16),
        nn.ReLU(),
        nn.Linear(16, 3),
    ).eval()


def export_torch(module, example: np.ndarray, path: Path) -> onnx.ModelProto:
    """Export with a dynamic batch axis (input ``input``, output ``logits``)."""
    import torch

    # The TorchScript exporter is fast and gives readable names; its deprecation is noise.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            module,
            (torch.from_numpy(example),),
            str(path),
            dynamo=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
        )
    return onnx.load(str(path))


def sklearn_mlp(seed: int = 0):
    """A two-hidden-layer MLP on 5 features and its skl2onnx export (label, probabilities)."""
    import skl2onnx
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(120, 5)).astype(np.float32)
    y = (x[:, 0] > 0).astype(int) + (x[:, 1] > 0)
    with warnings.catch_warnings():
        # A few hundred iterations give distinct activations; convergence does not matter.
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = MLPClassifier((8, 6), max_iter=300, random_state=seed).fit(x, y)
    return clf, x, skl2onnx.to_onnx(clf, x[:1], options={"zipmap": False})
