"""kill -9 in the middle of an answer: the database stays consistent and the bot carries on.

Three runs of the real bot (`python -m bot run`: browser chat over HTTP, llama.cpp on the
tiny model, SQLite) on one database file:
1. two short questions in a thread are answered and stored;
2. with long answers, a third question is asked and the process is SIGKILLed while its
   answer is visibly streaming;
3. after a restart, the thread's history is intact, a new question is answered with that
   history in its prompt, and the prune job runs (at start and again on its interval).

The tiny model always writes exactly max_tokens tokens, so a turn stored as complete with
fewer tokens would be a half answer taken for a whole one.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from tests.bot_process import (
    BASE_ENV,
    LONG_ANSWER_ENV,
    BotProcess,
    answer_of,
    bot_env,
    final_text,
    stored_turns,
)
from tests.harness import eventually, stored_form

THREAD = "thread-crash1"
SHORT = int(BASE_ENV["EDGEQA_ENGINE__MAX_TOKENS"])
LONG_AGO = "2000-01-01 00:00:00.000000"  # the format SQLAlchemy stores naive UTC in


def seed_expired(db: Path, thread: str) -> None:
    """An old conversation with one turn, written the way another process would."""
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("PRAGMA foreign_keys = ON")
        cursor = conn.execute(
            "INSERT INTO conversations (platform, workspace, channel, thread, created_at,"
            " last_active_at) VALUES ('web', '', 'browser-old1', ?, ?, ?)",
            (thread, LONG_AGO, LONG_AGO),
        )
        conn.execute(
            "INSERT INTO turns (conversation_id, platform, user_id, question, answer, status,"
            " prompt_tokens, completion_tokens, created_at)"
            " VALUES (?, 'web', 'browser-old1', 'old?', 'old.', 'complete', 1, 1, ?)",
            (cursor.lastrowid, LONG_AGO),
        )


def conversation_exists(db: Path, thread: str) -> bool:
    with closing(sqlite3.connect(db)) as conn:
        row = conn.execute("SELECT count(*) FROM conversations WHERE thread = ?", (thread,))
        return bool(row.fetchone()[0])


def check_consistent(db: Path) -> None:
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def summary(turns: list[dict[str, object]]) -> list[tuple[object, ...]]:
    return [(t["question"], t["answer"], t["status"], t["completion_tokens"]) for t in turns]


@pytest.mark.timeout(120)
async def test_sigkill_mid_answer_loses_only_that_answer(
    tmp_path: Path, tiny_model_path: Path
) -> None:
    db, log = tmp_path / "edgeqa.db", tmp_path / "bot.log"

    # 1. Two questions answered and stored.
    async with BotProcess(bot_env(db, tiny_model_path), log) as bot, bot.events() as stream:
        first = await bot.ask(THREAD, "What is edgeqa?")
        shown_first = final_text(await answer_of(stream, first))
        second = await bot.ask(THREAD, "And where does it keep threads?")
        shown_second = final_text(await answer_of(stream, second))
        bot.send(signal.SIGTERM)
        assert await bot.wait_exit() == 0
    before = stored_turns(db, THREAD)
    assert summary(before) == [
        ("What is edgeqa?", stored_form(shown_first), "complete", SHORT),
        ("And where does it keep threads?", stored_form(shown_second), "complete", SHORT),
    ]

    # 2. A long answer, killed while it streams.
    env = bot_env(db, tiny_model_path, **LONG_ANSWER_ENV)
    async with BotProcess(env, log) as bot, bot.events() as stream:
        third = await bot.ask(THREAD, "Tell me everything.")
        streaming = await stream.until(
            lambda e: e["type"] == "reply" and e["question"] == third and len(e["text"]) >= 20
        )
        assert not streaming[-1]["final"], "the answer ended before it could be interrupted"
        bot.send(signal.SIGKILL)
        assert await bot.wait_exit() == -signal.SIGKILL

    check_consistent(db)
    after = stored_turns(db, THREAD)
    assert after[:2] == before
    # The interrupted question left no turn, or one marked interrupted (never "complete").
    assert [(t["question"], t["status"]) for t in after[2:]] in (
        [],
        [("Tell me everything.", "interrupted")],
    )
    seed_expired(db, "thread-old1")

    # 3. Restart on the same database: history, a follow-up, and the prune job.
    env = bot_env(
        db, tiny_model_path, EDGEQA_HISTORY__PRUNE_INTERVAL="0.5s", EDGEQA_HISTORY__TTL="1h"
    )
    async with BotProcess(env, log) as bot, bot.events() as stream:
        shown = await bot.history(THREAD)
        assert shown["live"] == []
        assert [(t["question"], t["answer"], t["status"]) for t in shown["turns"]] == [
            (t["question"], t["answer"], t["status"]) for t in after
        ]

        # Expired while the bot was down: removed by the pass at start...
        await eventually(lambda: not conversation_exists(db, "thread-old1"), within=15)
        # ... and one that expires while it runs, by a later pass of the interval job.
        seed_expired(db, "thread-old2")
        await eventually(lambda: not conversation_exists(db, "thread-old2"), within=15)
        assert conversation_exists(db, THREAD)
        for _ in range(100):  # counted just after the delete commits
            if await bot.metric("edgeqa_pruned_conversations_total") == 2:
                break
            await asyncio.sleep(0.05)
        assert await bot.metric("edgeqa_pruned_conversations_total") == 2

        # The thread goes on, with its earlier turns in the prompt.
        again = await bot.ask(THREAD, "What is edgeqa?")
        shown_again = final_text(await answer_of(stream, again))
        bot.send(signal.SIGTERM)
        assert await bot.wait_exit() == 0

    check_consistent(db)
    turns = stored_turns(db, THREAD)
    assert summary(turns[:2]) == summary(before)
    assert summary(turns[-1:]) == [("What is edgeqa?", stored_form(shown_again), "complete", SHORT)]
    # The same question as the first turn; its prompt now also holds the two earlier answers.
    assert turns[-1]["prompt_tokens"] >= turns[0]["prompt_tokens"] + 2 * SHORT
