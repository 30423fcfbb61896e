"""Files to plain text with headings, whatever the format, through the formats' own libraries.

Every reader returns a `Document`: a title and a list of `Block`s in reading order. A block
is a heading, or a piece of body text made of *units* the chunker may split between but
never inside: a paragraph's sentences, a list's items, a table's rows (with the header row
kept so a split table still says what its columns are). Markdown is parsed by
markdown-it-py, HTML by selectolax (lexbor) with scripts, styles and page furniture
dropped, PDF by pypdf (its text layer), DOCX by python-docx.

A file that cannot be read raises `Unreadable` with a short reason for `edgeqa kb status`;
no reader lets another exception out (the sync treats any other one the same way anyway).
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from selectolax.lexbor import LexborNode

# pypdf logs its own warnings about a malformed file (several per file); the sync logs one
# line per skipped file, with the reason, instead.
logging.getLogger("pypdf").setLevel(logging.ERROR)

BlockKind = Literal["heading", "text", "list", "table", "code"]

SUFFIXES = {
    ".md": "markdown",
    ".markdown": "markdown",
    ".txt": "text",
    ".text": "text",
    ".html": "html",
    ".htm": "html",
    ".pdf": "pdf",
    ".docx": "docx",
}
"""File name endings read as documents; other files in a source folder are ignored."""


class Unreadable(Exception):
    """This file cannot be indexed; the message says why in a few words."""


@dataclass(frozen=True, slots=True)
class Block:
    kind: BlockKind
    units: tuple[str, ...]  # a heading has one unit, its text
    level: int = 0  # heading level, 1 = top
    header: str = ""  # a table's header row, repeated when the table is split


@dataclass
class Document:
    title: str
    blocks: list[Block] = field(default_factory=list)

    def heading(self, level: int, text: str) -> None:
        text = _clean(text)
        if text:
            self.blocks.append(Block("heading", (text,), level=level))

    def add(self, kind: BlockKind, units: list[str], header: str = "") -> None:
        kept = tuple(u for u in (_clean(u, keep_lines=kind == "code") for u in units) if u)
        if kept:
            self.blocks.append(Block(kind, kept, header=_clean(header)))

    def paragraph(self, text: str) -> None:
        self.add("text", split_sentences(text))

    @property
    def text(self) -> str:
        return "\n".join(u for b in self.blocks for u in b.units)


def read_document(data: bytes, name: str) -> Document:
    """Parse `data`, the bytes of the file called `name` (its suffix picks the format)."""
    kind = SUFFIXES.get(PurePath(name).suffix.lower())
    if kind is None:
        raise Unreadable("not a document format edgeqa reads")
    if not data.strip():
        raise Unreadable("empty file")
    reader: Callable[[bytes], Document] = _READERS[kind]
    try:
        doc = reader(data)
    except Unreadable:
        raise
    except Exception as exc:  # a library's own error on a malformed file
        raise Unreadable(f"cannot parse {kind}: {type(exc).__name__}: {_first_line(exc)}") from exc
    if not any(b.kind != "heading" for b in doc.blocks):
        raise Unreadable("no text found" + (" (no text layer?)" if kind == "pdf" else ""))
    if not doc.title:
        doc.title = PurePath(name).stem
    return doc


def decode_text(data: bytes) -> str:
    """UTF-8 (a BOM allowed) or UTF-16 with a BOM; anything else is not taken for text."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError as exc:
            raise Unreadable("not valid UTF-16 text") from exc
    if b"\x00" in data[:8192]:
        raise Unreadable("binary file, not text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise Unreadable(f"not UTF-8 text (bad byte at {exc.start})") from exc


# --- Markdown and plain text ---------------------------------------------------------------


def read_markdown(data: bytes) -> Document:
    from markdown_it import MarkdownIt

    source = decode_text(data)
    lines = source.splitlines()
    tokens = MarkdownIt("commonmark").enable("table").parse(source)
    doc = Document(title="")

    def span(m: list[int] | None) -> str:
        return "\n".join(lines[m[0] : m[1]]).strip() if m else ""

    for i, tok in enumerate(tokens):
        if tok.level != 0 or tok.nesting == -1:
            continue
        if tok.type == "heading_open":
            text = tokens[i + 1].content
            doc.heading(int(tok.tag[1]), text)
            if not doc.title and text.strip():
                doc.title = _clean(text)
        elif tok.type == "paragraph_open":
            doc.paragraph(tokens[i + 1].content)
        elif tok.type in ("bullet_list_open", "ordered_list_open"):
            items = [span(t.map) for t in _children(tokens, i) if t.type == "list_item_open"]
            doc.add("list", [item for item in items if item])
        elif tok.type == "table_open":
            rows = [span(t.map) for t in _children(tokens, i) if t.type == "tr_open"]
            header, body = (rows[0], rows[1:]) if rows else ("", [])
            doc.add("table", body or [header], header=header if body else "")
        elif tok.type in ("fence", "code_block"):
            doc.add("code", tok.content.split("\n\n"))
        elif tok.map:  # blockquote, html_block, hr...
            doc.paragraph(span(tok.map))
    return doc


def _children(tokens: list, start: int) -> Iterator:  # type: ignore[type-arg]
    """Tokens inside the block opened at `start` (until its matching close)."""
    depth = 0
    for tok in tokens[start:]:
        depth += tok.nesting
        yield tok
        if depth == 0:
            return


_LIST_ITEM = re.compile(r"\s*([-*•]|\d+[.)、])\s*")
_CN_SECTION = re.compile(r"\s*[一二三四五六七八九十]+、\s*\S.{0,30}")
_UNDERLINE = re.compile(r"\s*(=+|-+)\s*")


def read_text(data: bytes) -> Document:
    """Paragraphs at blank lines; an underlined or ALL-CAPS first line is a heading, runs of
    "- " / "1." lines are lists (plain-text handbooks are written that way)."""
    doc = Document(title="")
    for para in re.split(r"\n\s*\n", decode_text(data)):
        lines = [ln for ln in para.splitlines() if ln.strip()]
        if len(lines) > 1 and _UNDERLINE.fullmatch(lines[1]):
            doc.heading(1 if "=" in lines[1] else 2, lines[0])
            lines = lines[2:]
        elif lines and (_is_caps_heading(lines[0]) or _CN_SECTION.fullmatch(lines[0])):
            doc.heading(2, lines[0])
            lines = lines[1:]
        if not doc.title and doc.blocks and doc.blocks[0].kind == "heading":
            doc.title = doc.blocks[0].units[0]
        items: list[str] = []
        prose: list[str] = []
        for line in lines:
            marker = _LIST_ITEM.match(line)
            if marker and marker.end() < len(line):
                if prose:
                    doc.paragraph(" ".join(prose))
                    prose = []
                items.append(line)
            elif items and line[:1].isspace():
                items[-1] += " " + line.strip()
            else:
                if items:
                    doc.add("list", items)
                    items = []
                prose.append(line)
        doc.add("list", items)
        if prose:
            doc.paragraph(" ".join(prose))
    return doc


def _is_caps_heading(line: str) -> bool:
    letters = [c for c in line if c.isalpha()]
    return len(letters) >= 3 and len(line) <= 80 and all(c.isupper() for c in letters)


# --- HTML ----------------------------------------------------------------------------------

_DROP = "script, style, noscript, template, nav, header, footer, aside, form, iframe, svg"
_BLOCKS = "h1, h2, h3, h4, h5, h6, p, ul, ol, dl, table, pre, blockquote"


def read_html(data: bytes) -> Document:
    from selectolax.lexbor import LexborHTMLParser

    tree = LexborHTMLParser(_decode_html(data))
    title_node = tree.css_first("title")
    doc = Document(title=_clean(title_node.text()) if title_node else "")
    for node in tree.css(_DROP):
        node.decompose()
    root = tree.css_first("main") or tree.css_first("article") or tree.body
    if root is None:
        return doc
    blocks = root.css(_BLOCKS)
    ids = {b.mem_id for b in blocks}
    for node in blocks:
        if _nested(node, ids):
            continue
        tag = node.tag
        if tag in ("h1", "h2", "h3", "h4", "h5", "h6"):
            doc.heading(int(tag[1]), node.text(separator=" "))
            if not doc.title:
                doc.title = _clean(node.text(separator=" "))
        elif tag in ("ul", "ol", "dl"):
            doc.add("list", [li.text(separator=" ") for li in node.css("li, dt, dd")])
        elif tag == "table":
            rows = [
                " | ".join(_clean(c.text(separator=" ")) for c in tr.css("th, td"))
                for tr in node.css("tr")
            ]
            header = rows[0] if len(rows) > 1 and node.css_first("th") else ""
            doc.add("table", rows[1:] if header else rows, header=header)
        elif tag == "pre":
            doc.add("code", [node.text()])
        else:
            doc.paragraph(node.text(separator=" "))
    if not any(b.kind != "heading" for b in doc.blocks):  # text loose in <div>s
        doc.paragraph(root.text(separator="\n"))
    return doc


def _nested(node: LexborNode, ids: set[int]) -> bool:
    """Whether a block element sits inside another one (a list in a table...): the outer
    one reads it."""
    parent = node.parent
    while parent is not None:
        if parent.mem_id in ids:
            return True
        parent = parent.parent
    return False


def _decode_html(data: bytes) -> str:
    head = data[:2048].lower()
    match = re.search(rb'charset=["\']?([a-z0-9_-]+)', head)
    if match:
        try:
            return data.decode(match.group(1).decode(), errors="replace")
        except LookupError:
            pass
    return decode_text(data)


# --- PDF and DOCX --------------------------------------------------------------------------


def read_pdf(data: bytes) -> Document:
    from pypdf import PdfReader

    reader = PdfReader(io.BytesIO(data))
    if reader.is_encrypted:
        try:
            opened = reader.decrypt("")
        except Exception as exc:
            raise Unreadable("encrypted PDF") from exc
        if not opened:
            raise Unreadable("encrypted PDF (needs a password)")
    meta = reader.metadata
    doc = Document(title=_clean(str(meta.title)) if meta and meta.title else "")
    for page in reader.pages:
        for para in re.split(r"\n\s*\n", page.extract_text() or ""):
            doc.paragraph(para)
    return doc


def read_docx(data: bytes) -> Document:
    import docx
    from docx.table import Table

    try:
        document = docx.Document(io.BytesIO(data))
    except Exception as exc:
        raise Unreadable(f"not a DOCX file ({type(exc).__name__})") from exc
    doc = Document(title=_clean(document.core_properties.title or ""))
    items: list[str] = []
    for part in document.iter_inner_content():
        style = "" if isinstance(part, Table) else (part.style.name if part.style else "")
        if items and not style.startswith("List"):
            doc.add("list", items)
            items = []
        if isinstance(part, Table):
            rows = [" | ".join(_clean(c.text) for c in row.cells) for row in part.rows]
            doc.add("table", rows[1:] or rows, header=rows[0] if len(rows) > 1 else "")
        elif style == "Title" or style.startswith("Heading"):
            level = int(style.rsplit(" ", 1)[-1]) if style[-1:].isdigit() else 1
            doc.heading(level, part.text)
            doc.title = doc.title or _clean(part.text)
        elif style.startswith("List"):
            items.append(part.text)
        else:
            doc.paragraph(part.text)
    doc.add("list", items)
    return doc


_READERS: dict[str, Callable[[bytes], Document]] = {
    "markdown": read_markdown,
    "text": read_text,
    "html": read_html,
    "pdf": read_pdf,
    "docx": read_docx,
}


# --- Text helpers --------------------------------------------------------------------------

_SENTENCE_END = re.compile(r"(?<=[.!?。！？；;])\s+|(?<=[。！？；])")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def split_sentences(text: str) -> list[str]:
    """A paragraph's sentences (English and Chinese end marks), whitespace folded."""
    return [s for s in _SENTENCE_END.split(_clean(text)) if s.strip()]


def _clean(text: str, *, keep_lines: bool = False) -> str:
    text = _CONTROL.sub("", text)
    if keep_lines:
        return text.strip("\n").rstrip()
    return " ".join(text.split())


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:160]
