"""Logging set-up shared by the CLI and the components."""

from __future__ import annotations

import logging
import sys
import time

from testprio.redact import redact_text

LOGGER_NAME = "testprio"


def get_logger(name: str | None = None) -> logging.Logger:
    return logging.getLogger(LOGGER_NAME if name is None else f"{LOGGER_NAME}.{name}")


# Long work logs how far it got at most this often (and once at the end).
PROGRESS_SECONDS = 5.0


class Progress:
    """Logs ``{prefix} done/total {unit}`` on ``logger`` at most every ``PROGRESS_SECONDS``,
    and when told it is the last update."""

    def __init__(self, logger: logging.Logger, prefix: str, unit: str, total: int | None):
        self.logger, self.prefix, self.unit, self.total = logger, prefix, unit, total
        self.last = time.monotonic()

    def update(self, done: int, final: bool = False) -> None:
        now = time.monotonic()
        if final or now - self.last >= PROGRESS_SECONDS:
            self.last = now
            total = f"/{self.total:,}" if self.total is not None else ""
            self.logger.info("%s %s%s %s", self.prefix, f"{done:,}", total, self.unit)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a line is logged, not when it was set up:
    a notebook or a test harness may swap stderr after the first run."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


class _RedactingFormatter(logging.Formatter):
    """Formats a line, then drops the secrets of every URL in it (message, arguments and
    traceback alike): task logs end up in KFP, terminals and CI logs."""

    def format(self, record: logging.LogRecord) -> str:
        return redact_text(super().format(record))


def configure(level: int = logging.INFO) -> None:
    """Send testprio's log lines to stderr once, with a recognisable prefix."""
    logger = logging.getLogger(LOGGER_NAME)
    if any(getattr(h, "_testprio", False) for h in logger.handlers):
        return
    handler = _StderrHandler()
    handler.setFormatter(_RedactingFormatter("testprio %(levelname)s %(message)s"))
    handler._testprio = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
