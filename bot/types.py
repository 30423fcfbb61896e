"""The few values that cross the boundary between adapters and the core.

Adapters translate their platform's payloads into these and nothing platform-specific
travels further, so the core can be tested with plain values and new platforms plug in
without touching it.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class ConversationKey:
    """Identifies one conversation (a thread's context) across the whole bot.

    `workspace` is a Slack team id (empty where a platform has none), `channel` the chat or
    channel id, `thread` the thread / reply chain / topic id ("" for a chat's main line).
    """

    platform: str
    workspace: str
    channel: str
    thread: str = ""

    def __str__(self) -> str:
        return f"{self.platform}:{self.workspace}:{self.channel}:{self.thread}"


@dataclass(frozen=True, slots=True)
class IncomingMessage:
    """A message the bot was addressed with, already stripped of any platform mention."""

    key: ConversationKey
    user_id: str
    text: str
    is_direct: bool = False
    mentions_bot: bool = False
    user_name: str = ""
    message_id: str = ""


@dataclass(frozen=True, slots=True)
class MessageRef:
    """A message the bot sent and may edit later.

    `extra` holds whatever the adapter needs to edit it again (a Telegram draft id, a
    Slack stream handle); the core never looks inside.
    """

    key: ConversationKey
    message_id: str
    extra: tuple[tuple[str, str], ...] = field(default=())

    def get(self, name: str, default: str = "") -> str:
        return dict(self.extra).get(name, default)


@dataclass(frozen=True, slots=True)
class Progress:
    """How an answer is coming along, for adapters that can show it (the browser chat).

    `queue_position` is set while the question waits (1 = next); afterwards `tokens` and
    `tokens_per_second` grow, and `done` marks the end.
    """

    queue_position: int | None = None
    tokens: int = 0
    tokens_per_second: float = 0.0
    done: bool = False
