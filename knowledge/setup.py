"""Building the knowledge base from the settings, and its place on the scheduler.

The token counter reads the chat model's vocabulary when the chat model is a local GGUF
already on disk (never downloading it just to count); the embedding model is resolved like
the chat model and loaded on first use (knowledge/base.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncEngine

from knowledge.base import KnowledgeBase
from llm.base import ModelError
from llm.embeddings import Embedder, load_embedder
from llm.tokens import TextCounter, chat_token_counter, estimate_tokens

if TYPE_CHECKING:
    from apscheduler.schedulers.base import BaseScheduler

    from bot.config import Settings

log = logging.getLogger(__name__)

JOB_ID = "edgeqa-knowledge-sync"


def build_knowledge(
    settings: Settings,
    db: AsyncEngine,
    *,
    busy: Callable[[], bool] | None = None,
    download: bool = True,
) -> KnowledgeBase | None:
    """The knowledge base for `settings`, or None when no source is configured."""
    kn = settings.knowledge
    if not kn.enabled:
        return None
    counter: TextCounter = estimate_tokens
    if settings.engine.kind == "llama_cpp":
        from llm.model_files import resolve_model

        try:
            path = resolve_model(settings.model_ref, settings.engine.model_dir, download=False)
            counter = chat_token_counter(path)
        except ModelError as exc:
            log.info("knowledge: chunk sizes by estimate until the chat model is here (%s)", exc)
    loader: Callable[[], Embedder] | None = None
    if kn.embedding_model.strip():
        ref, model_dir = kn.embedding_model, settings.engine.model_dir

        def loader() -> Embedder:
            return load_embedder(ref, model_dir, threads=kn.embedding_threads, download=download)

    return KnowledgeBase(kn, db, count_tokens=counter, load_embedder=loader, busy=busy)


class SyncJob:
    """One sync pass per `run()`; a failure is logged and retried at the next interval."""

    def __init__(self, kb: KnowledgeBase) -> None:
        self.kb = kb
        self.runs = 0
        self.failures = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def wait_idle(self) -> None:
        await self._idle.wait()

    async def run(self) -> None:
        self._idle.clear()
        try:
            await self.kb.sync()
            self.runs += 1
        except asyncio.CancelledError:
            log.info("knowledge sync cut short by shutdown; the next start goes on")
        except Exception:
            self.failures += 1
            log.exception("knowledge sync failed; will retry next interval")
        finally:
            self._idle.set()


def schedule_sync(scheduler: BaseScheduler, kb: KnowledgeBase, interval: float) -> SyncJob:
    """Add the sync job (first pass as soon as the scheduler runs)."""
    job = SyncJob(kb)
    scheduler.add_job(
        job.run,
        "interval",
        seconds=interval,
        id=JOB_ID,
        name="sync the knowledge base",
        replace_existing=True,
        max_instances=1,
        coalesce=True,
        misfire_grace_time=None,
        next_run_time=datetime.now(UTC),
    )
    return job
