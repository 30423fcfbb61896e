"""The document passages an answer came from are stored with its turn and leave with it
(/reset, /forget, expiry), on SQLite and PostgreSQL."""

from __future__ import annotations

import math

from sqlalchemy import func, select

from bot.types import Source
from storage.sql import SqlRepository
from tests.storage_support import age, key

HOTELS = Source(
    number=1,
    title="Travel policy",
    location="policies/travel.md",
    url="https://intranet.example/policies/travel.md",
    heading="Travel > Hotels",
    collection="hr",
    score=0.82,
    text="Hotels: up to 180 EUR a night in Oslo.",
)
SHANGHAI = Source(
    number=2,
    title="差旅政策",
    location="政策/差旅.md",
    heading="住宿",
    collection="hr",
    score=0.41,
    text="上海的酒店每晚不超过 900 元。",
)


async def stored_sources(repo: SqlRepository) -> int:
    from storage.tables import turn_sources

    async with repo.db.connect() as conn:
        return int(
            (await conn.execute(select(func.count()).select_from(turn_sources))).scalar_one()
        )


async def test_a_turn_keeps_its_sources_in_order(repo: SqlRepository) -> None:
    k = key()
    await repo.append_turn(k, user_id="U1", question="no docs", answer="plain")
    await repo.append_turn(
        k, user_id="U1", question="hotel?", answer="180 EUR [1]", sources=[SHANGHAI, HOTELS]
    )
    first, second = await repo.load_history(k)
    assert first.sources == ()
    assert second.sources == (HOTELS, SHANGHAI)  # by number, whatever order they came in


async def test_a_score_that_is_not_a_number_is_stored_as_zero(repo: SqlRepository) -> None:
    odd = Source(number=1, title="t", location="a.md", score=math.nan, text="x\x00y")
    await repo.append_turn(key(), user_id="U1", question="q", answer="a", sources=[odd])
    [turn] = await repo.load_history(key())
    assert turn.sources[0].score == 0.0
    assert turn.sources[0].text == "xy"  # NUL is not storable on PostgreSQL


async def test_forget_reset_and_expiry_delete_the_sources_too(repo: SqlRepository) -> None:
    mine, other, old = key("C1"), key("C2"), key("C3")
    await repo.append_turn(mine, user_id="alice", question="q", answer="a", sources=[HOTELS])
    await repo.append_turn(mine, user_id="bob", question="q", answer="a", sources=[HOTELS])
    await repo.append_turn(other, user_id="carol", question="q", answer="a", sources=[HOTELS])
    await repo.append_turn(old, user_id="dave", question="q", answer="a", sources=[SHANGHAI])
    assert await stored_sources(repo) == 4

    assert await repo.forget_user("slack", "alice") == 1
    assert await stored_sources(repo) == 3
    [left] = await repo.load_history(mine)
    assert left.user_id == "bob" and left.sources == (HOTELS,)

    assert await repo.reset(other) == 1
    assert await stored_sources(repo) == 2

    await age(repo, old, 3600)
    assert await repo.prune_expired(60) == 1
    assert await stored_sources(repo) == 1
    assert (await repo.load_history(mine))[0].sources == (HOTELS,)
