"""SIGTERM while an answer streams: the real bot process (`python -m bot run`, browser chat,
llama.cpp on the tiny model, SQLite) stops taking questions, finishes or cuts the answer in
flight within `bot.shutdown_grace`, stores it, and exits 0.

The tiny model always writes exactly max_tokens tokens: a complete answer has all of them.
No timing is asserted beyond a generous bound on the exit (grace + 15 s). The work is sized
by tokens, not by the machine: the answer that must complete is short enough to finish well
within its grace even on a machine many times slower than usual (a 60 s grace once ran out
on an 8000-token answer there), and still long enough to be in flight while the test asks
its late questions; the answer that must be cut is the long one, against a 0.2 s grace.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from bot.service import INTERRUPTED_MARK, RESTARTING
from tests.bot_process import (
    LONG_ANSWER_ENV,
    BotProcess,
    answer_of,
    bot_env,
    final_text,
    stored_turns,
)
from tests.harness import stored_form

LONG = int(LONG_ANSWER_ENV["EDGEQA_ENGINE__MAX_TOKENS"])
# In flight for a while (about a second here when the machine is quiet), done within minutes
# on a loaded machine; the grace has a wide margin over both.
MEDIUM_ANSWER_ENV = {"EDGEQA_ENGINE__CONTEXT_SIZE": "4096", "EDGEQA_ENGINE__MAX_TOKENS": "2000"}
MEDIUM = int(MEDIUM_ANSWER_ENV["EDGEQA_ENGINE__MAX_TOKENS"])
GENEROUS = 600


def streaming(question: str):
    """An event showing the answer to `question` being written (not yet final)."""
    return lambda e: e["type"] == "reply" and e["question"] == question and len(e["text"]) >= 20


def assert_closed_cleanly(db: Path) -> None:
    """The last connection was closed: SQLite checkpointed its WAL and removed it."""
    assert not db.with_name(db.name + "-wal").exists()


@pytest.mark.timeout(GENEROUS + 60)
async def test_with_a_generous_grace_the_answer_in_flight_completes(
    tmp_path: Path, tiny_model_path: Path
) -> None:
    db = tmp_path / "edgeqa.db"
    env = bot_env(
        db, tiny_model_path, **MEDIUM_ANSWER_ENV, EDGEQA_BOT__SHUTDOWN_GRACE=f"{GENEROUS}s"
    )
    async with BotProcess(env, tmp_path / "bot.log") as bot, bot.events() as stream:
        question = await bot.ask("thread-long1", "Tell me everything.")
        seen = await stream.until(streaming(question))
        assert not seen[-1]["final"]
        bot.send(signal.SIGTERM)
        signalled = time.monotonic()
        await bot.wait_log("shutting down")

        # New questions during the grace period, in another thread and in the same one.
        late = await bot.ask("thread-late1", "Are you there?")
        late_text = final_text(await answer_of(stream, late))
        same = await bot.ask("thread-long1", "And one more thing?")
        same_text = final_text(await answer_of(stream, same))

        events = await answer_of(stream, question)
        answer = final_text(events)
        assert await bot.wait_exit(within=GENEROUS + 15) == 0
        elapsed = time.monotonic() - signalled

    assert late_text == same_text == RESTARTING
    # They were told so while the answer was still being written.
    done_at = [i for i, e in enumerate(stream.seen) if e["type"] == "done"]
    order = [stream.seen[i]["question"] for i in done_at]
    assert order.index(late) < order.index(question) and order.index(same) < order.index(question)

    assert_closed_cleanly(db)
    assert INTERRUPTED_MARK not in answer
    [turn] = stored_turns(db, "thread-long1")
    assert (turn["question"], turn["answer"], turn["status"]) == (
        "Tell me everything.",
        stored_form(answer),
        "complete",
    )
    assert turn["completion_tokens"] == MEDIUM
    assert stored_turns(db, "thread-late1") == []
    assert elapsed < GENEROUS + 15


@pytest.mark.timeout(90)
async def test_with_a_tiny_grace_the_answer_is_cut_with_a_note_and_stored_interrupted(
    tmp_path: Path, tiny_model_path: Path
) -> None:
    db = tmp_path / "edgeqa.db"
    grace = 0.2
    env = bot_env(db, tiny_model_path, **LONG_ANSWER_ENV, EDGEQA_BOT__SHUTDOWN_GRACE=f"{grace}s")
    async with BotProcess(env, tmp_path / "bot.log") as bot, bot.events() as stream:
        question = await bot.ask("thread-long1", "Tell me everything.")
        waiting = await bot.ask("thread-long1", "And then?")  # queued behind it
        await stream.until(streaming(question))
        bot.send(signal.SIGTERM)
        signalled = time.monotonic()

        answer = final_text(await answer_of(stream, question))
        queued = await answer_of(stream, waiting)
        assert await bot.wait_exit(within=60) == 0
        elapsed = time.monotonic() - signalled

    assert_closed_cleanly(db)
    assert answer.endswith("\n\n" + INTERRUPTED_MARK)
    assert any(e["type"] == "reply" and "Queued" in e["text"] for e in queued)
    assert final_text(queued) == RESTARTING

    [turn] = stored_turns(db, "thread-long1")
    assert (turn["question"], turn["status"]) == ("Tell me everything.", "interrupted")
    assert turn["answer"] + "\n\n" + INTERRUPTED_MARK == answer
    assert 0 < turn["completion_tokens"] < LONG
    assert elapsed < grace + 15
