"""Telegram through python-telegram-bot: start, the "/" menu, receiving (long polling or
webhook) and handing messages to the core.

Which messages are for the bot is `routing`; putting answers into Telegram (drafts, HTML
with a plain-text fallback, the sources footer, Telegram's refusals) is `sender`; how often
it may write to a chat is `cadence`; Markdown to Telegram HTML is `render`.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Sequence
from typing import Any

from aiohttp import web
from telegram import BotCommand, BotCommandScopeChat, Update
from telegram.error import InvalidToken, TelegramError
from telegram.ext import Application, ContextTypes, TypeHandler

from adapters.base import AdapterLimits, BaseAdapter, CoreHandler, PlatformError
from adapters.shared import BoundedMap, Tasks
from adapters.telegram.cadence import ChatCadence
from adapters.telegram.routing import PLATFORM, Route, Router, Unsupported
from adapters.telegram.sender import TelegramSender
from bot.commands import COMMANDS
from bot.config import Settings
from bot.i18n import N_, Catalogs, Texts
from bot.types import ConversationKey, IncomingMessage, MessageRef, Source

log = logging.getLogger(__name__)

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
ALLOWED_UPDATES = ["message"]  # edits, channel posts, reactions... never reach us
TEXT_ONLY = N_("I can only read text messages — please type your question.")


def _language_of(message: Any) -> str:
    """The sender's Telegram app language (an IETF tag such as "zh-hans"), "" if not sent."""
    user = message.from_user
    return str(user.language_code or "") if user is not None else ""


class TelegramAdapter(BaseAdapter):
    """The Telegram platform (name "telegram")."""

    name = PLATFORM
    shows_typing = True
    serves_http = True  # in webhook mode; mount() adds nothing when polling

    def __init__(self, settings: Settings) -> None:
        if settings.telegram_token is None:
            raise ValueError("EDGEQA_TELEGRAM_TOKEN is not set")
        self.settings = settings
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
        self._cadence = ChatCadence(self._tg)
        self._sender = TelegramSender(self._app.bot, self._tg, self._cadence)
        self._recent_updates: BoundedMap[int, bool] = BoundedMap(2000)

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
            token = self.settings.telegram_token
            detail = str(exc).replace(token.get_secret_value(), "***") if token else str(exc)
            if not isinstance(exc, TelegramError):  # a reply PTB could not read
                detail = f"unreadable reply to getMe ({type(exc).__name__}: {detail})"
            raise PlatformError(f"cannot reach the Telegram Bot API: {detail}") from None
        bot = self._app.bot
        self._router = Router(bot.id, bot.username, self._tg.trigger_prefix)
        self._sender.router = self._router
        await self._register_commands()
        if self._webhook:
            await self._app.start()
            secret = self.settings.telegram_webhook_secret
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
        secret = self.settings.telegram_webhook_secret
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
            probe = IncomingMessage(key=route.key, user_id=str(user_id), text="", is_direct=True)
            if self._handler.allows(probe):
                texts = self._catalogs.for_tag(_language_of(message))
                self._tasks.spawn(
                    self.send(route.key, texts.gettext(TEXT_ONLY), final=True),
                    "telegram: the text-only hint",
                )
            else:
                log.info("telegram: ignored a message from user %s (not allowed)", user_id)
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

    @staticmethod
    def _polling_failed(exc: TelegramError) -> None:
        """PTB retries getUpdates with a growing pause; one line per failure is enough."""
        log.warning("telegram: getUpdates failed (%s); retrying", exc)

    async def _on_error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        log.warning("telegram: error while processing an update: %s", context.error)

    # -- sending (see sender.py; cadence.py for how often) -------------------------------

    async def send(
        self,
        key: ConversationKey,
        text: str,
        *,
        reply_to: str = "",
        final: bool = False,
        sources: Sequence[Source] = (),
    ) -> MessageRef:
        return await self._sender.send(key, text, reply_to, final, sources)

    async def edit(
        self,
        ref: MessageRef,
        text: str,
        *,
        final: bool = False,
        sources: Sequence[Source] = (),
    ) -> None:
        await self._sender.edit(ref, text, final, sources)

    def render_sources(self, sources: Sequence[Source]) -> str:
        return self._sender.render_sources(sources)

    async def typing(self, key: ConversationKey, *, reply_to: str = "") -> None:
        await self._sender.typing(key, reply_to=reply_to)

    def edit_interval(self, key: ConversationKey) -> float:
        return self._cadence.edit_interval(key)
