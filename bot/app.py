"""Wiring: storage, engine, service, adapters, the HTTP server and the pruning job.

`App` is also what tests start (with their own adapters pointed at local fakes), so the
running bot and the tested bot are assembled by the same code.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from adapters.base import Adapter
from bot.config import Settings
from bot.http import HttpServer, build_app
from bot.metrics import Metrics
from bot.service import ConversationService
from knowledge.base import KnowledgeBase
from knowledge.setup import SyncJob, build_knowledge, schedule_sync
from llm.base import Engine
from storage.base import Repository
from storage.pruning import PruneJob, schedule_pruning
from storage.sql import SqlRepository

log = logging.getLogger(__name__)


def default_adapters(settings: Settings) -> list[Adapter]:
    """The adapters the settings enable; imported lazily so an unused SDK costs nothing."""
    adapters: list[Adapter] = []
    if settings.web_chat_enabled:
        from adapters.web import WebChatAdapter

        adapters.append(WebChatAdapter(settings))
    if settings.telegram.enabled:
        from adapters.telegram import TelegramAdapter

        adapters.append(TelegramAdapter(settings))
    if settings.slack.enabled:
        from adapters.slack import SlackAdapter

        adapters.append(SlackAdapter(settings))
    return adapters


def default_engine(settings: Settings) -> Engine:
    from llm.factory import create_engine

    return create_engine(settings)


class App:
    def __init__(
        self,
        settings: Settings,
        *,
        engine: Engine | None = None,
        adapters: list[Adapter] | None = None,
        repo: Repository | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.engine = engine if engine is not None else default_engine(settings)
        self.repo = repo if repo is not None else SqlRepository(settings.history.database_url)
        self.service = ConversationService(settings, self.engine, self.repo, self.metrics)
        self.adapters = adapters if adapters is not None else default_adapters(settings)
        self.scheduler = AsyncIOScheduler()
        self.http: HttpServer | None = None
        self._engine_ready = False
        self._started: list[Adapter] = []
        self._pruning: PruneJob | None = None
        self.knowledge: KnowledgeBase | None = None  # built in start(): needs the database
        self._kb_sync: SyncJob | None = None

    @property
    def port(self) -> int:
        return self.http.port if self.http is not None else self.settings.web.port

    async def start(self) -> None:
        await self.repo.start()
        await self.engine.start()
        self._engine_ready = True
        self._start_knowledge()
        http_app = build_app(self.metrics, self._health)
        for adapter in self.adapters:
            self.service.register(adapter)
            if adapter.serves_http:
                adapter.mount(http_app)
        self.http = HttpServer(http_app, self.settings.web.host, self.settings.web.port)
        await self.http.start()
        for adapter in self.adapters:
            await adapter.start(self.service)
            self._started.append(adapter)
        history = self.settings.history
        self._pruning = schedule_pruning(
            self.scheduler,
            self.repo,
            history.ttl,
            history.prune_interval,
            protect=self.service.active_keys,
            on_pruned=lambda n: self.metrics.inc("edgeqa_pruned_conversations_total", n),
        )
        if self.knowledge is not None:
            self._kb_sync = schedule_sync(
                self.scheduler, self.knowledge, self.settings.knowledge.sync_interval
            )
        self.scheduler.start()
        log.info(
            "edgeqa ready: %s; engine %s",
            ", ".join(a.name for a in self.adapters) or "no adapters",
            self.engine.name,
        )

    async def stop(self, grace: float = 30.0) -> None:
        """Stop taking questions, let answers in flight finish (or cut them after `grace`
        seconds, with a note), then close everything in reverse order."""
        await self.service.shutdown(grace)
        for adapter in reversed(self._started):
            try:
                await adapter.stop()
            except Exception:
                log.exception("stopping the %s adapter failed", adapter.name)
        self._started.clear()
        if self.scheduler.running:
            # A pass cancelled mid-statement would leave its connection closing in the
            # background after the database is closed: start no new pass, let one in flight
            # finish (within the grace), then stop the scheduler.
            self.scheduler.pause()
            for job in (self._pruning, self._kb_sync):
                if job is not None:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(grace):
                            await job.wait_idle()
            self.scheduler.shutdown(wait=False)
        if self.http is not None:
            await self.http.stop()
            self.http = None
        await self.engine.close()
        self._engine_ready = False
        if self.knowledge is not None:
            await self.knowledge.close()
        await self.repo.close()

    def _start_knowledge(self) -> None:
        """The knowledge base on the history database (None without sources)."""
        db = getattr(self.repo, "db", None)
        if not self.settings.knowledge.enabled:
            return
        if db is None:
            log.warning("knowledge: the history store is not a SQL database; documents are off")
            return
        kb = build_knowledge(self.settings, db, busy=lambda: self.engine.stats().active > 0)
        self.knowledge = kb
        self.service.knowledge = kb  # questions are answered from the documents from now on
        if kb is None:
            return
        self.metrics.gauge("edgeqa_kb_searches_total", lambda: float(kb.stats.searches))
        self.metrics.gauge("edgeqa_kb_search_seconds_total", lambda: kb.stats.seconds)
        self.metrics.gauge("edgeqa_kb_documents", lambda: float(kb.stats.documents))
        self.metrics.gauge("edgeqa_kb_chunks", lambda: float(kb.stats.chunks))

    async def _health(self) -> dict[str, bool]:
        return {"model_loaded": self._engine_ready, "database": await self.repo.ping()}


async def serve(app: App) -> None:
    """Run until SIGINT or SIGTERM, then shut down gracefully."""
    grace = app.settings.bot.shutdown_grace
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await app.start()
        await stop.wait()
        log.info("shutting down (grace %gs)", grace)
    finally:
        await app.stop(grace)
