"""Copying downloaded bytes within the download limit (``--max-data-gb``).

One ``ByteBudget`` counts every byte a pool's download writes, across the threads that
fetch a gs:// prefix, or the body of an http(s) response.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import BinaryIO

from testprio.errors import TestprioError

DEFAULT_MAX_DOWNLOAD_BYTES = 20 * 2**30
COPY_BLOCK_BYTES = 1 << 20


class ByteBudget:
    """Bytes written so far against a limit; thread-safe. ``overflow`` builds the error."""

    def __init__(self, limit: int, overflow: Callable[[], TestprioError]):
        self.limit = limit
        self.used = 0
        self._overflow = overflow
        self._lock = threading.Lock()

    def take(self, count: int) -> None:
        with self._lock:
            self.used += count
            if self.used > self.limit:
                raise self._overflow()


def copy_within(source: BinaryIO, path: str, budget: ByteBudget) -> int:
    written = 0
    with open(path, "wb") as target:
        while block := source.read(COPY_BLOCK_BYTES):
            budget.take(len(block))
            target.write(block)
            written += len(block)
    return written


def too_large(what: str, limit: int) -> Callable[[], TestprioError]:
    return lambda: TestprioError(
        f"{what} is larger than the download limit of {limit:,} bytes; raise it with "
        "--max-data-gb or give a smaller pool."
    )
