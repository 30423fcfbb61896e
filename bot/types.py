"""The few values that cross the boundary between adapters and the core.

Adapters translate their platform's payloads into these and nothing platform-specific
travels further, so the core can be tested with plain values and new platforms plug in
without touching it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


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
    message_id: str = ""
    # The user's language as their platform reports it, an IETF tag ("zh-hans", "en-US");
    # "" if unknown. The core answers in it where it has a catalog (bot.i18n).
    language: str = ""


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


@dataclass(frozen=True, slots=True)
class CommandSyntax:
    """How a platform's users type a command, for help and refusals to name it the way that
    works there. `chat` precedes a command typed anywhere (Telegram "/", Slack "/edgeqa ");
    `thread` one that acts on the thread it is typed in (Slack "@edgeqa ": slash commands
    cannot be used in threads)."""

    chat: str = "/"
    thread: str = "/"

    def of(self, command: NamedCommand) -> str:
        return (self.thread if command.in_thread else self.chat) + command.name

    def usage(self, command: NamedCommand) -> str:
        return f"{self.of(command)} {command.args}".rstrip()


class NamedCommand(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def in_thread(self) -> bool: ...

    @property
    def args(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Source:
    """A document passage an answer was given from, as cited and stored with the turn.

    `number` is its [n] in the prompt (and in the answer's citations); `url` is "" when the
    document has no link, and adapters then show the title alone. `text` is the passage as
    the model read it, kept so /sources can show it after the index has changed.
    """

    number: int
    title: str
    location: str
    url: str = ""
    heading: str = ""
    collection: str = ""
    score: float = 0.0
    text: str = ""
