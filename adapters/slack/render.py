"""Text conversions between the model's Markdown and Slack's own markup ("mrkdwn").

Slack does not render Markdown in `text`: `**bold**` shows its asterisks, `[a](b)` stays
literal and a stray `<` or `&` can swallow the rest of a message. The model writes Markdown,
so the final text of an answer is rendered here; text still streaming is only escaped
(half-written Markdown would render wrongly anyway). In the other direction, a user's
message arrives in mrkdwn (`<@U123>`, `&amp;`) and is turned back into plain text for the
prompt.

Rendering changes only style, never the characters a reader sees. Slack has no escape for
its style markers and styles only whole words: `2*3*4` (emphasis inside a word to
CommonMark) is left as written, not turned into `2_3_4` that Slack would show with its
underscores; and a literal `*` or `_` that Slack could take for a marker (`\\*not bold\\*`)
gets a zero-width space before it, so it is shown as typed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from markdown_it import MarkdownIt
from markdown_it.tree import SyntaxTreeNode

from bot.grounding import SOURCES_LABEL
from bot.types import Source

_MD = MarkdownIt("commonmark", {"html": False}).enable(["strikethrough", "table"])

_LINK_SCHEMES = ("http://", "https://", "mailto:")
_MARKERS = "*_~`"  # Slack's style markers
_STYLES = {"strong": "*", "em": "_", "s": "~"}
NOBREAK = "\u200b"  # zero-width space: keeps a literal marker from opening a style


MAX_TITLE = 120  # characters of a source's title in the footer


def escape(text: str) -> str:
    """Slack's three control characters; everything else is literal."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def unescape(text: str) -> str:
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def to_mrkdwn(markdown: str) -> str:
    """Render Markdown (CommonMark + strikethrough + tables) as Slack mrkdwn."""
    root = SyntaxTreeNode(_MD.parse(markdown))
    return _blocks(root.children, tight=False).strip("\n")


def _blocks(nodes: list[SyntaxTreeNode], *, tight: bool) -> str:
    parts = [_block(node, tight=tight) for node in nodes]
    return ("\n" if tight else "\n\n").join(part for part in parts if part)


def _block(node: SyntaxTreeNode, *, tight: bool) -> str:
    kind = node.type
    if kind == "paragraph":
        return _inlines(node.children)
    if kind == "heading":
        return f"*{_inlines(node.children)}*"
    if kind in ("fence", "code_block"):
        return "```\n" + escape(node.content.rstrip("\n")) + "\n```"
    if kind == "blockquote":
        inner = _blocks(node.children, tight=False)
        return "\n".join("> " + line if line else ">" for line in inner.split("\n"))
    if kind in ("bullet_list", "ordered_list"):
        return _list(node)
    if kind == "hr":
        return "──────────"
    if kind == "table":
        return _table(node)
    if kind == "html_block":
        return escape(node.content.rstrip("\n"))
    return _blocks(node.children, tight=tight)


def _list(node: SyntaxTreeNode) -> str:
    ordered = node.type == "ordered_list"
    number = int(str(node.attrs.get("start", 1))) if ordered else 0
    items = []
    # A tight list's paragraphs are hidden: its items are lines, not paragraphs.
    tight = all(
        child.hidden
        for item in node.children
        for child in item.children
        if child.type == "paragraph"
    )
    for item in node.children:
        body = _blocks(item.children, tight=tight)
        marker = f"{number}. " if ordered else "• "
        number += 1
        pad = " " * len(marker)
        lines = body.split("\n") if body else [""]
        items.append(
            "\n".join([marker + lines[0]] + [pad + line if line else "" for line in lines[1:]])
        )
    return ("\n" if tight else "\n\n").join(items)


def _table(node: SyntaxTreeNode) -> str:
    """Slack has no tables; a monospaced block keeps the columns readable."""
    rows: list[list[str]] = []
    for section in node.children:
        for row in section.children:
            rows.append([_plain(cell) for cell in row.children])
    widths = [max(len(row[i]) for row in rows if i < len(row)) for i in range(len(rows[0]))]
    lines = [
        " | ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows
    ]
    if len(lines) > 1:
        lines.insert(1, "-+-".join("-" * width for width in widths))
    return "```\n" + escape("\n".join(lines)) + "\n```"


def _plain(node: SyntaxTreeNode) -> str:
    if node.type in ("text", "code_inline"):
        return node.content
    return "".join(_plain(child) for child in node.children)


def _inlines(nodes: list[SyntaxTreeNode], before: str = "") -> str:
    """Inline nodes as mrkdwn; `before` is the character written just before them."""
    out = ""
    for i, node in enumerate(nodes):
        last = out[-1:] if out else before
        if node.type == "text":
            piece = _literal(node.content, last)
        elif node.type in _STYLES:
            piece = _styled(node, last, _first_char(nodes[i + 1 :]))
        elif node.type == "inline":
            piece = _inlines(node.children, last)
        else:
            piece = _inline(node)
        out += piece
    return out


