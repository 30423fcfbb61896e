"""The index's SQL: writing documents and their chunks, keyword search, loading vectors.

One document is written in one transaction (its old chunks deleted, the new ones inserted,
the keyword index kept in step by triggers on SQLite and a generated column on
PostgreSQL), so a sync killed at any point leaves each file either fully old or fully new.

Keyword search runs in the database: SQLite FTS5 ranked by bm25(), PostgreSQL full text
ranked by ts_rank_cd(). Both are asked for any of the question's words (an OR query; an
AND query finds nothing as soon as the question has one word the document does not).
Alongside the ranking, `term_hits` tells which of the question's words each candidate
contains and how many chunks contain each word, from which retrieval computes how much of
the question a chunk covers (knowledge/search.py).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import (
    ColumnElement,
    Select,
    delete,
    func,
    insert,
    literal_column,
    select,
    text,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from knowledge.chunking import Chunk
from knowledge.segment import segment
from storage.tables import kb_chunks, kb_documents, kb_problems, kb_syncs


@dataclass(frozen=True, slots=True)
class Stored:
    """What the index holds about one file, to decide whether to read it again."""

    id: int
    content_hash: str
    size: int
    mtime_ns: int
    signature: str


@dataclass(frozen=True, slots=True)
class NewDocument:
    source: str
    location: str
    collection: str
    title: str
    url: str
    content_hash: str
    size: int
    mtime_ns: int
    signature: str


def document_key(source: str, location: str) -> str:
    return hashlib.sha256(f"{source}\0{location}".encode()).hexdigest()


async def stored_documents(engine: AsyncEngine) -> dict[tuple[str, str], Stored]:
    """Every indexed file by (source, location)."""
    d = kb_documents.c
    query = select(
        d.id, d.source, d.location, d.content_hash, d.size, d.mtime_ns, d.embedding_model
    )
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    return {
        (r.source, r.location): Stored(r.id, r.content_hash, r.size, r.mtime_ns, r.embedding_model)
        for r in rows
    }


async def write_document(
    engine: AsyncEngine,
    doc: NewDocument,
    chunks: Sequence[Chunk],
    vectors: np.ndarray[Any, Any] | None,
) -> None:
    """Replace the file's document and chunks, in one transaction."""
    key = document_key(doc.source, doc.location)
    async with engine.begin() as conn:
        await conn.execute(delete(kb_documents).where(kb_documents.c.key == key))
        doc_id = (
            await conn.execute(
                insert(kb_documents)
                .values(
                    key=key,
                    source=doc.source,
                    location=doc.location,
                    collection=doc.collection,
                    title=doc.title,
                    url=doc.url,
                    content_hash=doc.content_hash,
                    size=doc.size,
                    mtime_ns=doc.mtime_ns,
                    embedding_model=doc.signature,
                    chunk_count=len(chunks),
                    indexed_at=datetime.now(UTC),
                )
                .returning(kb_documents.c.id)
            )
        ).scalar_one()
        if chunks:
            await conn.execute(
                insert(kb_chunks),
                [
                    {
                        "document_id": doc_id,
                        "ordinal": i,
                        "heading": c.heading,
                        "text": c.text,
                        "search_text": search_text(doc.title, c),
                        "tokens": c.tokens,
                        "embedding": (
                            vectors[i].astype(np.float32).tobytes() if vectors is not None else None
                        ),
                    }
                    for i, c in enumerate(chunks)
                ],
            )


def search_text(title: str, chunk: Chunk) -> str:
    """What the keyword index sees: title, heading path and text, CJK segmented."""
    return segment(f"{title}\n{chunk.heading}\n{chunk.text}")


async def touch_document(engine: AsyncEngine, doc_id: int, size: int, mtime_ns: int) -> None:
    """Same content, new timestamp (a `touch`, a copy): remember it, read nothing."""
    async with engine.begin() as conn:
        await conn.execute(
            update(kb_documents)
            .where(kb_documents.c.id == doc_id)
            .values(size=size, mtime_ns=mtime_ns)
        )


async def delete_documents(engine: AsyncEngine, ids: Sequence[int]) -> None:
    for start in range(0, len(ids), 200):
        async with engine.begin() as conn:
            await conn.execute(
                delete(kb_documents).where(kb_documents.c.id.in_(ids[start : start + 200]))
            )


# --- Sync bookkeeping ---------------------------------------------------------------------


