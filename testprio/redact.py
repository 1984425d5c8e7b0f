"""URLs without the secrets they may carry, in anything testprio shows or records.

``redact_url`` shortens one URL; ``redact_text`` every URL-like part of a sentence, log line
or recorded value. Error sentences (``TestprioError``), testprio's log lines, run.json and
the lines ``testprio run`` passes on from its tasks all go through ``redact_text``.
"""

from __future__ import annotations

import contextlib
import re
import urllib.parse
from typing import Any

# ``scheme://`` and what follows up to a space, a quote or an angle bracket. Punctuation at
# the end (``.``, ``,``, ``)``...) belongs to the sentence around the URL, not to it.
_URL = re.compile(r"(?<![A-Za-z0-9+.-])[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>`]*")
_TRAILING = ".,;:!?)]}"
# A URL that opens a quoted value ('...' or "...", as KFP's argument lines and JSON quote
# them) runs to the closing quote: a literal space in its query belongs to it.
_QUOTED_URL = re.compile(r"""(['"])([A-Za-z][A-Za-z0-9+.-]*://[^'"\n]*)\1""")
# gs:// object names may hold '?' and '#': they are part of the name there, not a query.
_NAME_SCHEMES = frozenset({"gs"})


def redact_url(uri: str) -> str:
    """``uri`` as it may be recorded (run.json, logs, reports, error sentences).

    Any scheme: without ``user:password@``, query string and fragment, because signed URLs
    carry their secrets there (``X-Goog-Signature``, ``X-Amz-Signature``, ``sig``,
    ``token``...); the whole query goes, as no list of secret names is complete. ``gs://``
    URIs lose only ``user:password@`` (no bucket name holds one): their object names may
    hold ``?`` and ``#``. Local paths (no ``://``) are returned unchanged.
    """
    if not uri or "://" not in uri:
        return uri
    scheme = uri.split("://", 1)[0].lower()
    try:
        parts = urllib.parse.urlsplit(uri)
        host = parts.hostname or ""
    except ValueError:
        return f"{scheme}://(an unparsable URL)"
    if ":" in host:  # IPv6
        host = f"[{host}]"
    with contextlib.suppress(ValueError):  # a malformed port is left out
        if parts.port:
            host = f"{host}:{parts.port}"
    if scheme in _NAME_SCHEMES:
        rest = uri.split("://", 1)[1]
        netloc, slash, path = rest.partition("/")
        return f"{scheme}://{netloc.rpartition('@')[2]}{slash}{path}"
    return f"{scheme}://{host}{parts.path}"


def _redact_match(match: re.Match) -> str:
    text = match.group(0)
    stripped = text.rstrip(_TRAILING)
    return redact_url(stripped) + text[len(stripped) :]


def _redact_quoted(match: re.Match) -> str:
    quote = match.group(1)
    return quote + redact_url(match.group(2)) + quote


def redact_text(text: str) -> str:
    """``text`` with every URL-like part (``scheme://...``) shown as ``redact_url`` shows it.

    A URL ends at a space, a quote or an angle bracket, except where it opens a quoted
    value: there it runs to the closing quote (a query with a literal space, quoted by KFP's
    argument lines or JSON, goes whole)."""
    if "://" not in text:
        return text
    return _URL.sub(_redact_match, _QUOTED_URL.sub(_redact_quoted, text))


def redact_value(value: Any) -> Any:
    """A JSON-like value (dicts, lists, text) with every text in it redacted."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {key: redact_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [redact_value(item) for item in value]
    return value
