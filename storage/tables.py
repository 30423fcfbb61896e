"""Tables for conversations and their turns.

A conversation row exists per ConversationKey; its `last_active_at` is what expiry looks
at, so a thread stays alive as long as anyone talks in it. Turns hang off it with
ON DELETE CASCADE, so deleting a conversation (reset, expiry) removes its turns in the same
statement on both SQLite and PostgreSQL. `turns.platform` repeats the conversation's
platform so /forget can find a user's turns through one index without a join.

The migration in `storage/migrations/versions` creates exactly these tables; a test compares
the two so they cannot drift apart.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

KEY_LENGTH = 255
"""Longest platform / workspace / channel / thread / user id accepted (characters)."""

TURN_STATUSES = ("complete", "stopped", "interrupted", "error")

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite only auto-increments an `INTEGER PRIMARY KEY`; PostgreSQL gets 64-bit ids.
Id = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamps go in as UTC and always come back timezone-aware.

    SQLite has no time zones and returns naive values; storing naive UTC there keeps the
    text comparison used by expiry (`last_active_at < cutoff`) correct.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class ConversationRow(Base):
    __tablename__ = "conversations"
    __table_args__ = (
        UniqueConstraint("platform", "workspace", "channel", "thread"),
        Index(None, "last_active_at"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    platform: Mapped[str] = mapped_column(String(KEY_LENGTH))
    workspace: Mapped[str] = mapped_column(String(KEY_LENGTH))
    channel: Mapped[str] = mapped_column(String(KEY_LENGTH))
    thread: Mapped[str] = mapped_column(String(KEY_LENGTH))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_active_at: Mapped[datetime] = mapped_column(UTCDateTime())


class TurnRow(Base):
    __tablename__ = "turns"
    __table_args__ = (
        CheckConstraint("status IN ('complete', 'stopped', 'interrupted', 'error')", name="status"),
        Index(None, "conversation_id", "id"),
        Index(None, "platform", "user_id"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    conversation_id: Mapped[int] = mapped_column(
        Id, ForeignKey("conversations.id", ondelete="CASCADE")
    )
    platform: Mapped[str] = mapped_column(String(KEY_LENGTH))
    user_id: Mapped[str] = mapped_column(String(KEY_LENGTH))
    question: Mapped[str] = mapped_column(Text())
    answer: Mapped[str] = mapped_column(Text())
    status: Mapped[str] = mapped_column(String(16))
    prompt_tokens: Mapped[int] = mapped_column(Integer())
    completion_tokens: Mapped[int] = mapped_column(Integer())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


metadata = Base.metadata
conversations = cast(Table, ConversationRow.__table__)
turns = cast(Table, TurnRow.__table__)
