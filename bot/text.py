"""Making user text safe to store, tokenize and echo, without changing what it says."""

from __future__ import annotations

import re

# C0 controls and DEL, except tab and newline; NUL breaks PostgreSQL text and C strings.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def clean_text(text: str) -> str:
    """Drop control characters, turn lone UTF-16 surrogates (which cannot be encoded as
    UTF-8) into U+FFFD, normalise newlines. Zero-width, RTL and emoji are kept."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    if any("\ud800" <= ch <= "\udfff" for ch in text):
        text = "".join("\ufffd" if "\ud800" <= ch <= "\udfff" else ch for ch in text)
    return text
