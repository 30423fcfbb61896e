"""The local browser chat: the platform edgeqa talks on when no Slack or Telegram token is set.

It plays the part a chat platform plays elsewhere — the core sends and edits messages, and
the adapter turns each send/edit/progress into an event for the browser tabs showing that
thread (`adapters.web.state`). The HTTP side (page, ask, history, event stream, access
token) lives in `adapters.web.routes`.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence

from aiohttp import web

from adapters.base import AdapterLimits, BaseAdapter, CoreHandler, MessageTooLong
from adapters.shared import Tasks
from adapters.web.routes import WebRoutes
from adapters.web.state import LiveState, source_dicts
from bot.config import Settings
from bot.i18n import N_, Catalogs
from bot.types import ConversationKey, IncomingMessage, MessageRef, Progress, Source

log = logging.getLogger(__name__)

PLATFORM = "web"
# Larger than any answer the model writes in one go; a browser has no real limit.
MAX_MESSAGE_LEN = 20_000
FAILED = N_("Sorry, something went wrong while answering. Please try again.")


class WebChatAdapter(BaseAdapter):
    """The adapter for the page served at `/`."""

    name = PLATFORM
    shows_typing = True
    serves_http = True
    shows_progress = True

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.limits = AdapterLimits(
            max_message_len=MAX_MESSAGE_LEN,
            edit_interval=settings.web.edit_interval,
        )
        self.state = LiveState()
        self.catalogs = Catalogs(settings.bot.language)
        self.handler: CoreHandler | None = None
        self._tasks = Tasks()
        token = settings.web_token.get_secret_value() if settings.web_token else None
        self.routes = WebRoutes(self, token=token or None)

    # --- lifecycle -----------------------------------------------------------------------

    def mount(self, app: web.Application) -> None:
        self.routes.mount(app)

    async def start(self, handler: CoreHandler) -> None:
        self.handler = handler
        self._tasks.on_error = handler.on_error
        login = " (open /?token=<EDGEQA_WEB_TOKEN> once)" if self.routes.token else ""
        log.info("browser chat ready at / on the HTTP server%s", login)

    async def stop(self) -> None:
        """End the running questions, then the event streams (so the HTTP server can shut
        down). In that order: each question's `done` goes out before its page's stream ends."""
        self.handler = None
        await self._tasks.drain()
        self.state.close_all()

    # --- questions from the page ---------------------------------------------------------

    def ask(self, key: ConversationKey, text: str, *, language: str = "") -> str:
        """Hand a question (or a typed command) to the core in its own task; returns its id.
        `language` is the browser's (from Accept-Language), for the bot's replies."""
        message_id = uuid.uuid4().hex
        msg = IncomingMessage(
            key=key,
            user_id=key.channel,
            text=text,
            is_direct=True,
            message_id=message_id,
            language=language,
        )
        self.state.ask(key, message_id, text)
        self._tasks.spawn(self._answer(msg), f"web: answering in {key}")
        return message_id

    async def _answer(self, msg: IncomingMessage) -> None:
        try:
            if self.handler is None:
                raise RuntimeError("the browser chat is not started")
            await self.handler.handle(msg)
        except Exception:
            # The page waits for an answer: it gets one, and the error goes to the core's hook.
            failed = self.catalogs.for_tag(msg.language).gettext(FAILED)
            await self.send(msg.key, failed, reply_to=msg.message_id, final=True)
            raise
        finally:
            self.state.finish(msg.key, msg.message_id, command=msg.text.startswith("/"))

    # --- Adapter -------------------------------------------------------------------------

    async def send(
        self,
        key: ConversationKey,
        text: str,
        *,
        reply_to: str = "",
        final: bool = False,
        sources: Sequence[Source] = (),
    ) -> MessageRef:
        self._check_length(text)
        exchange = self.state.attach(key, reply_to)
        ref = MessageRef(key, uuid.uuid4().hex, (("exchange", exchange),))
        self.state.reply(
            key, exchange, ref.message_id, text, final=final, sources=source_dicts(sources)
        )
        return ref

    async def edit(
        self,
        ref: MessageRef,
        text: str,
        *,
        final: bool = False,
        sources: Sequence[Source] = (),
    ) -> None:
        self._check_length(text)
        self.state.reply(
            ref.key,
            ref.get("exchange"),
            ref.message_id,
            text,
            final=final,
            sources=source_dicts(sources),
        )

    def render_sources(self, sources: Sequence[Source]) -> str:
        """Nothing in the text: the page gets the sources as data and draws the links."""
        return ""

    async def typing(self, key: ConversationKey, *, reply_to: str = "") -> None:
        self.state.typing(key)

    def edit_interval(self, key: ConversationKey) -> float:
        return self.settings.web.edit_interval

    # --- progress ------------------------------------------------------------------------

    async def progress(self, key: ConversationKey, ref: MessageRef | None, info: Progress) -> None:
        exchange = ref.get("exchange") if ref is not None else ""
        self.state.progress(key, exchange, ref.message_id if ref else None, info)

    def _check_length(self, text: str) -> None:
        if len(text) > self.limits.max_message_len:
            raise MessageTooLong(f"{len(text)} characters > {self.limits.max_message_len}")
