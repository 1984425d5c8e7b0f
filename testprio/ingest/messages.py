"""How sources name things in error sentences and records.

URLs without the secrets they may carry (``redact_url``), exceptions cut to one short line
(``short``): shared by the local, gs://, http(s) and archive sources and the image reader.
"""

from __future__ import annotations

import contextlib
import urllib.parse


def redact_url(uri: str) -> str:
    """``uri`` as it may be recorded (run.json, logs, reports, error sentences).

    For http(s) URLs: without ``user:password@``, query string and fragment, because signed
    URLs carry their secrets there (``X-Goog-Signature``, ``X-Amz-Signature``, ``sig``,
    ``token``...); the whole query goes, as no list of secret names is complete. Local paths
    and ``gs://`` URIs (whose object names may hold ``?`` or ``#``) are returned unchanged.
    """
    if not uri or "://" not in uri:
        return uri
    scheme = uri.split("://", 1)[0].lower()
    if scheme not in ("http", "https"):
        return uri
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
    return urllib.parse.urlunsplit((parts.scheme.lower(), host, parts.path, "", ""))


def short(value: object, limit: int = 120) -> str:
    text = str(value).strip().splitlines()[0] if str(value).strip() else type(value).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
