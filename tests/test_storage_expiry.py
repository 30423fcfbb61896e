"""Expiry: idle conversations really disappear, on schedule, never under an answer."""

from __future__ import annotations

import asyncio
import logging

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from bot.app import App
from storage.pruning import PruneJob, prune_once, schedule_pruning
from storage.sql import PRUNE_BATCH
from tests.doubles import ScriptedEngine
from tests.harness import test_settings
from tests.storage_support import (
    age,
    count_conversations,
    count_turns,
    has_conversation,
    insert_idle,
    key,
    open_repo,
)

HOUR = 3600.0


async def _conversation(repo, k, turns=2, idle=0.0):
    for i in range(turns):
        await repo.append_turn(k, user_id="U", question=f"q{i}", answer="a")
    if idle:
        await age(repo, k, idle)


async def _many_idle(repo, count, idle):
    """Insert `count` idle conversations, in one statement; a turn in some of them."""
    await insert_idle(repo, [key(f"bulk{i}", ws="T") for i in range(count)], idle)
    for i in range(0, count, 97):  # a turn in some of them, so the cascade is exercised
        await repo.append_turn(key(f"bulk{i}", ws="T"), user_id="U", question="q", answer="a")
        await age(repo, key(f"bulk{i}", ws="T"), idle)


async def test_idle_conversations_and_their_turns_are_deleted(repo):
    old, older, fresh = key("old"), key("older"), key("fresh")
    await _conversation(repo, old, turns=2, idle=2 * HOUR)
    await _conversation(repo, older, turns=3, idle=30 * HOUR)
    await _conversation(repo, fresh, turns=1, idle=HOUR / 2)
    assert await repo.prune_expired(HOUR) == 2
    assert not await has_conversation(repo, old)
    assert not await has_conversation(repo, older)
    assert await count_conversations(repo) == 1
    assert await count_turns(repo) == 1  # really gone from the table, not just hidden
    assert [t.question for t in await repo.load_history(fresh)] == ["q0"]
    assert await repo.prune_expired(HOUR) == 0  # idempotent


async def test_a_protected_conversation_survives_expiry(repo):
    answering, idle = key("answering"), key("idle")
    await _conversation(repo, answering, idle=2 * HOUR)
    await _conversation(repo, idle, idle=2 * HOUR)
    assert await repo.prune_expired(HOUR, protect={answering}) == 1
    assert len(await repo.load_history(answering)) == 2
    assert not await has_conversation(repo, idle)


async def test_touch_when_a_question_starts_rescues_an_idle_thread(repo):
    k = key("t")
    await _conversation(repo, k, idle=2 * HOUR)
    await repo.touch(k)
    assert await repo.prune_expired(HOUR) == 0
    assert len(await repo.load_history(k)) == 2


async def test_pruning_many_conversations_works_through_batches(repo):
    total = PRUNE_BATCH * 2 + 17
    await _many_idle(repo, total, 2 * HOUR)
    spared = key("bulk600", ws="T")
    await _conversation(repo, key("fresh"))
    assert await repo.prune_expired(HOUR, protect=[spared]) == total - 1
    assert await count_conversations(repo) == 2
    assert await has_conversation(repo, spared)
    assert await count_turns(repo) == 2  # only the fresh conversation's


async def test_two_repositories_pruning_one_database_at_once(url):
    async with open_repo(url) as first, open_repo(url) as second:
        total = PRUNE_BATCH + 50
        await _many_idle(first, total, 2 * HOUR)
        await _conversation(first, key("fresh"))
        results = await asyncio.gather(
            first.prune_expired(HOUR),
            second.prune_expired(HOUR),
            first.prune_expired(HOUR),
            second.prune_expired(HOUR),
        )
        assert sum(results) == total  # each conversation removed exactly once, no errors
        assert await count_conversations(second) == 1
        assert await count_turns(second) == 2


async def test_prune_once_for_the_command_line(url):
    async with open_repo(url) as repo:
        await _conversation(repo, key("a"), idle=2 * HOUR)
        await _conversation(repo, key("b"))
    assert await prune_once(url, HOUR) == 1
    async with open_repo(url) as repo:
        assert await count_conversations(repo) == 1


