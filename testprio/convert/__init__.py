"""Convert: the user's model -> ``model/model.onnx`` + ``model/model.json``.

The stage is ``testprio.convert.stage``; its names (``convert``, ``detect``,
``resolve_framework``, ``CONVERTERS``, ...) are re-exported here on first use. They are not
imported eagerly because importing ``testprio.convert.worker``, the child process that
loads PyTorch, TensorFlow or Paddle, runs this file first: it must not also load ONNX
Runtime, Arrow and the ingest helpers into that process.
"""

from __future__ import annotations

import importlib
from typing import Any


def _stage():
    return importlib.import_module("testprio.convert.stage")


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)
    try:
        return getattr(_stage(), name)
    except AttributeError:
        raise AttributeError(f"module 'testprio.convert' has no attribute '{name}'") from None


def __dir__() -> list[str]:
    return sorted({*globals(), *(n for n in dir(_stage()) if not n.startswith("_"))})
