"""Make any string a chat user can produce storable in both databases.

PostgreSQL refuses NUL (U+0000) in text, and a lone UTF-16 surrogate (which a Python str can
hold, e.g. from a JSON "\\ud83d" escape) cannot be encoded as UTF-8 by either driver. Either
would make the whole transaction fail and the turn be lost, so both are dealt with before
anything is written: NUL is removed (it is invisible in every chat client anyway), a valid
surrogate pair is joined into its character and a lone surrogate becomes U+FFFD. The same
rule on SQLite and PostgreSQL keeps the two backends returning identical text.
"""

from __future__ import annotations


def clean_text(value: str) -> str:
    """`value` without NUL and with surrogates made valid; unchanged when already fine."""
    if "\x00" in value:
        value = value.replace("\x00", "")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        # UTF-16 with surrogatepass pairs up valid halves; decoding replaces lone ones.
        value = value.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return value
