"""Which ranks an export holds: ``--top-k K`` or ``--ranks A-B`` as a ``RankRange``."""

from __future__ import annotations

import re
from dataclasses import dataclass

from testprio.errors import TestprioError


@dataclass(frozen=True)
class RankRange:
    """Ranks ``first``..``last`` (1-based, inclusive; ``last`` None: to the end)."""

    first: int = 1
    last: int | None = None

    def __str__(self) -> str:
        return f"{self.first}-{'' if self.last is None else self.last}"


_RANKS_PATTERN = re.compile(r"^\s*(\d+)\s*(?:-|\.\.)\s*(\d+)\s*$")


def parse_ranks(text: str) -> RankRange:
    """``"A-B"`` or ``"A..B"`` -> ranks A to B inclusive, 1 <= A <= B."""
    match = _RANKS_PATTERN.match(str(text))
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        raise TestprioError(
            f"--ranks '{text}' is not a range of ranks; write FIRST-LAST with "
            "1 <= FIRST <= LAST, e.g. 1-100."
        )
    return RankRange(int(match[1]), int(match[2]))


def rank_range(*, top_k: int | None = None, ranks: str | RankRange | None = None) -> RankRange:
    """The ranks to export: ``--top-k K`` (1..K) or ``--ranks A-B``, not both."""
    if top_k is not None and ranks is not None:
        raise TestprioError("give --top-k or --ranks, not both.")
    if ranks is not None:
        return ranks if isinstance(ranks, RankRange) else parse_ranks(ranks)
    if top_k is None:
        raise TestprioError("say which samples to export: --top-k K or --ranks A-B.")
    if top_k <= 0:
        raise TestprioError(f"--top-k {top_k} must be a positive number of samples.")
    return RankRange(1, top_k)
