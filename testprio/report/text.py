"""Values as display text: literal Markdown, byte sizes, durations, JSON values on one line."""

from __future__ import annotations

import re
import string
from typing import Any

# CommonMark lets a backslash escape any ASCII punctuation character, and an escaped one is
# always literal text. Escaping all of them (not a hand-picked few) covers links, HTML,
# emphasis, Streamlit's :color[...] and $math$. GFM autolinks are not stopped by escapes:
# remark-gfm finds http://, www. and e-mail addresses in the parsed text, so an invisible
# WORD JOINER (U+2060) goes where those patterns need two characters to touch.
_MARKDOWN_PUNCTUATION = frozenset(string.punctuation)
_AUTOLINK_JOINTS = re.compile(r"(?i)(?<=www)(?=\.)|(?=@)|(?<=[a-z])(?=:)")
WORD_JOINER = "\u2060"


def md_escape(text: Any) -> str:
    """``text`` shown literally by any CommonMark/GFM renderer (Streamlit's Markdown):
    every ASCII punctuation character backslash-escaped, line breaks as spaces, and
    invisible word joiners where a URL or e-mail address would become a link."""
    flat = _AUTOLINK_JOINTS.sub(WORD_JOINER, " ".join(str(text).splitlines()))
    return "".join("\\" + char if char in _MARKDOWN_PUNCTUATION else char for char in flat)


def format_bytes(size: float | None) -> str:
    if size is None:
        return ""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def as_text(value: Any) -> str:
    """A JSON value of model.json or report.json on one line (``yes``/``no``, 6 digits)."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dict):
        return ", ".join(f"{key}: {as_text(item)}" for key, item in value.items())
    if isinstance(value, list):
        return ", ".join(as_text(item) for item in value)
    return "" if value is None else str(value)


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(seconds, 60)
    if minutes < 60:
        return f"{int(minutes)} min {rest:.0f} s"
    hours, minutes = divmod(minutes, 60)
    return f"{int(hours)} h {int(minutes)} min"
