"""How sources name things in error sentences and records.

URLs without the secrets they may carry (``redact_url``, from ``testprio.redact``),
exceptions cut to one short line (``short``): shared by the local, gs://, http(s) and
archive sources and the image reader.
"""

from __future__ import annotations

from testprio.redact import redact_url

__all__ = ["redact_url", "short"]


def short(value: object, limit: int = 120) -> str:
    text = str(value).strip().splitlines()[0] if str(value).strip() else type(value).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
