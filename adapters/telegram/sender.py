"""Putting answers into Telegram: messages, edits, native drafts, and Telegram's refusals.

The core streams an answer as send -> edit... -> edit(final). In private chats that stream
goes into a native draft (sendMessageDraft: a live preview, no edit limits) and the final
text becomes a real message; elsewhere one message is edited. Telegram's refusals are turned
into what the core understands: a 429 pauses the whole chat (every conversation in it, see
`cadence`) for the time asked and surfaces as RateLimited, "message is not modified" is
success, an HTML parse error falls back to plain text, and network trouble / 5xx become
PlatformError.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
import warnings
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from telegram import Bot, ReplyParameters
from telegram.constants import ChatAction, ParseMode
from telegram.error import (
    BadRequest,
    ChatMigrated,
    Forbidden,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TelegramError,
)
from telegram.warnings import PTBDeprecationWarning

from adapters.base import MessageTooLong, PlatformError, RateLimited, Refused
from adapters.shared import BoundedMap
from adapters.telegram.cadence import ChatCadence
from adapters.telegram.config import TelegramSettings
from adapters.telegram.render import plain_sources, render, sources_footer, visible_text
from adapters.telegram.routing import Router, is_group_chat, topic_of
from bot.types import ConversationKey, MessageRef, Source

log = logging.getLogger(__name__)

T = TypeVar("T")

TELEGRAM_LIMIT = 4096  # characters per message, after entity parsing
UNKNOWN_MESSAGE = 0  # a message sent whose reply (and so its id) could not be read


class Unreadable(PlatformError):
    """Telegram carried out the call but its reply could not be read: not to be repeated."""


def _too_long(text: str) -> bool:
    # Telegram counts UTF-16 code units in places; counting them here is the safe side.
    return len(text.encode("utf-16-le")) // 2 > TELEGRAM_LIMIT


class TelegramSender:
    def __init__(self, bot: Bot, settings: TelegramSettings, cadence: ChatCadence) -> None:
        self._bot = bot
        self._tg = settings
        self._cadence = cadence
        self.router: Router | None = None  # set once started: sent answers join their chain
        self._draft_ids = itertools.count(int(time.time()) % 1_000_000 * 1000 + 1)
        self._no_drafts: set[int] = set()  # chats where sendMessageDraft was refused
        self._drafts: BoundedMap[tuple[int, int], int] = BoundedMap(5000)  # -> sent message
        self._shown: BoundedMap[tuple[int, int], tuple[str, bool]] = BoundedMap(5000)

    def _drafts_allowed(self, chat_id: int) -> bool:
        # sendMessageDraft exists for private chats only.
        return self._tg.use_drafts and not is_group_chat(chat_id) and chat_id not in self._no_drafts

    async def send(
        self, key: ConversationKey, text: str, reply_to: str, final: bool, sources: Sequence[Source]
    ) -> MessageRef:
        """The adapter's send (see adapters.base.Adapter)."""
        chat_id = int(key.channel)
        if not final and self._drafts_allowed(chat_id):
            draft_id = next(self._draft_ids)
            if await self._draft(chat_id, key, draft_id, text):
                return MessageRef(key, f"draft:{draft_id}", (("draft_id", str(draft_id)),))
        reply = None
        if reply_to.isdigit() and is_group_chat(chat_id):
            reply = ReplyParameters(int(reply_to), allow_sending_without_reply=True)
        message_id = await self._send_message(key, text, final=final, reply=reply, sources=sources)
        return MessageRef(key, str(message_id))

    async def edit(
        self, ref: MessageRef, text: str, final: bool, sources: Sequence[Source]
    ) -> None:
        """The adapter's edit (see adapters.base.Adapter)."""
        key = ref.key
        chat_id = int(key.channel)
        if draft := ref.get("draft_id"):
            sent = self._drafts.get((chat_id, int(draft)))
            if sent is None:
                if not final and await self._draft(chat_id, key, int(draft), text):
                    return
                # The final text (or a chat that stopped taking drafts) becomes a real message.
                message_id = await self._send_message(
                    key, text, final=final, reply=None, sources=sources
                )
                self._drafts.put((chat_id, int(draft)), message_id)
                return
            message_id = sent
        else:
            message_id = int(ref.message_id)
        shown = (text + self.render_sources(sources), final)
        if self._shown.get((chat_id, message_id)) == shown:
            return  # never send Telegram an unchanged text
        if message_id == UNKNOWN_MESSAGE:
            raise Refused("Telegram: the message to edit was sent, but its id is unknown")
        with contextlib.suppress(Unreadable):  # edited; only the reply was unreadable
            await self._rendered(
                chat_id,
                text,
                final,
                lambda body, mode: self._bot.edit_message_text(
                    body, chat_id=chat_id, message_id=message_id, parse_mode=mode
                ),
                sources,
            )
        self._shown.put((chat_id, message_id), shown)
        self._cadence.wrote(key)

    async def typing(self, key: ConversationKey, *, reply_to: str = "") -> None:
        chat_id = int(key.channel)
        if self._cadence.pause_left(chat_id):
            return
        try:
            await self._bot.send_chat_action(
                chat_id, ChatAction.TYPING, message_thread_id=topic_of(key.thread)
            )
        except TelegramError as exc:  # cosmetic; but a 429 still pauses the chat
            error = self._translate(chat_id, exc)
            log.debug("telegram: typing in %s failed: %s", chat_id, error)
        except Exception as exc:
            log.debug("telegram: typing in %s: unreadable reply: %r", chat_id, exc)

    async def _draft(self, chat_id: int, key: ConversationKey, draft_id: int, text: str) -> bool:
        """Show `text` as a live draft. False if this chat does not take drafts."""
        self._check(chat_id, text)
        try:
            await self._bot.send_message_draft(
                chat_id, draft_id, text, message_thread_id=topic_of(key.thread)
            )
        except BadRequest as exc:
            if "not modified" in exc.message.lower():
                return True
            return self._no_drafts_in(chat_id, exc)
        except (RetryAfter, NetworkError) as exc:
            # Flood control pauses the chat; a 5xx or a lost connection fails this draft
            # only, and the flusher backs off before the next one.
            raise self._translate(chat_id, exc) from exc
        except TelegramError as exc:
            # Any other refusal — 404 (a server without sendMessageDraft, where PTB raises
            # InvalidToken), 403, 409 — means no drafts here: edits from now on.
            return self._no_drafts_in(chat_id, exc)
        except Exception as exc:
            log.debug("telegram: unreadable reply to a draft in %s: %r", chat_id, exc)
        return True

    def _no_drafts_in(self, chat_id: int, exc: Exception) -> bool:
        log.info("telegram: drafts refused in chat %s (%s); editing instead", chat_id, exc)
        self._no_drafts.add(chat_id)
        return False

    def render_sources(self, sources: Sequence[Source]) -> str:
        return sources_footer(sources)

    async def _send_message(
        self,
        key: ConversationKey,
        text: str,
        *,
        final: bool,
        reply: ReplyParameters | None,
        sources: Sequence[Source] = (),
    ) -> int:
        chat_id = int(key.channel)
        topic = topic_of(key.thread)
        try:
            message = await self._rendered(
                chat_id,
                text,
                final,
                lambda body, mode: self._bot.send_message(
                    chat_id, body, parse_mode=mode, message_thread_id=topic, reply_parameters=reply
                ),
                sources,
            )
        except Unreadable:
            # Sent, but its id is unknown: an edit of it will be refused and the flusher then
            # sends the text anew; a final text needs no edit.
            return UNKNOWN_MESSAGE
        if message is None:
            raise PlatformError("Telegram: sendMessage returned nothing")
        message_id = int(message.message_id)
        if self.router is not None:  # a reply to this answer continues the chain
            self.router.remember(chat_id, message_id, key.thread)
        self._shown.put((chat_id, message_id), (text + self.render_sources(sources), final))
        self._cadence.wrote(key)
        return message_id

    async def _rendered(
        self,
        chat_id: int,
        text: str,
        final: bool,
        call: Callable[[str, str | None], Awaitable[T]],
        sources: Sequence[Source] = (),
    ) -> T | None:
        """Run a send/edit: the final text as HTML (plain if Telegram can't take that),
        with the sources footer under it; streaming updates as plain text. "Not modified"
        returns None."""
        if final and sources:
            plain = f"{text}\n\n{plain_sources(sources)}"
            html = f"{render(text)}\n\n{sources_footer(sources)}"
        else:
            plain, html = text, render(text) if final else ""
        self._check(chat_id, plain)
        text, body, mode = plain, plain, None
        if final and html.strip() and not _too_long(visible_text(html)):
            body, mode = html, ParseMode.HTML
        try:
            try:
                return await call(body, mode)
            except BadRequest as exc:
                reason = exc.message.lower()
                if mode is None or not ("can't parse entities" in reason or "too long" in reason):
                    raise
                log.info("telegram: HTML refused in chat %s (%s); sending plain text", chat_id, exc)
                return await call(text, None)
        except BadRequest as exc:
            if "message is not modified" in exc.message.lower():
                return None
            raise self._translate(chat_id, exc) from exc
        except TelegramError as exc:
            raise self._translate(chat_id, exc) from exc
        except Exception as exc:
            # Telegram answered "ok" but PTB could not read the reply (a malformed date, a
            # missing field): the call was carried out, so it is not repeated.
            log.warning("telegram: unreadable reply in chat %s: %r", chat_id, exc)
            raise Unreadable(f"Telegram: unreadable reply: {exc!r}") from exc

    def _check(self, chat_id: int, text: str) -> None:
        """Refuse before asking Telegram when the answer is sure to be no."""
        if _too_long(text):
            raise MessageTooLong(f"{len(text)} characters is over Telegram's {TELEGRAM_LIMIT}")
        if left := self._cadence.pause_left(chat_id):
            raise RateLimited(left, f"chat {chat_id} is paused by Telegram's flood control")

    def _translate(self, chat_id: int, exc: TelegramError) -> PlatformError:
        """Telegram's error -> the core's vocabulary (see adapters.base)."""
        if isinstance(exc, RetryAfter):
            with warnings.catch_warnings():  # PTB warns that the type will become timedelta
                warnings.simplefilter("ignore", PTBDeprecationWarning)
                wait = exc.retry_after
            seconds = float(wait if isinstance(wait, int | float) else wait.total_seconds())
            self._cadence.pause(chat_id, seconds)
            log.info("telegram: flood control in chat %s: paused %.0fs", chat_id, seconds)
            return RateLimited(seconds, "Telegram flood control")
        if isinstance(exc, BadRequest) and "too long" in exc.message.lower():
            return MessageTooLong(exc.message)
        if isinstance(exc, Forbidden | ChatMigrated | InvalidToken):
            # Blocked by the user, removed from the group, group upgraded: not worth retrying.
            log.warning("telegram: may not write in chat %s: %s", chat_id, exc)
            return Refused(f"Telegram: {exc}")
        if isinstance(exc, BadRequest):  # deleted message, unknown chat...: the same again
            return Refused(f"Telegram: {exc}")
        return PlatformError(f"Telegram: {exc}")  # 5xx, timeouts, dropped connections