async def test_the_scheduled_job_fires_and_removes_rows(repo, caplog):
    caplog.set_level(logging.INFO, logger="storage.pruning")
    secret = "my very private question"
    for name in ("a", "b", "c"):
        await repo.append_turn(key(name), user_id="U", question=secret, answer="a")
        await age(repo, key(name), 120)
    await _conversation(repo, key("fresh"))
    answering = key("answering")
    await _conversation(repo, answering, idle=120)
    pruned: list[int] = []
    three_runs = asyncio.Event()

    def on_pruned(count: int) -> None:
        pruned.append(count)
        if len(pruned) >= 3:
            three_runs.set()

    scheduler = AsyncIOScheduler()
    job = schedule_pruning(
        scheduler,
        repo,
        ttl_seconds=60,
        interval_seconds=0.2,
        protect=lambda: {answering},
        on_pruned=on_pruned,
        run_now=False,
    )
    scheduler.start()
    try:
        await asyncio.wait_for(three_runs.wait(), 20)
    finally:
        scheduler.shutdown(wait=False)

    assert job.failures == 0
    assert sum(pruned) == job.removed_total == 3
    assert await count_conversations(repo) == 2
    assert await has_conversation(repo, answering)
    assert await count_turns(repo, question=secret) == 0
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any("pruned 3 " in line for line in lines)
    assert not any(secret in r.getMessage() for r in caplog.records)


async def test_a_failing_run_is_logged_and_the_job_keeps_going(url, caplog):
    async with open_repo(url) as repo:
        await _conversation(repo, key("a"), idle=2 * HOUR)
        job = PruneJob(repo, HOUR)
        await repo.close()  # the database goes away
        assert await job.run() == 0
        assert job.failures == 1
        assert "pruning expired conversations failed" in caplog.text
        await repo.start()  # and comes back
        assert await job.run() == 1
        assert (job.runs, job.removed_total) == (1, 1)


async def test_a_shutdown_in_the_middle_of_a_pass_is_no_error(url, caplog):
    """The scheduler cancels a pass in flight at shutdown; that is a quiet stop, not an
    ERROR with a traceback in the operator's log."""
    caplog.set_level(logging.INFO, logger="storage.pruning")
    async with open_repo(url) as repo:
        await _conversation(repo, key("a"), idle=2 * HOUR)
        started, never = asyncio.Event(), asyncio.Event()
        prune = repo.prune_expired

        async def slow_prune(ttl_seconds, *, protect=()):  # a pass still running at shutdown
            started.set()
            await never.wait()
            return await prune(ttl_seconds, protect=protect)

        repo.prune_expired = slow_prune  # type: ignore[method-assign]
        scheduler = AsyncIOScheduler()
        job = schedule_pruning(scheduler, repo, HOUR, interval_seconds=60)
        scheduler.start()
        await asyncio.wait_for(started.wait(), 10)
        scheduler.shutdown(wait=False)
        for _ in range(100):
            await asyncio.sleep(0.01)
            if "cut short" in caplog.text:
                break
        assert "cut short by shutdown" in caplog.text
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
        assert (job.failures, job.removed_total) == (0, 0)
        del repo.prune_expired
        assert await count_conversations(repo) == 1  # untouched; the next start prunes it


async def test_the_bot_stopping_lets_a_pass_in_flight_finish_first(tmp_path):
    """The first pass runs as the bot starts; a bot stopped at once (a quick restart, a
    test) waits for it instead of closing the database under it."""
    settings = test_settings(tmp_path)
    app = App(settings, engine=ScriptedEngine("ok"), adapters=[])
    started, go = asyncio.Event(), asyncio.Event()
    prune = app.repo.prune_expired

    async def slow_prune(ttl_seconds, *, protect=()):
        started.set()
        await go.wait()
        return await prune(ttl_seconds, protect=protect)

    app.repo.prune_expired = slow_prune  # type: ignore[method-assign]
    await app.start()
    await _conversation(app.repo, key("old"), idle=settings.history.ttl + HOUR)
    await asyncio.wait_for(started.wait(), 10)
    stopping = asyncio.create_task(app.stop(grace=10))
    await asyncio.sleep(0.2)
    assert not stopping.done()  # waiting for the pass
    go.set()
    await asyncio.wait_for(stopping, 10)
    async with open_repo(settings.history.database_url) as repo:
        assert await count_conversations(repo) == 0  # the pass ran to the end
