"""Tables for conversations and their turns.

A conversation row exists per ConversationKey; its `last_active_at` is what expiry looks
at, so a thread stays alive as long as anyone talks in it. Turns hang off it with
ON DELETE CASCADE, so deleting a conversation (reset, expiry) removes its turns in the same
statement on both SQLite and PostgreSQL. `turns.platform` repeats the conversation's
platform so /forget can find a user's turns through one index without a join.

A turn answered from the company's documents keeps the passages it was given in
`turn_sources` (ON DELETE CASCADE from turns), so /sources and the browser chat's history
can show them later, and /forget, /reset and expiry remove them with the turn.

The migrations in `storage/migrations/versions` create exactly these tables; a test compares
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
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
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


class TurnSourceRow(Base):
    __tablename__ = "turn_sources"
    __table_args__ = (Index(None, "turn_id", "number"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    turn_id: Mapped[int] = mapped_column(Id, ForeignKey("turns.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer())  # its [n] in the prompt and the answer
    title: Mapped[str] = mapped_column(Text())
    location: Mapped[str] = mapped_column(Text())
    url: Mapped[str] = mapped_column(Text())
    heading: Mapped[str] = mapped_column(Text())
    collection: Mapped[str] = mapped_column(String(KEY_LENGTH))
    score: Mapped[float] = mapped_column(Float())
    text: Mapped[str] = mapped_column(Text())  # the passage as the model read it


metadata = Base.metadata
conversations = cast(Table, ConversationRow.__table__)
turns = cast(Table, TurnRow.__table__)
turn_sources = cast(Table, TurnSourceRow.__table__)


# --- The knowledge base's index (knowledge/) -------------------------------------------
#
# One row per indexed file and per chunk of it. A document and its chunks are written in one
# transaction, so an interrupted sync leaves either the old or the new version of a file.
# The keyword index is not declared here because it differs per database: SQLite has the FTS5
# table `kb_fts` (external content over kb_chunks.search_text, kept in step by triggers) and
# PostgreSQL a generated tsvector column `kb_chunks.search_vector` with a GIN index; both are
# created by migration 0002 and left out of schema comparisons by `include_object`.

LOCATION_LENGTH = 1000
"""Longest document location (path relative to its source) stored."""


class KbDocumentRow(Base):
    __tablename__ = "kb_documents"
    __table_args__ = (Index(None, "collection"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    # sha256 of source + location: unique, where the paths themselves are too long to index.
    key: Mapped[str] = mapped_column(String(64), unique=True)
    source: Mapped[str] = mapped_column(String(LOCATION_LENGTH))  # the source's path as configured
    location: Mapped[str] = mapped_column(String(LOCATION_LENGTH))  # relative to the source
    collection: Mapped[str] = mapped_column(String(KEY_LENGTH))
    title: Mapped[str] = mapped_column(Text())
    url: Mapped[str] = mapped_column(Text())
    content_hash: Mapped[str] = mapped_column(String(64))  # sha256 of the file's bytes
    size: Mapped[int] = mapped_column(BigInteger())
    mtime_ns: Mapped[int] = mapped_column(BigInteger())
    # What embedded the chunks ("" = none): another model means the vectors are redone.
    embedding_model: Mapped[str] = mapped_column(String(KEY_LENGTH))
    chunk_count: Mapped[int] = mapped_column(Integer())
    indexed_at: Mapped[datetime] = mapped_column(UTCDateTime())


class KbChunkRow(Base):
    __tablename__ = "kb_chunks"
    __table_args__ = (Index(None, "document_id", "ordinal"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    document_id: Mapped[int] = mapped_column(Id, ForeignKey("kb_documents.id", ondelete="CASCADE"))
    ordinal: Mapped[int] = mapped_column(Integer())
    heading: Mapped[str] = mapped_column(Text())
    text: Mapped[str] = mapped_column(Text())
    # The text as the keyword index sees it: CJK runs segmented into words separated by spaces.
    search_text: Mapped[str] = mapped_column(Text())
    tokens: Mapped[int] = mapped_column(Integer())  # in the chat model's tokens
    # float32, L2-normalised; None without an embedding model.
    embedding: Mapped[bytes | None] = mapped_column(LargeBinary(), nullable=True)


class KbProblemRow(Base):
    """Files the last sync skipped and why, for `edgeqa kb status` (any process)."""

    __tablename__ = "kb_problems"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(String(LOCATION_LENGTH))
    location: Mapped[str] = mapped_column(Text())
    reason: Mapped[str] = mapped_column(Text())
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime())


class KbSyncRow(Base):
    """One sync pass: when it ran and what it changed (finished_at None = cut short)."""

    __tablename__ = "kb_syncs"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    added: Mapped[int] = mapped_column(Integer())
    updated: Mapped[int] = mapped_column(Integer())
    removed: Mapped[int] = mapped_column(Integer())
    unchanged: Mapped[int] = mapped_column(Integer())
    failed: Mapped[int] = mapped_column(Integer())


kb_documents = cast(Table, KbDocumentRow.__table__)
kb_chunks = cast(Table, KbChunkRow.__table__)
kb_problems = cast(Table, KbProblemRow.__table__)
kb_syncs = cast(Table, KbSyncRow.__table__)

KB_FTS_TABLE = "kb_fts"
KB_SEARCH_VECTOR = "search_vector"


def include_object(
    obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    """Alembic's filter: the per-database keyword index is not part of the declared schema."""
    if type_ == "table" and name is not None and name.startswith(KB_FTS_TABLE):
        return False  # the FTS5 table and its shadow tables (kb_fts_data, ...)
    if type_ == "column" and name == KB_SEARCH_VECTOR:
        return False
    return not (type_ == "index" and name is not None and KB_SEARCH_VECTOR in name)
