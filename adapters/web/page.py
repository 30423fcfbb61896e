"""The chat page in the browser's language.

index.html is a Jinja2 template whose texts are `_("...")` calls; the texts app.js shows
(status lines, progress, tags) are its `gettext(...)` / `ngettext(...)` calls, found by the
same Babel extractor `make messages` uses, and put into the page as JSON for i18n.js. So the
page and the bot share one catalog per language, and a text added to app.js needs no list
kept by hand.
"""

from __future__ import annotations

import functools
import io
from importlib import resources
from typing import Any

import jinja2
from babel.messages.extract import DEFAULT_KEYWORDS, extract

from bot.i18n import Texts

SCRIPTS = ("app.js",)  # the page's scripts that show texts


@functools.cache
def script_messages() -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """(msgids, (singular, plural) pairs) of the texts the page's scripts show."""
    singles: dict[str, None] = {}
    plurals: dict[tuple[str, str], None] = {}
    folder = resources.files("adapters.web") / "static"
    for name in SCRIPTS:
        source = io.BytesIO((folder / name).read_bytes())
        for _line, message, _comments, _context in extract(
            "javascript", source, keywords=DEFAULT_KEYWORDS
        ):
            if isinstance(message, str):
                singles[message] = None
            elif len(message) >= 2 and message[0] and message[1]:
                plurals[(message[0], message[1])] = None
    return tuple(singles), tuple(plurals)


def page_texts(texts: Texts) -> dict[str, Any]:
    """What i18n.js needs: the language, and every script text in it."""
    singles, plurals = script_messages()
    return {
        "lang": texts.language,
        "messages": {message: texts.gettext(message) for message in singles},
        "plurals": {one: texts.plural_forms(one, many) for one, many in plurals},
    }


class PageRenderer:
    def __init__(self, template: str) -> None:
        environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
        self._template = environment.from_string(template)
        self._cache: dict[str, bytes] = {}

    def render(self, texts: Texts) -> bytes:
        """The page for one language (rendered once, then kept: it never changes)."""
        page = self._cache.get(texts.language)
        if page is None:
            page = self._template.render(
                _=texts.gettext, lang=texts.language, texts=page_texts(texts)
            ).encode()
            self._cache[texts.language] = page
        return page
