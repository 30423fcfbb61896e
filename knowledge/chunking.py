"""Documents to chunks that keep meaning together, sized in the chat model's tokens.

A chunk never spans two sections: every heading starts a new one, and each chunk carries
its heading path ("Travel Policy > Flights"), so a passage says where it comes from even
when its own text does not. Inside a section, whole blocks (paragraphs, lists, tables) are
packed up to `target` tokens; a block bigger than that is split between its units
(sentences, list items, table rows; a split table repeats its header row), never inside
one. Only a single unit longer than twice the target (a run-on line, a giant cell) is cut,
at spaces, so a chunk never grows past what the prompt budget expects.

Sizes are in the chat model's own tokens because that is what the passage costs in the
prompt; the counter must treat "<|im_end|>" in a document as plain text (llm/tokens.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from knowledge.readers import Block, Document

Counter = Callable[[str], int]


@dataclass(frozen=True, slots=True)
class Chunk:
    heading: str  # heading path inside the document, "" before the first heading
    text: str
    tokens: int


def chunk_document(doc: Document, count: Counter, target: int) -> list[Chunk]:
    """Split `doc` into chunks of at most about `target` tokens each."""
    chunks: list[Chunk] = []
    path: list[tuple[int, str]] = []
    pending: list[str] = []  # rendered pieces of the chunk being filled
    used = 0

    def flush() -> None:
        nonlocal pending, used
        if pending:
            text = "\n\n".join(pending)
            chunks.append(Chunk(" > ".join(t for _, t in path), text, count(text)))
        pending, used = [], 0

    for block in doc.blocks:
        if block.kind == "heading":
            flush()
            while path and path[-1][0] >= block.level:
                path.pop()
            path.append((block.level, block.units[0]))
            continue
        for piece in _pieces(block, count, target):
            size = count(piece)
            if pending and used + size > target:
                flush()
            pending.append(piece)
            used += size
    flush()
    return chunks


def _pieces(block: Block, count: Counter, target: int) -> list[str]:
    """The block rendered whole if it fits, else in runs of whole units that fit."""
    joiner = " " if block.kind == "text" else "\n"
    header = [block.header] if block.header else []
    whole = joiner.join([*header, *block.units])
    if count(whole) <= target:
        return [whole]
    room = target - (count(block.header) if block.header else 0)
    pieces: list[str] = []
    run: list[str] = []
    used = 0
    for unit in block.units:
        for part in _cut(unit, count, max(room, target // 2)):
            size = count(part)
            if run and used + size > room:
                pieces.append(joiner.join([*header, *run]))
                run, used = [], 0
            run.append(part)
            used += size
    if run:
        pieces.append(joiner.join([*header, *run]))
    return pieces


def _cut(unit: str, count: Counter, target: int) -> list[str]:
    """A unit as it is, unless it is over twice the target: then cut at spaces (or, for
    text without spaces such as Chinese, at characters) into target-sized parts."""
    size = count(unit)
    if size <= 2 * target:
        return [unit]
    words = unit.split(" ") if " " in unit.strip() else list(unit)
    sep = " " if " " in unit.strip() else ""
    per_word = size / max(len(words), 1)
    step = max(1, int(target / per_word))
    return [sep.join(words[i : i + step]) for i in range(0, len(words), step)]