def _literal(text: str, before: str) -> str:
    """Plain text, with a zero-width space before each marker Slack could read as a style
    (one not glued to a letter or digit before it)."""
    out = []
    for ch in escape(text):
        if ch in _MARKERS and not _word(before):
            out.append(NOBREAK)
        out.append(ch)
        before = ch
    return "".join(out)


def _styled(node: SyntaxTreeNode, before: str, after: str) -> str:
    """Bold, italic or struck text: Slack's markers where Slack styles them (at word
    edges), else the characters as written, which Slack then shows as they are."""
    if _word(before) or _word(after):
        marker = node.markup
        inner = _inlines(node.children, marker[-1:])
        return f"{marker}{inner}{marker}"
    marker = _STYLES[node.type]
    return f"{marker}{_inlines(node.children, marker)}{marker}"


def _word(ch: str) -> bool:
    return ch.isalnum() or ch == NOBREAK


def _first_char(nodes: list[SyntaxTreeNode]) -> str:
    for node in nodes:
        if node.type in ("softbreak", "hardbreak"):
            return "\n"
        if text := _plain(node):
            return text[0]
    return ""


def _inline(node: SyntaxTreeNode) -> str:
    kind = node.type
    if kind == "inline":
        return _inlines(node.children)
    if kind in ("text", "html_inline"):
        return escape(node.content)
    if kind == "code_inline":
        return f"`{escape(node.content)}`"
    if kind in ("softbreak", "hardbreak"):
        return "\n"
    if kind in _STYLES:
        return _styled(node, "", "")
    if kind == "link":
        href = str(node.attrs.get("href", ""))
        label = _inlines(node.children)
        if not href.startswith(_LINK_SCHEMES):
            return label
        if node.markup == "autolink" or label == escape(href):
            return f"<{_url(href)}>"
        return f"<{_url(href)}|{label.replace('|', '¦')}>"
    if kind == "image":
        src = str(node.attrs.get("src", ""))
        alt = _plain(node) or src
        return f"<{_url(src)}|{escape(alt)}>" if src.startswith(_LINK_SCHEMES) else escape(alt)
    return _inlines(node.children)


def _url(href: str) -> str:
    return escape(href).replace("|", "%7C")


def sources_footer(sources: Sequence[Source]) -> str:
    """An answer's sources as mrkdwn: "[1] <url|title>" for web links, the title alone
    otherwise. In a link's label `|` would end the label and `<`, `>`, `&` are Slack's
    control characters, so they are escaped (| as ¦, which reads the same)."""
    items = []
    for source in sources:
        title = escape(_one_line(source.title or source.location)).replace("|", "¦")
        url = source.url
        if url.lower().startswith(("http://", "https://")):
            items.append(f"[{source.number}] <{_url(url)}|{title}>")
        else:
            items.append(f"[{source.number}] {title}")
    return f"{SOURCES_LABEL} " + " · ".join(items) if items else ""


def _one_line(text: str) -> str:
    return " ".join(text.split())[:MAX_TITLE]


# -- incoming ------------------------------------------------------------------------------

_MENTION = re.compile(r"<@([UW][A-Z0-9]+)(?:\|[^>]*)?>")
_CHANNEL = re.compile(r"<#([CG][A-Z0-9]+)(?:\|([^>]*))?>")
_SPECIAL = re.compile(r"<!(here|channel|everyone)(?:\|[^>]*)?>")
_SUBTEAM = re.compile(r"<!subteam\^[A-Z0-9]+(?:\|([^>]*))?>")
_LINK = re.compile(r"<((?:https?|mailto):[^|>]+)(?:\|([^>]*))?>")


def mentions(text: str, user_id: str) -> bool:
    return any(match.group(1) == user_id for match in _MENTION.finditer(text))


def to_plain(text: str, bot_user_id: str) -> str:
    """A user's mrkdwn as plain text, with the bot's own mention removed."""
    if bot_user_id:
        own = re.compile(rf"[ \t]*<@{re.escape(bot_user_id)}(?:\|[^>]*)?>[ \t]*")
        text = own.sub(" ", text)
    text = _MENTION.sub(lambda m: f"@{m.group(1)}", text)
    text = _CHANNEL.sub(lambda m: f"#{m.group(2) or m.group(1)}", text)
    text = _SPECIAL.sub(lambda m: f"@{m.group(1)}", text)
    text = _SUBTEAM.sub(lambda m: m.group(1) or "@group", text)
    text = _LINK.sub(lambda m: _link_text(m.group(1), m.group(2)), text)
    return unescape(text).strip()


def _link_text(url: str, label: str | None) -> str:
    if not label or label == url or url.endswith("//" + label) or url == "mailto:" + label:
        return url.removeprefix("mailto:") if url.startswith("mailto:") else url
    return f"{label} ({url})"
