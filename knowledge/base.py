"""The knowledge base: what the bot, the scheduler and `edgeqa kb` talk to.

`KnowledgeBase` implements the `Retriever` the question pipeline calls, and holds the
sync, status and scope answers. Its tables live in the history database, reached through
storage's database engine (SqlRepository.db), so one backup and one `edgeqa db upgrade` cover both.

The embedding model is loaded on first use in a worker thread (it may be downloaded); if
it cannot be had, retrieval goes on with keyword search alone and `edgeqa kb status` says
why, instead of the bot refusing to start over an optional part.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy.ext.asyncio import AsyncEngine

from knowledge import index
from knowledge.config import KnowledgeSettings
from knowledge.search import coverage, fuse
from knowledge.segment import query_terms
from knowledge.sync import Progress, SyncContext, SyncReport, run_sync
from knowledge.types import Passage
from llm.base import ModelError
from llm.embeddings import Embedder
from llm.tokens import TextCounter, estimate_tokens

log = logging.getLogger(__name__)

CANDIDATES = 40
"""Chunks taken from each of keyword and vector search before scoring."""


@dataclass
class RetrievalStats:
    searches: int = 0
    seconds: float = 0.0  # spent in retrieve(), in all
    empty: int = 0  # searches that found nothing above the threshold
    documents: int = 0  # in the index, as of the last sync or status
    chunks: int = 0


@dataclass(frozen=True)
class KbStatus:
    documents: int
    chunks: int
    embedded: int  # chunks with a vector
    collections: dict[str, int]  # documents per collection
    last_sync: datetime | None  # when the last complete pass finished
    last_counts: dict[str, int]
    errors: list[tuple[str, str]] = field(default_factory=list)  # (location, reason)
    embedding: str = ""  # the model's name, "off", or why it is unavailable


class KnowledgeBase:
    """Documents indexed in the history database, searched by keyword and by meaning."""

    def __init__(
        self,
        settings: KnowledgeSettings,
        db: AsyncEngine,
        *,
        count_tokens: TextCounter = estimate_tokens,
        load_embedder: Callable[[], Embedder] | None = None,
        busy: Callable[[], bool] | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.stats = RetrievalStats()
        self._count_tokens = count_tokens
        self._load_embedder = load_embedder
        self._embedder: Embedder | None = None
        self._embedder_error = ""
        self._embedder_lock = asyncio.Lock()
        self._loading: asyncio.Task[Embedder | None] | None = None
        self._sync_lock = asyncio.Lock()
        self._busy = busy
        self._vectors: tuple[Any, np.ndarray[Any, Any], np.ndarray[Any, Any], list[str]] | None = (
            None
        )

    # --- retrieval ------------------------------------------------------------------------

    async def retrieve(
        self, query: str, *, collections: Sequence[str] | None = None, limit: int = 4
    ) -> list[Passage]:
        """Passages relevant to `query` from `collections` (None = all), best first; [] when
        none reaches `knowledge.min_score` (the documents do not cover the question)."""
        started = time.perf_counter()
        try:
            passages = await self._retrieve(query, collections, limit)
        finally:
            self.stats.searches += 1
            self.stats.seconds += time.perf_counter() - started
        if not passages:
            self.stats.empty += 1
        return passages

    async def _retrieve(
        self, query: str, collections: Sequence[str] | None, limit: int
    ) -> list[Passage]:
        if limit < 1 or (collections is not None and not collections):
            return []
        terms = query_terms(query)
        keyword = await index.keyword_search(self.db, terms, collections, CANDIDATES)
        cosines: dict[int, float] | None = None
        embedder = self._embedder
        if embedder is None and self._load_embedder is not None and not self._embedder_error:
            # Never make a question wait for a model to load (or download): this search goes
            # on with keywords, the next ones get vectors.
            self._loading = self._loading or asyncio.create_task(self.embedder())
        if embedder is not None and query.strip():
            cosines = await self._vector_search(embedder, query, collections)
        candidates = list(dict.fromkeys([c for c, _ in keyword] + list(cosines or {})))
        if not candidates:
            return []
        total, df, hits = await index.term_hits(self.db, terms, candidates, collections)
        covered = coverage(terms, total, df, hits)
        scored = [
            s for s in fuse(candidates, covered, cosines) if s.score >= self.settings.min_score
        ]
        scored = [s for s in scored if s.score > 0][:limit]
        found = await index.load_hits(self.db, [s.chunk_id for s in scored])
        allowed = None if collections is None else set(collections)
        return [
            Passage(
                chunk_id=hit.chunk_id,
                collection=hit.collection,
                title=hit.title,
                heading=hit.heading,
                location=hit.location,
                url=hit.url,
                text=hit.text,
                score=round(s.score, 4),
            )
            for s in scored
            if (hit := found.get(s.chunk_id)) is not None
            and (allowed is None or hit.collection in allowed)
        ]

    async def _vector_search(
        self, embedder: Embedder, query: str, collections: Sequence[str] | None
    ) -> dict[int, float]:
        qv = (await asyncio.to_thread(embedder.embed, [query], query=True))[0]
        mark = await index.fingerprint(self.db)
        if self._vectors is None or self._vectors[0] != mark:
            ids, vectors, owners = await index.load_vectors(self.db)
            self._vectors = (mark, ids, vectors, owners)
        _, ids, vectors, owners = self._vectors
        if not len(ids) or vectors.shape[1] != qv.shape[0]:
            return {}
        sims = vectors @ qv
        if collections is not None:
            allowed = set(collections)
            sims = np.where([o in allowed for o in owners], sims, -np.inf)
        top = np.argsort(-sims)[:CANDIDATES]
        return {int(ids[i]): float(sims[i]) for i in top if np.isfinite(sims[i])}

    async def embedder(self) -> Embedder | None:
        """The embedding model, loaded on first use; None when off or unavailable."""
        if self._load_embedder is None or self._embedder_error:
            return self._embedder
        async with self._embedder_lock:
            if self._embedder is None and not self._embedder_error:
                try:
                    self._embedder = await asyncio.to_thread(self._load_embedder)
                except (ModelError, OSError, ValueError) as exc:
                    self._embedder_error = str(exc)
                    log.warning("knowledge: keyword search only: %s", exc)
        return self._embedder

    # --- scope ----------------------------------------------------------------------------

    def collections_for(self, platform: str, chat: str) -> list[str] | None:
        """The collections a chat may search; None = all. The most specific rule wins."""
        best: list[str] | None = None
        best_rank = 0
        for rule in self.settings.collections:
            if rule.platform != platform or (rule.chat and rule.chat != chat):
                continue
            rank = 2 if rule.chat else 1
            if rank > best_rank:
                best, best_rank = list(rule.collections), rank
        return best

    # --- sync and status ------------------------------------------------------------------

    async def sync(self, progress: Progress | None = None) -> SyncReport:
        """Bring the index in line with the sources (one pass at a time per process)."""
        async with self._sync_lock:
            embedder = await self.embedder()
            ctx = SyncContext(
                db=self.db,
                sources=list(self.settings.sources),
                max_bytes=self.settings.max_file_bytes,
                chunk_tokens=self.settings.chunk_tokens,
                count_tokens=self._count_tokens,
                embedder=embedder,
                busy=self._busy,
            )
            report = await run_sync(ctx, progress)
        await self.status()  # refreshes the document and chunk figures
        log.info(
            "knowledge sync: %d added, %d updated, %d removed, %d unchanged, %d skipped in %.1fs",
            report.added,
            report.updated,
            report.removed,
            report.unchanged,
            len(report.problems),
            report.seconds,
        )
        return report

    async def status(self) -> KbStatus:
        found = await index.index_status(self.db)
        self.stats.documents, self.stats.chunks = found["documents"], found["chunks"]
        last = found["last_sync"]
        if self._load_embedder is None:
            embedding = "off (keyword search only)"
        elif self._embedder is not None:
            embedding = self._embedder.name
        elif self._embedder_error:
            embedding = f"unavailable: {self._embedder_error}"
        else:
            embedding = self.settings.embedding_model + " (not loaded yet)"
        return KbStatus(
            documents=found["documents"],
            chunks=found["chunks"],
            embedded=found["embedded"],
            collections=found["collections"],
            last_sync=last.finished_at if last is not None else None,
            last_counts=(
                {
                    k: getattr(last, k)
                    for k in ("added", "updated", "removed", "unchanged", "failed")
                }
                if last is not None
                else {}
            ),
            errors=found["problems"],
            embedding=embedding,
        )

    async def close(self) -> None:
        if self._loading is not None:
            await asyncio.gather(self._loading, return_exceptions=True)
        if self._embedder is not None:
            await asyncio.to_thread(self._embedder.close)
            self._embedder = None