async def start_sync(engine: AsyncEngine) -> int:
    async with engine.begin() as conn:
        new = (
            await conn.execute(
                insert(kb_syncs)
                .values(
                    started_at=datetime.now(UTC),
                    added=0,
                    updated=0,
                    removed=0,
                    unchanged=0,
                    failed=0,
                )
                .returning(kb_syncs.c.id)
            )
        ).scalar_one()
    return int(new)


async def finish_sync(
    engine: AsyncEngine,
    sync_id: int,
    counts: dict[str, int],
    problems: Sequence[tuple[str, str, str]],
) -> None:
    """Record the pass and replace the list of skipped files with this pass's."""
    now = datetime.now(UTC)
    async with engine.begin() as conn:
        await conn.execute(
            update(kb_syncs).where(kb_syncs.c.id == sync_id).values(finished_at=now, **counts)
        )
        await conn.execute(delete(kb_syncs).where(kb_syncs.c.id < sync_id - 50))
        await conn.execute(delete(kb_problems))
        if problems:
            await conn.execute(
                insert(kb_problems),
                [
                    {"source": s, "location": loc, "reason": r, "seen_at": now}
                    for s, loc, r in problems
                ],
            )


async def index_status(engine: AsyncEngine) -> dict[str, Any]:
    d, c, s, p = kb_documents.c, kb_chunks.c, kb_syncs.c, kb_problems.c
    async with engine.connect() as conn:
        documents = (
            await conn.execute(select(func.count()).select_from(kb_documents))
        ).scalar_one()
        chunks = (await conn.execute(select(func.count()).select_from(kb_chunks))).scalar_one()
        embedded = (
            await conn.execute(
                select(func.count()).select_from(kb_chunks).where(c.embedding.is_not(None))
            )
        ).scalar_one()
        grouped = await conn.execute(select(d.collection, func.count()).group_by(d.collection))
        per_collection: dict[str, int] = {str(r[0]): int(r[1]) for r in grouped}
        last = (
            await conn.execute(
                select(
                    s.started_at,
                    s.finished_at,
                    s.added,
                    s.updated,
                    s.removed,
                    s.unchanged,
                    s.failed,
                )
                .where(s.finished_at.is_not(None))
                .order_by(s.id.desc())
                .limit(1)
            )
        ).first()
        problems = (await conn.execute(select(p.source, p.location, p.reason).order_by(p.id))).all()
    return {
        "documents": documents,
        "chunks": chunks,
        "embedded": embedded,
        "collections": per_collection,
        "last_sync": last,
        "problems": [(r.location, r.reason) for r in problems],
    }


# --- Search -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hit:
    chunk_id: int
    collection: str
    title: str
    heading: str
    location: str
    url: str
    text: str


def _in_collections(collections: Sequence[str] | None) -> ColumnElement[bool] | None:
    return None if collections is None else kb_documents.c.collection.in_(list(collections))


def _scoped(query: Select[Any], collections: Sequence[str] | None) -> Select[Any]:
    query = query.select_from(
        kb_chunks.join(kb_documents, kb_chunks.c.document_id == kb_documents.c.id)
    )
    where = _in_collections(collections)
    return query if where is None else query.where(where)


_SAFE_TERM = re.compile(r"^[^\W_]+$", re.UNICODE)


def _matches(conn: AsyncConnection, terms: Sequence[str]) -> ColumnElement[bool]:
    """WHERE clause: the chunk contains any of `terms` (as the database tokenizes them)."""
    if conn.dialect.name == "sqlite":
        fts = " OR ".join(f'"{t}"' for t in terms)
        clause = "kb_chunks.id IN (SELECT rowid FROM kb_fts WHERE kb_fts MATCH :fts)"
        return text(clause).bindparams(fts=fts)  # type: ignore[return-value]
    vector: ColumnElement[Any] = literal_column("kb_chunks.search_vector")
    return vector.op("@@")(_tsquery(terms))


def _tsquery(terms: Sequence[str]) -> ColumnElement[Any]:
    return func.to_tsquery("english", " | ".join(terms))


