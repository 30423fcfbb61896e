"""The model's Markdown -> Telegram's small HTML dialect, for the final text of an answer.

Telegram accepts only a handful of tags (b, i, s, u, code, pre, a, blockquote) and rejects a
whole message over one unbalanced tag or a stray "<". So the Markdown is parsed (markdown-it,
CommonMark: unbalanced "**" stays literal text) and the HTML is written from the token stream,
never by regex on the source: every text run is escaped, every tag opened is closed, lists and
headings (which Telegram lacks) become plain lines. Streaming updates stay plain text; only the
final text goes through here, and the adapter falls back to plain text if Telegram still
refuses it.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence

from markdown_it import MarkdownIt
from markdown_it.token import Token

from bot.grounding import SOURCES_LABEL
from bot.types import Source

_md = MarkdownIt("commonmark", {"html": False}).enable(["strikethrough", "table"])

_INLINE_TAGS = {
    "strong_open": "<b>",
    "strong_close": "</b>",
    "em_open": "<i>",
    "em_close": "</i>",
    "s_open": "<s>",
    "s_close": "</s>",
    "link_close": "</a>",
}
_LINK_SCHEMES = ("http://", "https://", "mailto:")
_LANGUAGE = re.compile(r"^[\w#+.-]{1,32}$")
_TAG = re.compile(r"<[^>]*>")
MAX_TITLE = 120  # characters of a source's title in the footer


def escape(text: str) -> str:
    """Escape the three characters Telegram's HTML parser cares about in text."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _attr(value: str) -> str:
    return escape(value).replace('"', "&quot;")


def visible_text(rendered: str) -> str:
    """What Telegram shows (and counts against its 4,096 limit) for a rendered message."""
    return html.unescape(_TAG.sub("", rendered))


def _linkable(href: str) -> bool:
    """Web and mail links only: a tg://user?id=… link in an answer would mention (and
    notify) that user, and other schemes open apps; the model's text must do neither."""
    return href.lower().startswith(_LINK_SCHEMES)


def _inline(tokens: Sequence[Token]) -> str:
    out: list[str] = []
    links: list[bool] = []  # per open link: was it written as <a>?
    for tok in tokens:
        if tok.type == "text":
            out.append(escape(tok.content))
        elif tok.type in ("softbreak", "hardbreak"):
            out.append("\n")
        elif tok.type == "code_inline":
            out.append(f"<code>{escape(tok.content)}</code>")
        elif tok.type == "link_open":
            href = str(tok.attrGet("href") or "")
            links.append(_linkable(href))
            if links[-1]:
                out.append(f'<a href="{_attr(href)}">')
        elif tok.type == "link_close":
            if links.pop():
                out.append("</a>")
        elif tok.type == "image":
            # Telegram cannot show an inline image in text: keep it as a link to it.
            alt = escape(tok.content or "image")
            src = str(tok.attrGet("src") or "")
            linked = not links and _linkable(src)
            out.append(f'<a href="{_attr(src)}">{alt}</a>' if linked else alt)
        elif tok.type in _INLINE_TAGS:
            out.append(_INLINE_TAGS[tok.type])
        else:  # html_inline cannot occur (html disabled); anything new: keep its text
            out.append(escape(tok.content))
    return "".join(out)


class _Writer:
    """Collects rendered blocks and decides the blank lines between them."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.lists: list[list[int]] = []  # per open list: [ordered?, next number]
        self.prefix = ""  # bullet waiting for the first block of a list item
        self.quote_depth = 0
        self.after_open = False  # nothing written since <blockquote>
        self.last_in_list = False

    def block(self, content: str) -> None:
        in_list = bool(self.lists)
        if self.parts and not self.after_open:
            self.parts.append("\n" if in_list and self.last_in_list else "\n\n")
        if self.prefix:
            content = self.prefix + content
            self.prefix = ""
        elif in_list:  # a further paragraph of the same item: indent under the bullet
            content = "  " * len(self.lists) + content
        self.parts.append(content)
        self.after_open = False
        self.last_in_list = in_list

    def raw(self, tag: str) -> None:
        self.parts.append(tag)


def sources_footer(sources: Sequence[Source]) -> str:
    """An answer's sources as Telegram HTML: web links as <a href>, the title alone for
    anything else (a document without a URL, or a scheme that is not http(s))."""
    items = []
    for source in sources:
        title = escape(_one_line(source.title or source.location))
        if source.url.lower().startswith(("http://", "https://")):
            items.append(f'[{source.number}] <a href="{_attr(source.url)}">{title}</a>')
        else:
            items.append(f"[{source.number}] {title}")
    return f"{escape(SOURCES_LABEL)} " + " · ".join(items) if items else ""


def plain_sources(sources: Sequence[Source]) -> str:
    """The footer without markup, for when Telegram refuses the HTML."""
    items = [
        f"[{s.number}] {_one_line(s.title or s.location)}" + (f" ({s.url})" if s.url else "")
        for s in sources
    ]
    return f"{SOURCES_LABEL} " + " · ".join(items) if items else ""


def _one_line(text: str) -> str:
    return " ".join(text.split())[:MAX_TITLE]


def render(markdown: str) -> str:
    """Render `markdown` as Telegram HTML (parse_mode="HTML")."""
    tokens = _md.parse(markdown)
    lines = markdown.splitlines()
    w = _Writer()
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        kind = tok.type
        if kind == "inline":
            w.block(_inline(tok.children or []))
        elif kind == "heading_open":
            w.block(f"<b>{_inline(tokens[i + 1].children or [])}</b>")
            i += 2  # inline + heading_close
        elif kind in ("fence", "code_block"):
            code = escape(tok.content.rstrip("\n"))
            language = tok.info.strip().split(" ")[0] if kind == "fence" else ""
            if language and _LANGUAGE.match(language):
                w.block(f'<pre><code class="language-{language}">{code}</code></pre>')
            else:
                w.block(f"<pre>{code}</pre>")
        elif kind in ("bullet_list_open", "ordered_list_open"):
            start = int(tok.attrGet("start") or 1) if kind == "ordered_list_open" else 0
            w.lists.append([int(kind == "ordered_list_open"), start])
        elif kind in ("bullet_list_close", "ordered_list_close"):
            w.lists.pop()
            if not w.lists:
                w.last_in_list = False  # a blank line after a whole list
        elif kind == "list_item_open":
            ordered, number = w.lists[-1]
            indent = "  " * (len(w.lists) - 1)
            w.prefix = f"{indent}{number}. " if ordered else f"{indent}• "
            w.lists[-1][1] = number + 1
        elif kind == "blockquote_open":
            # Telegram does not nest blockquotes: only the outermost becomes one.
            if w.quote_depth == 0:
                w.block("<blockquote>")
                w.after_open = True
            w.quote_depth += 1
        elif kind == "blockquote_close":
            w.quote_depth -= 1
            if w.quote_depth == 0:
                w.raw("</blockquote>")
        elif kind == "hr":
            w.block("———")
        elif kind == "table_open":
            # No tables in Telegram: show the source as preformatted text, columns intact.
            start, end = tok.map or (0, 0)
            w.block(f"<pre>{escape(chr(10).join(lines[start:end]))}</pre>")
            while i < len(tokens) and tokens[i].type != "table_close":
                i += 1
        i += 1
    return "".join(w.parts).strip()
