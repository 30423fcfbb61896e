"""Telegram through python-telegram-bot: receive (long polling or webhook), send, edit, draft.

The core streams an answer as send -> edit... -> edit(final). In private chats that stream
goes into a native draft (sendMessageDraft: a live preview, no edit limits) and the final
text becomes a real message; elsewhere one message is edited. Telegram's refusals are turned
into what the core understands: a 429 pauses the whole chat (every conversation in it) for
the time asked and surfaces as RateLimited, "message is not modified" is success, an HTML
parse error falls back to plain text, and network trouble / 5xx become PlatformError.
"""

from __future__ import annotations

import contextlib
import hmac
import itertools
import logging
import time
import warnings
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from aiohttp import web
from telegram import BotCommand, BotCommandScopeChat, ReplyParameters, Update
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
from telegram.ext import Application, ContextTypes, TypeHandler
from telegram.warnings import PTBDeprecationWarning

from adapters.base import (
    AdapterLimits,
    BaseAdapter,
    CoreHandler,
    MessageTooLong,
    PlatformError,
    RateLimited,
    Refused,
)
from adapters.shared import BoundedMap, Tasks
from adapters.telegram.render import plain_sources, render, sources_footer, visible_text
from adapters.telegram.routing import (
    PLATFORM,
    Route,
    Router,
    Unsupported,
    is_group_chat,
    topic_of,
)
from bot.commands import COMMANDS
from bot.config import Settings
from bot.i18n import N_, Catalogs, Texts
from bot.types import ConversationKey, IncomingMessage, MessageRef, Source

log = logging.getLogger(__name__)

T = TypeVar("T")

TELEGRAM_LIMIT = 4096  # characters per message, after entity parsing
ACTIVE_FOR = 10.0  # seconds a group conversation counts as streaming after its last write
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
ALLOWED_UPDATES = ["message"]  # edits, channel posts, reactions... never reach us
TEXT_ONLY = N_("I can only read text messages — please type your question.")


def _language_of(message: Any) -> str:
    """The sender's Telegram app language (an IETF tag such as "zh-hans"), "" if not sent."""
    user = message.from_user
    return str(user.language_code or "") if user is not None else ""


UNKNOWN_MESSAGE = 0  # a message sent whose reply (and so its id) could not be read


class Unreadable(PlatformError):
    """Telegram carried out the call but its reply could not be read: not to be repeated."""


def _too_long(text: str) -> bool:
    # Telegram counts UTF-16 code units in places; counting them here is the safe side.
    return len(text.encode("utf-16-le")) // 2 > TELEGRAM_LIMIT


