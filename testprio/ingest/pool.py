"""What a source reader hands the ingest stage: a pool of samples, read in order.

Two kinds of pool:

- an **array pool** (``.npy``, ``.npz``, Parquet, CSV) yields ``Chunk``s of stacked samples;
- a **file pool** (an image folder) lists its files up front and decodes one file at a time
  (``load``), so that ingest can decode in parallel and quarantine a file that fails.

A sample that cannot be used is never dropped: the reader reports it with a reason and the
ingest stage lists it in ``data/quarantine.parquet`` under its own ``sample_id``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np


class BadSample(Exception):
    """One sample cannot be used; the message is the quarantine reason (short, lower case)."""


@dataclass
class Chunk:
    """Consecutive samples of an array pool.

    ``x``: ``(n, *sample_shape)`` numeric array; rows listed in ``bad`` hold arbitrary values.
    ``y``: ``(n,)`` numeric labels (NaN = unknown) or None when the pool has no labels.
    ``sources``: one text per sample saying where it came from (None: ``name[index]``).
    ``bad``: position in this chunk -> quarantine reason, for samples the reader could not use.
    """

    x: np.ndarray
    y: np.ndarray | None = None
    sources: list[str] | None = None
    bad: dict[int, str] | None = None


@dataclass
class ArrayPool:
    """Samples stored as arrays: shape up front, then chunks of ``rows`` samples in order.

    ``count`` is None when it is only known after reading (CSV).
    """

    name: str
    count: int | None
    sample_shape: tuple[int, ...]
    has_labels: bool
    read_chunks: Callable[[int], Iterator[Chunk]]
    class_names: list[str] | None = None


@dataclass
class FilePool:
    """Samples stored one per file (an image folder).

    ``files``: paths relative to ``root`` in sample order; ``labels``: one class index per file
    (None for a flat folder); ``load(path)`` returns the decoded sample as a numeric array
    (``(H, W)`` or ``(H, W, C)`` uint8 for images) or raises ``BadSample``.
    """

    name: str
    root: str
    files: list[str]
    labels: list[int] | None
    class_names: list[str] | None
    load: Callable[[str], np.ndarray]

    @property
    def count(self) -> int:
        return len(self.files)

    @property
    def has_labels(self) -> bool:
        return self.labels is not None
