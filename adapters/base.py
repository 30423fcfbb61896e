"""The boundary every chat platform implements.

An adapter only knows how to put text into its platform and edit it again; the core owns
the cadence (`bot.flusher.StreamFlusher`), the queueing and the history. Platform errors
the core must react to are translated into the exceptions below.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol

from aiohttp import web

from bot.types import (
    CommandSyntax,
    ConversationKey,
    IncomingMessage,
    MessageRef,
    Progress,
    Source,
)
from storage.base import Turn


class StartError(Exception):
    """Something the bot needs could not start (a refused token, a taken port); the message
    is one line for the operator and never quotes a secret."""


class PlatformError(Exception):
    """A send or edit failed in a way worth retrying (5xx, dropped connection)."""


class RateLimited(PlatformError):
    """The platform asked us to slow down; `retry_after` is the pause it asked for, in seconds."""

    def __init__(self, retry_after: float, message: str = "rate limited") -> None:
        super().__init__(f"{message} (retry after {retry_after:g}s)")
        self.retry_after = retry_after


class Refused(PlatformError):
    """The platform refused for good (the message was deleted, the bot left the chat, it was
    blocked): retrying the same call will not help."""


class MessageTooLong(PlatformError):
    """The platform refused the text as too long even though we kept under `max_message_len`."""


@dataclass(frozen=True, slots=True)
class AdapterLimits:
    """What the flusher needs to know about a platform.

    `max_message_len` is counted in characters of the plain text the core hands over;
    adapters that render (Markdown to HTML) keep a margin for the markup.
    `edit_interval` is the default pause between two edits of one message, in seconds.
    """

    max_message_len: int
    edit_interval: float


class CoreHandler(Protocol):
    """What the core offers an adapter (`bot.service.ConversationService` implements it)."""

    async def handle(self, msg: IncomingMessage) -> None:
        """Answer a question or run a command; replies go out through the adapter's send/edit."""

    async def command(self, msg: IncomingMessage) -> str:
        """Run a command and return its reply for the adapter to deliver (e.g. ephemerally)."""

    async def history(self, key: ConversationKey) -> Sequence[Turn]:
        """The conversation's stored turns, oldest first (the browser chat shows them on reload)."""

    def allows(self, msg: IncomingMessage) -> bool:
        """May this sender use the bot here? The one access check (`bot.access`): an adapter
        that answers something itself (a "text only" hint) asks it first."""

    def on_error(self, exc: BaseException, what: str) -> None:
        """Report an unexpected error; adapters' background tasks send theirs here
        (`adapters.shared.Tasks`), so errors are logged in one place."""


class Adapter(Protocol):
    """A chat platform. `name` is the platform id used in `ConversationKey.platform`.

    What a platform can do beyond sending and editing is declared as class attributes (as
    simonw/llm's models declare `can_stream`); the core reads these flags and nothing else
    before using the matching method, which `BaseAdapter` gives every adapter as a no-op.
    """

    name: str
    limits: AdapterLimits
    shows_typing: ClassVar[bool]  # typing() shows an indicator: worth calling while thinking
    serves_http: ClassVar[bool]  # mount() adds routes (webhooks, the page) to the HTTP server
    shows_progress: ClassVar[bool]  # progress() shows queue position and speed by an answer
    # Users type commands otherwise than "/name" (Slack: "/edgeqa name", "@edgeqa name"), as
    # command_syntax says; help texts and refusals then name them that way.
    names_commands: ClassVar[bool]

    async def start(self, handler: CoreHandler) -> None:
        """Connect and begin delivering messages to `handler`; returns once running."""

    async def stop(self) -> None:
        """Disconnect and end the adapter's own tasks; in-flight sends may still complete."""

    async def send(
        self,
        key: ConversationKey,
        text: str,
        *,
        reply_to: str = "",
        final: bool = False,
        sources: Sequence[Source] = (),
    ) -> MessageRef:
        """Post a new message in the conversation. `final` means the text will not change again,
        so the adapter may render it (Markdown) or end a native stream. `sources` (only with
        `final`, on an answer's last message) are shown under the text as the adapter's
        `render_sources` writes them."""

    async def edit(
        self,
        ref: MessageRef,
        text: str,
        *,
        final: bool = False,
        sources: Sequence[Source] = (),
    ) -> None:
        """Replace a sent message's text. Must treat "not modified" as success."""

    def render_sources(self, sources: Sequence[Source]) -> str:
        """The sources footer in the platform's own markup ("" where the platform shows
        sources otherwise); the flusher keeps its length free in the last message."""

    async def typing(self, key: ConversationKey, *, reply_to: str = "") -> None:
        """Show a typing / thinking indicator (`shows_typing`). `reply_to` is the question it
        is for: where the indicator is a message, only the answer to that question takes it
        over."""

    def edit_interval(self, key: ConversationKey) -> float:
        """Seconds to wait between edits for this conversation right now (may vary with load)."""

    def mount(self, app: web.Application) -> None:
        """Add the adapter's routes to the bot's one HTTP server (`serves_http`), before it
        starts."""

    async def progress(self, key: ConversationKey, ref: MessageRef | None, info: Progress) -> None:
        """Show queue position and speed next to an answer (`shows_progress`)."""

    @property
    def command_syntax(self) -> CommandSyntax:
        """How users type commands here (`names_commands`)."""


class BaseAdapter:
    """Every capability off, and its method a no-op: an adapter turns on what it has."""

    shows_typing: ClassVar[bool] = False
    serves_http: ClassVar[bool] = False
    shows_progress: ClassVar[bool] = False
    names_commands: ClassVar[bool] = False

    async def typing(self, key: ConversationKey, *, reply_to: str = "") -> None:
        return None

    def mount(self, app: web.Application) -> None:
        return None

    async def progress(self, key: ConversationKey, ref: MessageRef | None, info: Progress) -> None:
        return None

    @property
    def command_syntax(self) -> CommandSyntax:
        return CommandSyntax()
