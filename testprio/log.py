"""Logging set-up shared by the CLI and the components."""

from __future__ import annotations

import logging
import sys

LOGGER_NAME = "testprio"


def get_logger(name: str | None = None) -> logging.Logger:
    return logging.getLogger(LOGGER_NAME if name is None else f"{LOGGER_NAME}.{name}")


def configure(level: int = logging.INFO) -> None:
    """Send testprio's log lines to stderr once, with a recognisable prefix."""
    logger = logging.getLogger(LOGGER_NAME)
    if any(getattr(h, "_testprio", False) for h in logger.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("testprio %(levelname)s %(message)s"))
    handler._testprio = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
