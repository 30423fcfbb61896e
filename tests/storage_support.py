"""Shared helpers for the storage tests: one database per test, SQLite or PostgreSQL.

PostgreSQL runs only when EDGEQA_TEST_DATABASE_URL is set. Each test gets its own schema
(`?schema=` on the URL, which storage.database turns into the search_path), dropped afterwards,
so parallel and repeated runs on one server never see each other's rows.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import and_, func, select, text, update
from sqlalchemy.engine import make_url

from bot.types import ConversationKey
from storage.database import create_db_engine
from storage.sql import SqlRepository
from storage.tables import conversations, turns

PG_URL = os.environ.get("EDGEQA_TEST_DATABASE_URL", "")

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param(
        "postgresql",
        id="postgresql",
        marks=pytest.mark.skipif(
            not PG_URL, reason="EDGEQA_TEST_DATABASE_URL is not set (no PostgreSQL to test)"
        ),
    ),
]


@asynccontextmanager
async def database_url(backend: str, tmp_path: Path) -> AsyncIterator[str]:
    """A URL to an empty database of the backend, cleaned up afterwards."""
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'history.db'}"
        return
    schema = f"edgeqa_test_{os.getpid()}_{uuid.uuid4().hex[:10]}"
    base = make_url(PG_URL).difference_update_query(["schema"])
    url = base.update_query_dict({"schema": schema}).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        admin = create_db_engine(base)
        try:
            async with admin.begin() as conn:
                await conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        finally:
            await admin.dispose()


@asynccontextmanager
async def open_repo(url: str) -> AsyncIterator[SqlRepository]:
    repo = SqlRepository(url)
    await repo.start()
    try:
        yield repo
    finally:
        await repo.close()


def key(channel: str = "C1", thread: str = "", platform: str = "slack", ws: str = "T1") -> Any:
    return ConversationKey(platform, ws, channel, thread)


def _match(k: ConversationKey) -> Any:
    return and_(
        conversations.c.platform == k.platform,
        conversations.c.workspace == k.workspace,
        conversations.c.channel == k.channel,
        conversations.c.thread == k.thread,
    )


async def age(repo: SqlRepository, k: ConversationKey, seconds: float) -> None:
    """Pretend the conversation was last active `seconds` ago (no sleeping in tests)."""
    past = datetime.now(UTC) - timedelta(seconds=seconds)
    async with repo.db.begin() as conn:
        result = await conn.execute(
            update(conversations).where(_match(k)).values(last_active_at=past)
        )
    assert result.rowcount == 1


async def insert_idle(repo: SqlRepository, keys: Iterable[ConversationKey], seconds: float) -> None:
    """Conversations (no turns) last active `seconds` ago, inserted in one statement: many
    of them quickly, without going through the repository."""
    past = datetime.now(UTC) - timedelta(seconds=seconds)
    rows = [
        {
            "platform": k.platform,
            "workspace": k.workspace,
            "channel": k.channel,
            "thread": k.thread,
            "created_at": past,
            "last_active_at": past,
        }
        for k in keys
    ]
    async with repo.db.begin() as conn:
        await conn.execute(conversations.insert(), rows)


async def last_active(repo: SqlRepository, k: ConversationKey) -> datetime:
    async with repo.db.connect() as conn:
        value = (
            await conn.execute(select(conversations.c.last_active_at).where(_match(k)))
        ).scalar_one()
    assert isinstance(value, datetime)
    return value


async def count_conversations(repo: SqlRepository) -> int:
    async with repo.db.connect() as conn:
        return int(
            (await conn.execute(select(func.count()).select_from(conversations))).scalar_one()
        )


async def count_turns(repo: SqlRepository, **where: str) -> int:
    """Rows really in the turns table (optionally only those matching column=value)."""
    query = select(func.count()).select_from(turns)
    for column, value in where.items():
        query = query.where(turns.c[column] == value)
    async with repo.db.connect() as conn:
        return int((await conn.execute(query)).scalar_one())


async def has_conversation(repo: SqlRepository, k: ConversationKey) -> bool:
    async with repo.db.connect() as conn:
        found = (await conn.execute(select(conversations.c.id).where(_match(k)))).first()
    return found is not None
