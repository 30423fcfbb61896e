"""Expiry: conversations idle longer than `history.ttl` are deleted, turns and all.

An APScheduler (3.x) interval job calls `Repository.prune_expired` every
`history.prune_interval`. The conversations the bot is answering right now are passed as
`protect` (and the core also `touch`es a thread when a question starts), so a thread is never
pruned under an answer. A failed run is logged and the next one tries again; the job never
overlaps itself (max_instances=1) and missed runs collapse into one (coalesce).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from bot.types import ConversationKey
from storage.base import Repository
from storage.sql import SqlRepository

if TYPE_CHECKING:
    from apscheduler.schedulers.base import BaseScheduler

log = logging.getLogger(__name__)

JOB_ID = "edgeqa-prune-history"


def _nothing() -> Collection[ConversationKey]:
    return ()


class PruneJob:
    """One pruning pass per `run()`; keeps totals for metrics and tests."""

    def __init__(
        self,
        repo: Repository,
        ttl_seconds: float,
        *,
        protect: Callable[[], Collection[ConversationKey]] = _nothing,
        on_pruned: Callable[[int], None] | None = None,
    ) -> None:
        if ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be positive")
        self.repo = repo
        self.ttl_seconds = ttl_seconds
        self.protect = protect
        self.on_pruned = on_pruned
        self.runs = 0
        self.failures = 0
        self.removed_total = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def wait_idle(self) -> None:
        """Until no pass is in flight: a shutdown lets one finish before the database closes."""
        await self._idle.wait()

    async def run(self) -> int:
        """Prune once; returns the number of conversations removed (0 after a failure)."""
        self._idle.clear()
        try:
            return await self._pass()
        finally:
            self._idle.set()

    async def _pass(self) -> int:
        try:
            removed = await self.repo.prune_expired(self.ttl_seconds, protect=set(self.protect()))
        except asyncio.CancelledError:
            # The scheduler's shutdown cancels a pass in flight. Its transaction is rolled
            # back and the next start prunes again: not an error. Letting the cancellation
            # out would make APScheduler log "raised an exception" with a traceback at every
            # shutdown that lands mid-pass (two replicas pruning often make that likely).
            log.info("pruning pass cut short by shutdown; the next start prunes again")
            return 0
        except Exception:
            self.failures += 1
            log.exception("pruning expired conversations failed; will retry next interval")
            return 0
        self.runs += 1
        self.removed_total += removed
        _log_removed(removed, self.ttl_seconds)
        if self.on_pruned is not None:
            self.on_pruned(removed)
        return removed


def schedule_pruning(
    scheduler: BaseScheduler,
    repo: Repository,
    ttl_seconds: float,
    interval_seconds: float,
    protect: Callable[[], Collection[ConversationKey]] = _nothing,
    on_pruned: Callable[[int], None] | None = None,
    *,
    run_now: bool = True,
) -> PruneJob:
    """Add the pruning job to an `apscheduler.schedulers.asyncio.AsyncIOScheduler`.

    The scheduler may be started before or after. With `run_now` the first pass happens as
    soon as the scheduler runs, clearing what expired while the bot was down.
    """
    if interval_seconds <= 0:
        raise ValueError("interval_seconds must be positive")
    job = PruneJob(repo, ttl_seconds, protect=protect, on_pruned=on_pruned)
    options: dict[str, Any] = {}
    if run_now:
        options["next_run_time"] = datetime.now(UTC)
    scheduler.add_job(
        job.run,
        "interval",
        seconds=interval_seconds,
        id=JOB_ID,
        name="prune expired conversations",
        replace_existing=True,
        max_instances=1,
        coalesce=True,
        misfire_grace_time=None,  # late (a busy loop, a suspended laptop) still runs
        **options,
    )
    return job


async def prune_once(url: str, ttl_seconds: float) -> int:
    """`edgeqa db prune`: upgrade the schema if needed, prune once, return the count.

    Unlike the scheduled job, errors propagate, so the command can exit non-zero.
    """
    repo = SqlRepository(url)
    await repo.start()
    try:
        removed = await repo.prune_expired(ttl_seconds)
    finally:
        await repo.close()
    _log_removed(removed, ttl_seconds)
    return removed


def _log_removed(removed: int, ttl_seconds: float) -> None:
    # Counts only: message texts never go to the log at INFO.
    if removed:
        log.info("pruned %d expired conversation(s) idle > %gs", removed, ttl_seconds)
    else:
        log.debug("pruning: nothing expired")
