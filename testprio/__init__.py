"""testprio: rank unlabeled inputs by how unsure a classifier is about them.

The public API (``testprio.api``): ``run``, ``evaluate``, ``export_labels``,
``import_labels``, ``push_labels``, ``pull_labels`` and their results ``RunResult`` and
``EvaluationResult``. They are loaded on first use: the component images import
``testprio.*`` modules inside every task container, and this file must not load the
pipeline runner, pandas or ONNX Runtime there.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

__all__ = [
    "EvaluationResult",
    "RunResult",
    "evaluate",
    "export_labels",
    "import_labels",
    "pull_labels",
    "push_labels",
    "run",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("testprio.api"), name)
    raise AttributeError(f"module 'testprio' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
