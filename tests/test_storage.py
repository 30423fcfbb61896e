"""The repository's operations on SQLite and (when configured) PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from sqlalchemy import delete, text

from bot.config import HistorySettings
from storage.base import Scope
from storage.sql import SqlRepository
from storage.tables import conversations
from tests.harness import free_port
from tests.storage_support import (
    age,
    count_conversations,
    count_turns,
    has_conversation,
    key,
    last_active,
    open_repo,
)


async def test_history_comes_back_oldest_first_with_every_field(repo):
    k = key(thread="1700000000.000100")
    before = datetime.now(UTC)
    await repo.append_turn(
        k, user_id="U1", question="q1", answer="a1", prompt_tokens=11, completion_tokens=5
    )
    await repo.append_turn(k, user_id="U2", question="q2", answer="a2", status="stopped")
    await repo.append_turn(k, user_id="U1", question="q3", answer="", status="error")
    history = await repo.load_history(k)
    assert [(t.user_id, t.question, t.answer, t.status) for t in history] == [
        ("U1", "q1", "a1", "complete"),
        ("U2", "q2", "a2", "stopped"),
        ("U1", "q3", "", "error"),
    ]
    assert (history[0].prompt_tokens, history[0].completion_tokens) == (11, 5)
    assert all(t.created_at.tzinfo is not None and t.created_at >= before for t in history)
    assert history[0].created_at <= history[1].created_at <= history[2].created_at


async def test_every_status_round_trips(repo):
    k = key()
    for status in ("complete", "stopped", "interrupted", "error"):
        await repo.append_turn(k, user_id="U", question=status, answer="", status=status)
    assert [t.status for t in await repo.load_history(k)] == [
        "complete",
        "stopped",
        "interrupted",
        "error",
    ]


async def test_limit_keeps_the_latest_turns_oldest_first(repo):
    k = key()
    for i in range(7):
        await repo.append_turn(k, user_id="U", question=f"q{i}", answer=f"a{i}")
    assert [t.question for t in await repo.load_history(k, limit=3)] == ["q4", "q5", "q6"]
    assert await repo.load_history(k, limit=0) == []
    assert await repo.load_history(key(channel="never-used")) == []


async def test_each_key_part_separates_conversations(repo):
    keys = [
        key(),
        key(thread="t"),
        key(channel="C2"),
        key(ws="T2"),
        key(platform="telegram"),
    ]
    for i, k in enumerate(keys):
        await repo.append_turn(k, user_id="U", question=f"q{i}", answer="a")
    for i, k in enumerate(keys):
        assert [t.question for t in await repo.load_history(k)] == [f"q{i}"]
    assert await count_conversations(repo) == len(keys)


async def test_touch_creates_the_conversation_and_marks_it_active(repo):
    k = key()
    await repo.touch(k)
    assert await has_conversation(repo, k)
    assert (await repo.stats()).conversations == 1
    assert (await repo.stats()).turns == 0
    await age(repo, k, 3600)
    old = await last_active(repo, k)
    await repo.touch(k)
    assert (await last_active(repo, k) - old).total_seconds() > 3000
    assert await count_conversations(repo) == 1


async def test_append_marks_the_conversation_active(repo):
    k = key()
    await repo.append_turn(k, user_id="U", question="q", answer="a")
    await age(repo, k, 3600)
    old = await last_active(repo, k)
    await repo.append_turn(k, user_id="U", question="q2", answer="a2")
    assert (await last_active(repo, k) - old).total_seconds() > 3000


async def test_reset_deletes_one_conversation_and_its_turns(repo):
    k, other = key(thread="t1"), key(thread="t2")
    for i in range(3):
        await repo.append_turn(k, user_id="U", question=f"q{i}", answer="a")
    await repo.append_turn(other, user_id="U", question="keep", answer="a")
    assert await repo.reset(k) == 3
    assert not await has_conversation(repo, k)
    assert await count_turns(repo) == 1
    assert [t.question for t in await repo.load_history(other)] == ["keep"]
    assert await repo.reset(k) == 0
    assert await repo.reset(key(channel="unknown")) == 0


async def test_reset_scope_by_platform_workspace_and_channel(repo):
    layout = [
        key("C1", "a", "slack", "T1"),
        key("C1", "b", "slack", "T1"),
        key("C2", "", "slack", "T1"),
        key("C1", "", "slack", "T2"),
        key("C1", "", "telegram", ""),
    ]
    for k in layout:
        await repo.append_turn(k, user_id="U", question="q", answer="a")
    assert await repo.reset_scope(Scope("slack", "T1", "C1")) == 2
    assert await count_conversations(repo) == 3
    assert await repo.reset_scope(Scope("slack", "T1")) == 1
    assert await has_conversation(repo, layout[3])
    assert await repo.reset_scope(Scope("slack")) == 1
    assert await repo.reset_scope(Scope("slack")) == 0
    assert await has_conversation(repo, layout[4])
    assert await count_turns(repo) == 1  # the cascade took the turns along


async def test_forget_user_really_deletes_their_turns(repo):
    alone, shared, elsewhere = key("C1"), key("C2"), key("C1", platform="telegram", ws="")
    await repo.append_turn(alone, user_id="U1", question="secret 1", answer="a")
    await repo.append_turn(alone, user_id="U1", question="secret 2", answer="a")
    await repo.append_turn(shared, user_id="U1", question="secret 3", answer="a")
    await repo.append_turn(shared, user_id="U2", question="other user", answer="a")
    await repo.append_turn(elsewhere, user_id="U1", question="same id, other platform", answer="a")

    assert await repo.forget_user("slack", "U1") == 3

    assert await count_turns(repo, platform="slack", user_id="U1") == 0
    assert await count_turns(repo, user_id="U1") == 1  # only the Telegram one
    assert not await has_conversation(repo, alone)  # left empty, so gone too
    assert [t.question for t in await repo.load_history(shared)] == ["other user"]
    assert await count_turns(repo) == 2
    assert await repo.forget_user("slack", "U1") == 0


async def test_forget_user_spares_conversations_only_touched(repo):
    waiting = key("C9")
    await repo.touch(waiting)  # a question being answered, no turn yet
    await repo.append_turn(key("C1"), user_id="U1", question="q", answer="a")
    assert await repo.forget_user("slack", "U1") == 1
    assert await has_conversation(repo, waiting)


async def test_stats_count_conversations_turns_and_tokens(repo):
    await repo.append_turn(key("C1"), user_id="U", question="q", answer="a", prompt_tokens=10)
    await repo.append_turn(
        key("C1"), user_id="U", question="q", answer="a", prompt_tokens=5, completion_tokens=7
    )
    await repo.append_turn(key("C2"), user_id="U", question="q", answer="a", completion_tokens=3)
    await repo.append_turn(
        key("C1", platform="telegram", ws=""),
        user_id="U",
        question="q",
        answer="a",
        prompt_tokens=100,
    )
    whole = await repo.stats()
    assert (whole.conversations, whole.turns, whole.prompt_tokens, whole.completion_tokens) == (
        3,
        4,
        115,
        10,
    )
    c1 = await repo.stats(Scope("slack", "T1", "C1"))
    assert (c1.conversations, c1.turns, c1.prompt_tokens, c1.completion_tokens) == (1, 2, 15, 7)
    slack = await repo.stats(Scope("slack"))
    assert (slack.conversations, slack.turns) == (2, 3)
    empty = await repo.stats(Scope("nowhere"))
    assert (empty.conversations, empty.turns, empty.prompt_tokens) == (0, 0, 0)


async def test_token_counts_are_clamped_to_what_a_column_holds(repo):
    await repo.append_turn(
        key(), user_id="U", question="q", answer="a", prompt_tokens=-5, completion_tokens=10**12
    )
    (turn,) = await repo.load_history(key())
    assert (turn.prompt_tokens, turn.completion_tokens) == (0, 2**31 - 1)


TEXTS = {
    "nul": ("before\x00after\x00", "beforeafter"),
    "lone high surrogate": ("smile \ud83d please", "smile \ufffd please"),
    "lone low surrogate": ("\ude00 at start", "\ufffd at start"),
    "surrogate pair as halves": ("ok \ud83d\ude00", "ok \U0001f600"),
    "emoji and ZWJ": ("👩‍👩‍👧‍👦 🏳️‍🌈 🇺🇦", "👩‍👩‍👧‍👦 🏳️‍🌈 🇺🇦"),
    "RTL with marks": ("שלום \u202eעולם\u202c مرحبا", "שלום \u202eעולם\u202c مرحبا"),
    "controls and quotes": ("a\tb\r\n\x1b[31m'; DROP TABLE turns; --\"\\", None),
    "100 KB": ("ж" * 50_000 + "x" * 50_000, None),
    "empty": ("", ""),
}


@pytest.mark.parametrize("name", list(TEXTS))
async def test_anything_a_user_can_type_round_trips(repo, name):
    raw, expected = TEXTS[name]
    expected = raw if expected is None else expected
    k = key(thread=name)
    await repo.append_turn(k, user_id="U", question=raw, answer=raw + raw)
    (turn,) = await repo.load_history(k)
    assert turn.question == expected
    assert turn.answer == expected + expected


async def test_odd_characters_in_keys_and_user_ids_work_everywhere(repo):
    k = key(channel="chan\x00nel", thread="\ud83d")
    await repo.append_turn(k, user_id="user\x00\udfff", question="q", answer="a")
    assert [t.user_id for t in await repo.load_history(k)] == ["user\ufffd"]
    assert (await repo.stats(Scope("slack", "T1", "chan\x00nel"))).turns == 1
    assert await repo.forget_user("slack", "user\x00\udfff") == 1
    assert await repo.reset(k) == 0
    assert await count_conversations(repo) == 0


async def test_bad_input_fails_alone_and_loses_nothing(repo):
    k = key()
    await repo.append_turn(k, user_id="U", question="kept", answer="kept")
    with pytest.raises(ValueError):
        await repo.append_turn(k, user_id="U", question="q", answer="a", status="bogus")
    with pytest.raises(ValueError):
        await repo.append_turn(key(thread="x" * 300), user_id="U", question="q", answer="a")
    with pytest.raises(ValueError):
        await repo.append_turn(k, user_id="U" * 256, question="q", answer="a")
    assert [t.question for t in await repo.load_history(k)] == ["kept"]
    await repo.append_turn(k, user_id="U", question="after", answer="a")
    assert [t.question for t in await repo.load_history(k)] == ["kept", "after"]


async def test_two_writers_start_the_same_new_conversation_at_once(url):
    async with open_repo(url) as first, open_repo(url) as second:
        k = key(thread="race")
        await asyncio.gather(
            *(
                repo.append_turn(k, user_id="U", question=f"{name}{i}", answer="a")
                for i in range(10)
                for name, repo in (("a", first), ("b", second))
            )
        )
        assert await count_conversations(first) == 1
        assert await count_turns(first) == 20
        assert len(await second.load_history(k)) == 20


async def test_deleting_a_conversation_cascades_to_its_turns(repo):
    # Proves foreign keys are enforced (SQLite has them off unless told on every connection).
    await repo.append_turn(key(), user_id="U", question="q", answer="a")
    async with repo.db.begin() as conn:
        await conn.execute(delete(conversations))
    assert await count_turns(repo) == 0


async def test_sqlite_runs_in_wal_mode_with_foreign_keys_and_busy_timeout(tmp_path):
    async with open_repo(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}") as repo:
        # A fresh connection each time: the settings must hold for every one of them.
        for _ in range(2):
            async with repo.db.connect() as conn:
                assert (await conn.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
                assert (await conn.execute(text("PRAGMA foreign_keys"))).scalar() == 1
                assert (await conn.execute(text("PRAGMA busy_timeout"))).scalar_one() >= 1000
            await repo.db.dispose()


async def test_default_url_creates_its_data_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    async with open_repo(HistorySettings().database_url) as repo:
        await repo.append_turn(key(), user_id="U", question="q", answer="a")
    assert (tmp_path / "data" / "edgeqa.db").is_file()


async def test_in_memory_sqlite_works_for_quick_setups():
    async with open_repo("sqlite+aiosqlite://") as repo:
        await repo.append_turn(key(), user_id="U", question="q", answer="a")
        assert [t.question for t in await repo.load_history(key())] == ["q"]


async def test_ping_tells_whether_the_database_answers(repo):
    assert await repo.ping() is True
    down = SqlRepository(f"postgresql+asyncpg://nobody@127.0.0.1:{free_port()}/x", migrate=False)
    await down.start()
    try:
        assert await down.ping() is False
    finally:
        await down.close()