class TelegramAdapter(BaseAdapter):
    """The Telegram platform (name "telegram")."""

    name = PLATFORM
    shows_typing = True
    serves_http = True  # in webhook mode; mount() adds nothing when polling

    def __init__(self, settings: Settings) -> None:
        if settings.telegram_token is None:
            raise ValueError("EDGEQA_TELEGRAM_TOKEN is not set")
        self._settings = settings
        self._tg = settings.telegram
        self._webhook = self._tg.mode == "webhook"
        token = settings.telegram_token.get_secret_value()
        builder = Application.builder().token(token).job_queue(None)
        if self._tg.base_url:
            builder = builder.base_url(self._tg.base_url)
        if self._webhook:
            builder = builder.updater(None)
        self._app = builder.build()
        self._catalogs = Catalogs(settings.bot.language)
        self._app.add_handler(TypeHandler(Update, self._on_update))
        self._app.add_error_handler(self._on_error)
        self.limits = AdapterLimits(
            max_message_len=self._tg.max_message_len,
            edit_interval=self._tg.edit_interval,
        )
        self._handler: CoreHandler | None = None
        self._router: Router | None = None
        self._running = False
        self._tasks = Tasks()
        self._paused_until: dict[int, float] = {}  # chat id -> monotonic time (429)
        self._draft_ids = itertools.count(int(time.time()) % 1_000_000 * 1000 + 1)
        self._no_drafts: set[int] = set()  # chats where sendMessageDraft was refused
        self._drafts: BoundedMap[tuple[int, int], int] = BoundedMap(5000)  # -> sent message
        self._shown: BoundedMap[tuple[int, int], tuple[str, bool]] = BoundedMap(5000)
        self._recent_updates: BoundedMap[int, bool] = BoundedMap(2000)
        self._streaming: dict[int, dict[str, float]] = {}  # group -> thread -> last write

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def bot_username(self) -> str:
        return str(self._app.bot.username)

    async def start(self, handler: CoreHandler) -> None:
        self._handler = handler
        self._tasks.on_error = handler.on_error
        try:
            await self._app.initialize()  # getMe: who we are, so mentions can be recognised
        except Exception as exc:
            await self._app.bot.shutdown()
            if isinstance(exc, InvalidToken):  # PTB's message quotes the token: keep it out
                raise PlatformError(
                    "Telegram rejected the bot token (EDGEQA_TELEGRAM_TOKEN); "
                    "check it with @BotFather"
                ) from None
            token = self._settings.telegram_token
            detail = str(exc).replace(token.get_secret_value(), "***") if token else str(exc)
            if not isinstance(exc, TelegramError):  # a reply PTB could not read
                detail = f"unreadable reply to getMe ({type(exc).__name__}: {detail})"
            raise PlatformError(f"cannot reach the Telegram Bot API: {detail}") from None
        bot = self._app.bot
        self._router = Router(bot.id, bot.username, self._tg.trigger_prefix)
        await self._register_commands()
        if self._webhook:
            await self._app.start()
            secret = self._settings.telegram_webhook_secret
            await bot.set_webhook(
                url=self._tg.webhook_url,
                secret_token=secret.get_secret_value() if secret is not None else None,
                allowed_updates=ALLOWED_UPDATES,
            )
        else:
            assert self._app.updater is not None
            await self._app.updater.start_polling(
                allowed_updates=ALLOWED_UPDATES, error_callback=self._polling_failed
            )
            await self._app.start()
        self._running = True
        log.info("telegram: @%s connected (%s)", bot.username, self._tg.mode)

    async def stop(self) -> None:
        if not self._running:
            return
        self._running = False
        if self._app.updater is not None and self._app.updater.running:
            await self._app.updater.stop()
        if self._app.running:
            await self._app.stop()
        await self._tasks.drain()
        await self._app.shutdown()
        # The webhook stays set on purpose: other replicas may still be serving it.

    async def _register_commands(self) -> None:
        """The "/" menu: everyone sees the user commands; admins, in their private chat with
        the bot, also see the admin ones."""

        def menu(admin: bool, texts: Texts) -> list[BotCommand]:
            return [
                BotCommand(spec.name.replace("-", ""), texts.gettext(spec.summary_for(PLATFORM)))
                for spec in COMMANDS.values()
                if admin or not spec.admin
            ]

        # One menu per language: Telegram shows a user the one for their app's language
        # (the default menu, in English, to everyone else).
        languages = [("", self._catalogs.texts(self._catalogs.choose([])))]
        if self._catalogs.forced == "auto":
            languages += [(lang, self._catalogs.texts(lang)) for lang in self._catalogs.languages]
        for code, texts in languages:
            try:
                await self._app.bot.set_my_commands(menu(False, texts), language_code=code or None)
            except TelegramError as exc:
                log.warning("telegram: could not register the command menu: %s", exc)
            for admin in self._tg.admins:
                if not admin.lstrip("-").isdigit():
                    continue
                try:
                    await self._app.bot.set_my_commands(
                        menu(True, texts),
                        scope=BotCommandScopeChat(int(admin)),
                        language_code=code or None,
                    )
                except TelegramError as exc:  # the admin never opened a chat with the bot
                    log.info("telegram: admin menu for %s not set: %s", admin, exc)

    # -- receiving -----------------------------------------------------------------------

    def mount(self, app: web.Application) -> None:
        if self._webhook:
            app.router.add_post(self._tg.webhook_path, self._on_webhook)

    async def _on_webhook(self, request: web.Request) -> web.Response:
        got = request.headers.get(SECRET_HEADER)
        secret = self._settings.telegram_webhook_secret
        if got is None:
            return web.Response(status=401, text="missing secret token")
        if secret is None or not hmac.compare_digest(
            got.encode(), secret.get_secret_value().encode()
        ):
            log.warning("telegram: webhook call with a wrong secret token from %s", request.remote)
            return web.Response(status=403, text="wrong secret token")
        if not self._running:
            return web.Response(status=503, text="starting")
        try:
            data = await request.json()
            update = Update.de_json(data, self._app.bot)
        except (ValueError, TypeError, KeyError):
            return web.Response(status=400, text="not an update")
        if update is not None:
            await self._app.update_queue.put(update)
        return web.json_response({})

    async def _on_update(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """Runs in PTB's update loop: decide quickly, answer in a task of its own."""
        if update.update_id in self._recent_updates:
            return  # a webhook redelivery
        self._recent_updates.put(update.update_id, True)
        message = update.message
        if message is None or self._router is None or self._handler is None:
            return
        route = self._router.route(message)
        chat_id, user_id = message.chat.id, message.from_user.id if message.from_user else 0
        if isinstance(route, Unsupported):
            if self._allowed(user_id, chat_id):
                texts = self._catalogs.for_tag(_language_of(message))
                self._tasks.spawn(
                    self.send(route.key, texts.gettext(TEXT_ONLY), final=True),
                    "telegram: the text-only hint",
                )
            return
        if route is None or not route.text:
            log.debug("telegram: update %s in chat %s not for us", update.update_id, chat_id)
            return
        msg = self._incoming(message, route, user_id)
        self._tasks.spawn(self._handler.handle(msg), f"telegram: answering in {msg.key}")

    @staticmethod
    def _incoming(message: Any, route: Route, user_id: int) -> IncomingMessage:
        return IncomingMessage(
            key=route.key,
            user_id=str(user_id),
            text=route.text,
            is_direct=route.is_direct,
            message_id=str(message.message_id),
            language=_language_of(message),
        )

    def _allowed(self, user_id: int, chat_id: int) -> bool:
        """The core decides access for questions; this only keeps the "text only" hint from
        strangers (same rule: empty lists allow everyone, a listed user may always DM)."""
        users, chats = self._tg.allowed_users, self._tg.allowed_chats
        if users and str(user_id) not in users:
            log.info("telegram: ignored a message from user %s (not allowed)", user_id)
            return False
        return not chats or str(chat_id) in chats or bool(users)

    @staticmethod
    def _polling_failed(exc: TelegramError) -> None:
        """PTB retries getUpdates with a growing pause; one line per failure is enough."""
        log.warning("telegram: getUpdates failed (%s); retrying", exc)

    async def _on_error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        log.warning("telegram: error while processing an update: %s", context.error)

    # -- sending -------------------------------------------------------------------------

    def edit_interval(self, key: ConversationKey) -> float:
        """Private chats: edit_interval. Groups: group_edit_interval shared by the answers
        streaming there at once (Telegram allows about 20 messages or edits a minute per
        group, not per conversation). Longer while the chat is paused by a 429."""
        chat_id = int(key.channel)
        interval = self._tg.edit_interval
        if is_group_chat(chat_id):
            now = time.monotonic()
            active = self._streaming.setdefault(chat_id, {})
            for thread, last in list(active.items()):
                if now - last > ACTIVE_FOR:
                    del active[thread]
            others = len(active.keys() - {key.thread})
            interval = self._tg.group_edit_interval * (1 + others)
        return max(interval, self._pause_left(chat_id))

    def _wrote(self, key: ConversationKey) -> None:
        """Note that a conversation in a group just sent or edited (see edit_interval)."""
        chat_id = int(key.channel)
        if is_group_chat(chat_id):
            self._streaming.setdefault(chat_id, {})[key.thread] = time.monotonic()

    def _pause_left(self, chat_id: int) -> float:
        return max(0.0, self._paused_until.get(chat_id, 0.0) - time.monotonic())

    def _drafts_allowed(self, chat_id: int) -> bool:
        # sendMessageDraft exists for private chats only.
        return self._tg.use_drafts and not is_group_chat(chat_id) and chat_id not in self._no_drafts

    async def send(
        self,
        key: ConversationKey,
        text: str,
        *,
        reply_to: str = "",
        final: bool = False,
        sources: Sequence[Source] = (),
    ) -> MessageRef:
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
        self,
        ref: MessageRef,
        text: str,
        *,
        final: bool = False,
        sources: Sequence[Source] = (),
    ) -> None:
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
                lambda body, mode: self._app.bot.edit_message_text(
                    body, chat_id=chat_id, message_id=message_id, parse_mode=mode
                ),
                sources,
            )
        self._shown.put((chat_id, message_id), shown)
        self._wrote(key)

    async def typing(self, key: ConversationKey, *, reply_to: str = "") -> None:
        chat_id = int(key.channel)
        if self._pause_left(chat_id):
            return
        try:
            await self._app.bot.send_chat_action(
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
            await self._app.bot.send_message_draft(
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
                lambda body, mode: self._app.bot.send_message(
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
        if self._router is not None:  # a reply to this answer continues the chain
            self._router.remember(chat_id, message_id, key.thread)
        self._shown.put((chat_id, message_id), (text + self.render_sources(sources), final))
        self._wrote(key)
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
        if left := self._pause_left(chat_id):
            raise RateLimited(left, f"chat {chat_id} is paused by Telegram's flood control")

    def _translate(self, chat_id: int, exc: TelegramError) -> PlatformError:
        """Telegram's error -> the core's vocabulary (see adapters.base)."""
        if isinstance(exc, RetryAfter):
            with warnings.catch_warnings():  # PTB warns that the type will become timedelta
                warnings.simplefilter("ignore", PTBDeprecationWarning)
                wait = exc.retry_after
            seconds = float(wait if isinstance(wait, int | float) else wait.total_seconds())
            self._paused_until[chat_id] = time.monotonic() + seconds
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
