"""The Repository on SQLAlchemy: SQLite (embedded default) or PostgreSQL.

Every write is one short transaction whose first statement is a write, so SQLite takes its
write lock at once (waiting out other processes through the busy timeout) and PostgreSQL
needs no retry loop: the conversation is created with INSERT ... ON CONFLICT DO UPDATE,
which is atomic even when two processes store the first turn of the same thread at once.
Deletes re-check their condition in the DELETE itself, so running them twice, or from two
processes, removes each row exactly once.

Input is made storable before it reaches the database (bot.text.storable) and is
validated before the transaction starts, so bad input can fail one call but never touches
what is already stored.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Collection, Iterable, Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy import ColumnElement, and_, delete, exists, func, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from bot.text import storable
from bot.types import ConversationKey, Source
from storage.base import Scope, StorageStats, Turn, TurnStatus
from storage.database import create_db_engine, split_schema
from storage.migrate import upgrade, upgrade_engine
from storage.tables import KEY_LENGTH, TURN_STATUSES, conversations, turn_sources, turns

log = logging.getLogger(__name__)

MAX_TOKENS = 2**31 - 1
PRUNE_BATCH = 500
"""Conversations examined per prune step; keeps each SQLite write lock short."""


class SqlRepository:
    """Conversation history in a SQL database reached through `url` (async driver).

    `start()` creates or upgrades the schema; `migrate=False` skips that for a caller that
    has already run `storage.migrate.upgrade`.
    """

    def __init__(self, url: str, *, migrate: bool = True) -> None:
        self.url = url
        self._migrate = migrate
        self._db: AsyncEngine | None = None

    @property
    def db(self) -> AsyncEngine:
        if self._db is None:
            raise RuntimeError("SqlRepository.start() has not been called")
        return self._db

    async def start(self) -> None:
        if self._db is not None:
            return
        engine = create_db_engine(self.url)
        try:
            if self._migrate:
                if engine.url.get_backend_name() == "sqlite" and engine.url.database not in (
                    None,
                    "",
                    ":memory:",
                ):
                    # A separate engine: migrations need foreign keys off on SQLite.
                    await upgrade(self.url)
                else:
                    await upgrade_engine(engine, schema=split_schema(self.url)[1])
        except BaseException:
            await engine.dispose()
            raise
        self._db = engine

    async def close(self) -> None:
        if self._db is not None:
            await self._db.dispose()
            self._db = None

    async def ping(self) -> bool:
        try:
            async with asyncio.timeout(5):
                async with self.db.connect() as conn:
                    return (await conn.execute(text("SELECT 1"))).scalar() == 1
        except Exception as exc:
            log.warning("database ping failed: %s", type(exc).__name__)
            return False

    async def touch(self, key: ConversationKey) -> None:
        values = _key_values(key)
        async with self.db.begin() as conn:
            await self._upsert_conversation(conn, values, _now())

    async def append_turn(
        self,
        key: ConversationKey,
        *,
        user_id: str,
        question: str,
        answer: str,
        status: TurnStatus = "complete",
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        sources: Sequence[Source] = (),
    ) -> None:
        if status not in TURN_STATUSES:
            raise ValueError(f"unknown turn status {status!r}")
        values = _key_values(key)
        row = {
            "platform": values["platform"],
            "user_id": _key_part("user_id", user_id),
            "question": storable(question),
            "answer": storable(answer),
            "status": status,
            "prompt_tokens": _tokens(prompt_tokens),
            "completion_tokens": _tokens(completion_tokens),
        }
        cited = [_source_row(source) for source in sources]
        now = _now()
        async with self.db.begin() as conn:
            conversation_id = await self._upsert_conversation(conn, values, now)
            turn_id = (
                await conn.execute(
                    turns.insert()
                    .values(conversation_id=conversation_id, created_at=now, **row)
                    .returning(turns.c.id)
                )
            ).scalar_one()
            if cited:
                await conn.execute(
                    turn_sources.insert(), [{**c, "turn_id": turn_id} for c in cited]
                )

    async def load_history(self, key: ConversationKey, limit: int = 200) -> list[Turn]:
        if limit <= 0:
            return []
        query = (
            select(
                turns.c.id,
                turns.c.user_id,
                turns.c.question,
                turns.c.answer,
                turns.c.status,
                turns.c.prompt_tokens,
                turns.c.completion_tokens,
                turns.c.created_at,
            )
            .join(conversations, conversations.c.id == turns.c.conversation_id)
            .where(_key_filter(_key_values(key)))
            .order_by(turns.c.id.desc())
            .limit(limit)
        )
        async with self.db.connect() as conn:
            rows = (await conn.execute(query)).all()
            found: dict[int, list[Source]] = {}
            ids = [row[0] for row in rows]
            for chunk in _chunks(ids, 1000):
                cited = await conn.execute(
                    select(
                        turn_sources.c.turn_id,
                        turn_sources.c.number,
                        turn_sources.c.title,
                        turn_sources.c.location,
                        turn_sources.c.url,
                        turn_sources.c.heading,
                        turn_sources.c.collection,
                        turn_sources.c.score,
                        turn_sources.c.text,
                    )
                    .where(turn_sources.c.turn_id.in_(chunk))
                    .order_by(turn_sources.c.turn_id, turn_sources.c.number)
                )
                for turn_id, *fields in cited:
                    found.setdefault(turn_id, []).append(Source(*fields))
        return [
            Turn(
                user_id=row.user_id,
                question=row.question,
                answer=row.answer,
                status=row.status,
                prompt_tokens=row.prompt_tokens,
                completion_tokens=row.completion_tokens,
                created_at=row.created_at,
                sources=tuple(found.get(row.id, ())),
            )
            for row in reversed(rows)
        ]

    async def reset(self, key: ConversationKey) -> int:
        match = _key_filter(_key_values(key))
        async with self.db.begin() as conn:
            ids = select(conversations.c.id).where(match).scalar_subquery()
            removed = await conn.execute(delete(turns).where(turns.c.conversation_id == ids))
            await conn.execute(delete(conversations).where(match))
        return int(removed.rowcount)

    async def reset_scope(self, scope: Scope) -> int:
        async with self.db.begin() as conn:
            result = await conn.execute(delete(conversations).where(*_scope_filter(scope)))
        return int(result.rowcount)

    async def forget_user(self, platform: str, user_id: str) -> int:
        platform = _key_part("platform", platform)
        user_id = _key_part("user_id", user_id)
        async with self.db.begin() as conn:
            result = await conn.execute(
                delete(turns)
                .where(turns.c.platform == platform, turns.c.user_id == user_id)
                .returning(turns.c.conversation_id)
            )
            owners = [row[0] for row in result]
            touched = sorted(set(owners))
            for chunk in _chunks(touched, 1000):
                await conn.execute(
                    delete(conversations).where(
                        conversations.c.id.in_(chunk),
                        ~exists().where(turns.c.conversation_id == conversations.c.id),
                    )
                )
        if owners and self.db.dialect.name == "sqlite":
            await self._checkpoint()
        return len(owners)

    async def _checkpoint(self) -> None:
        """SQLite's write-ahead log keeps the old pages of what was just deleted (and the
        main file keeps them until a checkpoint), so a forgotten user's words would stay on
        disk for a while. Copying the log back now and truncating it leaves no copy."""
        try:
            async with self.db.connect() as conn:
                await conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        except DBAPIError as exc:  # the rows are gone either way; only the copies remain
            log.warning("could not checkpoint the SQLite log after a /forget: %s", exc)

    async def prune_expired(
        self, ttl_seconds: float, *, protect: Collection[ConversationKey] = ()
    ) -> int:
        if ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be positive")
        cutoff = _now() - timedelta(seconds=ttl_seconds)
        spared = {tuple(_key_values(key).values()) for key in protect}
        if self.db.dialect.name == "postgresql":
            return await self._prune_postgresql(cutoff, spared)
        removed, after = 0, 0
        while True:  # SQLite: one short write transaction per batch
            async with self.db.begin() as conn:
                count, after, more = await self._prune_batch(conn, cutoff, spared, after)
            removed += count
            if not more:
                return removed

    async def stats(self, scope: Scope | None = None) -> StorageStats:
        where = _scope_filter(scope) if scope is not None else []
        async with self.db.connect() as conn:
            convs = (
                await conn.execute(select(func.count()).select_from(conversations).where(*where))
            ).scalar_one()
            count, prompt, completion = (
                await conn.execute(
                    select(
                        func.count(turns.c.id),
                        func.coalesce(func.sum(turns.c.prompt_tokens), 0),
                        func.coalesce(func.sum(turns.c.completion_tokens), 0),
                    )
                    .select_from(turns.join(conversations))
                    .where(*where)
                )
            ).one()
        return StorageStats(int(convs), int(count), int(prompt), int(completion))

    async def _prune_postgresql(self, cutoff: datetime, spared: set[tuple[str, ...]]) -> int:
        """One transaction under an advisory lock: a second process skips instead of
        deleting the same rows alongside (which would be safe, just wasted work)."""
        async with self.db.begin() as conn:
            got = await conn.execute(
                text(
                    "SELECT pg_try_advisory_xact_lock("
                    "hashtext('edgeqa.prune.' || coalesce(current_schema(), '')))"
                )
            )
            if not got.scalar():
                log.debug("another process is pruning; skipped")
                return 0
            removed, after, more = 0, 0, True
            while more:
                count, after, more = await self._prune_batch(conn, cutoff, spared, after)
                removed += count
        return removed

    async def _prune_batch(
        self, conn: AsyncConnection, cutoff: datetime, spared: set[tuple[str, ...]], after: int
    ) -> tuple[int, int, bool]:
        """Delete expired conversations with id > `after`; returns (removed, last id, more)."""
        expired = conversations.c.last_active_at < cutoff
        rows = (
            await conn.execute(
                select(
                    conversations.c.id,
                    conversations.c.platform,
                    conversations.c.workspace,
                    conversations.c.channel,
                    conversations.c.thread,
                )
                .where(expired, conversations.c.id > after)
                .order_by(conversations.c.id)
                .limit(PRUNE_BATCH)
            )
        ).all()
        if not rows:
            return 0, after, False
        doomed = [row[0] for row in rows if tuple(row[1:]) not in spared]
        removed = 0
        if doomed:
            # `expired` again: a touch between the SELECT and here keeps the conversation.
            result = await conn.execute(
                delete(conversations).where(conversations.c.id.in_(doomed), expired)
            )
            removed = int(result.rowcount)
        return removed, int(rows[-1][0]), len(rows) == PRUNE_BATCH

    async def _upsert_conversation(
        self, conn: AsyncConnection, values: dict[str, str], now: datetime
    ) -> int:
        insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
        statement = (
            insert(conversations)
            .values(created_at=now, last_active_at=now, **values)
            .on_conflict_do_update(
                index_elements=list(values),
                set_={"last_active_at": now},
            )
            .returning(conversations.c.id)
        )
        return int((await conn.execute(statement)).scalar_one())


def _now() -> datetime:
    return datetime.now(UTC)


def _key_part(name: str, value: str) -> str:
    cleaned = storable(str(value))
    if len(cleaned) > KEY_LENGTH:
        raise ValueError(f"{name} is longer than {KEY_LENGTH} characters")
    return cleaned


def _key_values(key: ConversationKey) -> dict[str, str]:
    return {
        "platform": _key_part("platform", key.platform),
        "workspace": _key_part("workspace", key.workspace),
        "channel": _key_part("channel", key.channel),
        "thread": _key_part("thread", key.thread),
    }


def _key_filter(values: dict[str, str]) -> ColumnElement[bool]:
    return and_(*(conversations.c[name] == value for name, value in values.items()))


def _scope_filter(scope: Scope) -> list[ColumnElement[bool]]:
    where = [conversations.c.platform == _key_part("platform", scope.platform)]
    if scope.workspace is not None:
        where.append(conversations.c.workspace == _key_part("workspace", scope.workspace))
    if scope.channel is not None:
        where.append(conversations.c.channel == _key_part("channel", scope.channel))
    return where


def _source_row(source: Source) -> dict[str, object]:
    score = float(source.score)
    return {
        "number": max(0, min(int(source.number), MAX_TOKENS)),
        "title": storable(source.title),
        "location": storable(source.location),
        "url": storable(source.url),
        "heading": storable(source.heading),
        "collection": _key_part("collection", source.collection),
        "score": score if math.isfinite(score) else 0.0,
        "text": storable(source.text),
    }


def _tokens(value: int) -> int:
    return max(0, min(int(value), MAX_TOKENS))


def _chunks(items: Sequence[int], size: int) -> Iterable[Sequence[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