async def keyword_search(
    engine: AsyncEngine, terms: Sequence[str], collections: Sequence[str] | None, limit: int
) -> list[tuple[int, float]]:
    """(chunk id, database rank score) of chunks containing any term, best first."""
    terms = [t for t in terms if _SAFE_TERM.match(t)]
    if not terms:
        return []
    async with engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            fts = " OR ".join(f'"{t}"' for t in terms)
            sql = (
                "SELECT kb_fts.rowid AS id, -bm25(kb_fts) AS score FROM kb_fts "
                "JOIN kb_chunks ON kb_chunks.id = kb_fts.rowid "
                "JOIN kb_documents ON kb_documents.id = kb_chunks.document_id "
                "WHERE kb_fts MATCH :fts {scope} ORDER BY bm25(kb_fts) LIMIT :limit"
            )
            params: dict[str, Any] = {"fts": fts, "limit": limit}
            scope = ""
            if collections is not None:
                names = {f"c{i}": c for i, c in enumerate(collections)}
                scope = (
                    "AND kb_documents.collection IN (" + ", ".join(f":{n}" for n in names) + ")"
                    if names
                    else "AND 0"
                )
                params.update(names)
            rows = (await conn.execute(text(sql.format(scope=scope)), params)).all()
            return [(int(r.id), float(r.score)) for r in rows]
        rank = func.ts_rank_cd(literal_column("kb_chunks.search_vector"), _tsquery(terms))
        query = _scoped(select(kb_chunks.c.id, rank.label("score")), collections)
        query = query.where(_matches(conn, terms))
        rows = (await conn.execute(query.order_by(text("score DESC")).limit(limit))).all()
        return [(int(r.id), float(r.score)) for r in rows]


async def term_hits(
    engine: AsyncEngine,
    terms: Sequence[str],
    candidates: Sequence[int],
    collections: Sequence[str] | None,
) -> tuple[int, dict[str, int], dict[str, set[int]]]:
    """(chunks in scope, chunks containing each term, which candidates contain each term).

    A term the database drops (an English stop word on PostgreSQL) is left out of both.
    """
    async with engine.connect() as conn:
        total = (await conn.execute(_scoped(select(func.count()), collections))).scalar_one()
        df: dict[str, int] = {}
        hits: dict[str, set[int]] = {}
        for term in terms:
            if not _SAFE_TERM.match(term):
                continue
            if conn.dialect.name != "sqlite":
                probe = await conn.execute(select(func.numnode(func.to_tsquery("english", term))))
                if not probe.scalar_one():
                    continue  # a stop word: the database ignores it, so do we
            where = _matches(conn, [term])
            df[term] = (
                await conn.execute(_scoped(select(func.count()), collections).where(where))
            ).scalar_one()
            if candidates and df[term]:
                found = await conn.execute(
                    select(kb_chunks.c.id).where(where, kb_chunks.c.id.in_(list(candidates)))
                )
                hits[term] = {int(r[0]) for r in found}
            else:
                hits[term] = set()
    return total, df, hits


async def load_vectors(
    engine: AsyncEngine,
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], list[str]]:
    """(chunk ids, vectors, collection of each) of every embedded chunk."""
    query = (
        select(kb_chunks.c.id, kb_chunks.c.embedding, kb_documents.c.collection)
        .select_from(kb_chunks.join(kb_documents, kb_chunks.c.document_id == kb_documents.c.id))
        .where(kb_chunks.c.embedding.is_not(None))
    )
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    if not rows:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32), []
    dims = len(rows[0].embedding) // 4
    rows = [r for r in rows if len(r.embedding) == dims * 4]
    ids = np.array([r.id for r in rows], dtype=np.int64)
    vectors = np.frombuffer(b"".join(r.embedding for r in rows), dtype=np.float32).reshape(
        len(rows), dims
    )
    return ids, vectors, [r.collection for r in rows]


async def fingerprint(engine: AsyncEngine) -> tuple[Any, ...]:
    """Changes whenever any process writes the index (for the in-memory vector cache)."""
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(func.count(kb_chunks.c.id), func.max(kb_chunks.c.id)).select_from(kb_chunks)
            )
        ).one()
        latest = (await conn.execute(select(func.max(kb_documents.c.indexed_at)))).scalar()
    return (row[0], row[1], str(latest))


async def load_hits(engine: AsyncEngine, ids: Sequence[int]) -> dict[int, Hit]:
    d, c = kb_documents.c, kb_chunks.c
    query = (
        select(c.id, d.collection, d.title, c.heading, d.location, d.url, c.text)
        .select_from(kb_chunks.join(kb_documents, c.document_id == d.id))
        .where(c.id.in_(list(ids)))
    )
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    return {
        int(r.id): Hit(int(r.id), r.collection, r.title, r.heading, r.location, r.url, r.text)
        for r in rows
    }
