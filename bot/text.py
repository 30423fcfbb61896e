"""Making text safe to store, tokenize and echo, without changing what it says.

PostgreSQL refuses NUL in text, and a lone UTF-16 surrogate (which a Python str can hold,
e.g. from a JSON "\\ud83d" escape) cannot be encoded as UTF-8 by either database driver.
Either would fail the whole transaction and lose the turn. `storable` is that rule alone,
applied by storage to everything it writes (the same on SQLite and PostgreSQL, so the two
backends return identical text); `clean_text` adds what the bot does to a user's input.
"""

from __future__ import annotations

import re

# C0 controls and DEL, except tab and newline.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def storable(text: str) -> str:
    """`text` without NUL, valid surrogate pairs joined into their character and lone
    surrogates made U+FFFD; unchanged (the same object) when already fine."""
    if "\x00" in text:
        text = text.replace("\x00", "")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # UTF-16 with surrogatepass pairs up valid halves; decoding replaces lone ones.
        text = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return text


def clean_text(text: str) -> str:
    """A user's input as the bot reads it: `storable`, newlines normalised and control
    characters dropped. Zero-width, RTL and emoji are kept."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return storable(_CONTROL.sub("", text))
