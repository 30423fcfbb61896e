"""What the core needs from storage, and nothing more.

Keeping the surface this small is what lets SQLite and PostgreSQL (and a test double, if a
test ever needs one) stand behind the same calls.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol

from bot.types import ConversationKey, Source

TurnStatus = Literal["complete", "stopped", "interrupted", "error"]


@dataclass(frozen=True, slots=True)
class Turn:
    """One question and its answer, oldest first when loaded."""

    user_id: str
    question: str
    answer: str
    status: TurnStatus
    prompt_tokens: int
    completion_tokens: int
    created_at: datetime
    sources: tuple[Source, ...] = ()  # the document passages it was answered from


@dataclass(frozen=True, slots=True)
class StorageStats:
    conversations: int
    turns: int
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True, slots=True)
class Scope:
    """A set of conversations: one platform, optionally narrowed to a workspace and a channel."""

    platform: str
    workspace: str | None = None
    channel: str | None = None


class Repository(Protocol):
    async def start(self) -> None:
        """Connect and bring the schema up to date (Alembic upgrade head)."""

    async def close(self) -> None: ...

    async def ping(self) -> bool:
        """True when the database answers (for /healthz)."""

    async def touch(self, key: ConversationKey) -> None:
        """Mark the conversation active now (creates it if new), so pruning spares it."""

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
        """Store a finished turn (with the passages it was answered from) in one
        transaction and mark the conversation active."""

    async def load_history(self, key: ConversationKey, limit: int = 200) -> list[Turn]:
        """The conversation's last `limit` turns, oldest first, each with its sources."""

    async def reset(self, key: ConversationKey) -> int:
        """Delete one conversation; returns the number of turns removed."""

    async def reset_scope(self, scope: Scope) -> int:
        """Delete every conversation in the scope; returns the number of conversations removed."""

    async def forget_user(self, platform: str, user_id: str) -> int:
        """Delete every turn the user wrote on the platform (and conversations left empty);
        returns the number of turns removed."""

    async def prune_expired(
        self, ttl_seconds: float, *, protect: Collection[ConversationKey] = ()
    ) -> int:
        """Delete conversations idle longer than the ttl, except `protect`; returns how many."""

    async def stats(self, scope: Scope | None = None) -> StorageStats: ...
