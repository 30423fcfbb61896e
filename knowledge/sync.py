"""One sync pass: read what changed, drop what is gone, never starve the chat.

A file is read again only when its size or modification time changed, and re-indexed only
when its content hash (sha256 of the bytes) or the index's signature (embedding model,
chunk size) changed; a touched but identical file costs one hash. Each document is written
in its own transaction (knowledge/index.py), so a pass killed at any point (kill -9
included) leaves a consistent index and the next pass picks up where it stopped: the files
it had not reached still look changed.

Parsing, chunking and embedding run in worker threads, document by document, and before
each document and each embedding batch the pass waits while the chat engine is writing
answers (`busy`), at most `MAX_PAUSE` seconds at a time so a bot that is never idle still
gets its documents indexed. bench/kb_sync.py measures what a pass costs an answer.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from knowledge import index
from knowledge.chunking import Chunk, chunk_document
from knowledge.readers import Unreadable, read_document
from knowledge.sources import FoundFile, Problem, scan_sources
from llm.embeddings import Embedder
from llm.tokens import TextCounter

log = logging.getLogger(__name__)

EMBED_BATCH = 4
"""Chunks per embedding call: small, so a question's own embedding never waits long."""
MAX_PAUSE = 5.0
"""Longest wait for the chat engine to go idle before indexing one more step anyway."""
IDLE_POLL = 0.05

Progress = Callable[[int, int, str], None]
"""progress(files done, files to look at, current location)"""


@dataclass
class SyncReport:
    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    failed: int = 0
    chunks: int = 0  # chunks written by this pass
    seconds: float = 0.0
    problems: list[tuple[str, str]] = field(default_factory=list)  # (location, reason)

    def counts(self) -> dict[str, int]:
        return {
            "added": self.added,
            "updated": self.updated,
            "removed": self.removed,
            "unchanged": self.unchanged,
            "failed": self.failed,
        }


@dataclass
class SyncContext:
    db: AsyncEngine
    sources: list[Any]
    max_bytes: int
    chunk_tokens: int
    count_tokens: TextCounter
    embedder: Embedder | None
    busy: Callable[[], bool] | None

    @property
    def signature(self) -> str:
        model = self.embedder.name if self.embedder is not None else ""
        return f"{model};chunk={self.chunk_tokens}"


async def run_sync(ctx: SyncContext, progress: Progress | None = None) -> SyncReport:
    started = time.monotonic()
    report = SyncReport()
    sync_id = await index.start_sync(ctx.db)
    scan = await asyncio.to_thread(scan_sources, ctx.sources, ctx.max_bytes)
    problems: list[Problem] = list(scan.problems)
    stored = await index.stored_documents(ctx.db)
    seen: set[tuple[str, str]] = set()
    total = len(scan.files)
    for done, found in enumerate(scan.files):
        if progress is not None:
            progress(done, total, found.location)
        key = (found.source.path, found.location)
        seen.add(key)
        old = stored.get(key)
        if (
            old is not None
            and old.size == found.size
            and old.mtime_ns == found.mtime_ns
            and old.signature == ctx.signature
        ):
            report.unchanged += 1
            continue
        await _wait_idle(ctx)
        try:
            outcome = await _index_file(ctx, found, old)
        except Unreadable as exc:
            problems.append(Problem(found.source.path, found.location, str(exc)))
            log.warning("knowledge: skipping %s: %s", found.path, exc)
            report.failed += 1
            continue
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            problems.append(Problem(found.source.path, found.location, reason))
            log.warning("knowledge: skipping %s: %s", found.path, reason)
            report.failed += 1
            continue
        if outcome < 0:
            report.unchanged += 1
        else:
            report.chunks += outcome
            if old is None:
                report.added += 1
            else:
                report.updated += 1
    if progress is not None:
        progress(total, total, "")
    gone = [
        doc.id
        for key, doc in stored.items()
        if key not in seen and key[0] not in scan.missing_sources and not _failed(key, problems)
    ]
    await index.delete_documents(ctx.db, gone)
    report.removed = len(gone)
    report.problems = [(p.location if p.location != "." else p.source, p.reason) for p in problems]
    await index.finish_sync(
        ctx.db, sync_id, report.counts(), [(p.source, p.location, p.reason) for p in problems]
    )
    report.seconds = time.monotonic() - started
    return report


def _failed(key: tuple[str, str], problems: list[Problem]) -> bool:
    """A file that exists but could not be read this time keeps its old version."""
    return any((p.source, p.location) == key for p in problems)


async def _index_file(ctx: SyncContext, found: FoundFile, old: index.Stored | None) -> int:
    """Index one file; the number of chunks written, or -1 when its content is unchanged."""
    data = await asyncio.to_thread(found.path.read_bytes)
    digest = hashlib.sha256(data).hexdigest()
    if old is not None and old.content_hash == digest and old.signature == ctx.signature:
        await index.touch_document(ctx.db, old.id, found.size, found.mtime_ns)
        return -1
    doc, chunks = await asyncio.to_thread(_parse, data, found, ctx)
    vectors = await _embed(ctx, doc.title, chunks)
    url = found.source.url_prefix + found.location if found.source.url_prefix else ""
    new = index.NewDocument(
        source=found.source.path,
        location=found.location,
        collection=found.source.collection,
        title=doc.title,
        url=url,
        content_hash=digest,
        size=found.size,
        mtime_ns=found.mtime_ns,
        signature=ctx.signature,
    )
    try:
        await index.write_document(ctx.db, new, chunks, vectors)
    except IntegrityError:  # another process indexed the same file at the same moment
        log.info("knowledge: %s was indexed by another process", found.location)
    return len(chunks)


def _parse(data: bytes, found: FoundFile, ctx: SyncContext) -> tuple[Any, list[Chunk]]:
    doc = read_document(data, found.path.name)
    chunks = chunk_document(doc, ctx.count_tokens, ctx.chunk_tokens)
    if not chunks:
        raise Unreadable("no text found")
    return doc, chunks


async def _embed(ctx: SyncContext, title: str, chunks: list[Chunk]) -> np.ndarray[Any, Any] | None:
    embedder = ctx.embedder
    if embedder is None:
        return None
    texts = [embedding_text(title, c) for c in chunks]
    parts = []
    for start in range(0, len(texts), EMBED_BATCH):
        await _wait_idle(ctx)
        parts.append(await asyncio.to_thread(embedder.embed, texts[start : start + EMBED_BATCH]))
    return np.concatenate(parts)


def embedding_text(title: str, chunk: Chunk) -> str:
    """The chunk as embedded: title and heading path first, they say what it is about."""
    heading = chunk.heading
    head = heading if heading.startswith(title) else " > ".join(p for p in (title, heading) if p)
    return f"{head}\n{chunk.text}" if head else chunk.text


async def _wait_idle(ctx: SyncContext) -> None:
    """Let answers being written have the CPU (up to MAX_PAUSE), then go on."""
    if ctx.busy is None:
        return
    deadline = time.monotonic() + MAX_PAUSE
    # The engine keeps a count of answers in flight, not an event to wait on.
    while ctx.busy() and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(IDLE_POLL)
