"""Slack: a Bolt app (Socket Mode or HTTP) in front of the core's conversation service.

This side decides which Slack messages are questions for the bot — an @mention, a direct
message, a reply in a thread the bot already answers in — and what conversation they belong
to; everything else (access, commands, history, cadence) is the core's. Listeners return at
once and the answer runs in its own task, so Slack's 3-second acknowledgement never waits on
the model.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from collections.abc import Sequence
from typing import Any

import aiohttp
from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.app.async_app import AsyncApp
from slack_bolt.context.ack.async_ack import AsyncAck
from slack_bolt.context.respond.async_respond import AsyncRespond
from slack_sdk.errors import SlackApiError
from slack_sdk.signature import SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient

from adapters.base import AdapterLimits, BaseAdapter, CoreHandler
from adapters.base import StartError as BaseStartError
from adapters.shared import BoundedMap, Tasks
from adapters.slack.locales import UserLocales
from adapters.slack.render import mentions, sources_footer, to_mrkdwn, to_plain
from adapters.slack.sender import THINKING, SlackSender
from bot.config import Settings
from bot.i18n import N_, Catalogs
from bot.types import CommandSyntax, ConversationKey, IncomingMessage, MessageRef, Source

log = logging.getLogger(__name__)

SLACK_API = "https://slack.com/api/"
# Said to the bot (after the mention), these words are the commands of the same name: Slack
# keeps "/reset" for its own slash commands, and those cannot be used inside threads.
WORD_COMMANDS = {"help", "reset", "stop", "sources"}
THREAD_COMMANDS = {"/reset", "/stop", "/sources"}
THREAD_HINT = N_(
    "In a channel every conversation is a thread, and slash commands can't tell which one. "
    "Write `<@%(bot)s> reset` in the thread you want me to forget, or `<@%(bot)s> stop` in the "
    "thread whose answer should stop."
)
FAILED = N_("Sorry, that did not work.")
_HANDLED_SUBTYPES = {None, "thread_broadcast", "file_share"}
_USER_REF = re.compile(r"<@([UW][A-Z0-9]+)(?:\|[^>]*)?>")
REPLAY_WINDOW = 5 * 60.0  # seconds: Bolt refuses requests signed longer ago (or ahead)


class StartError(BaseStartError):
    """Slack refused the tokens (or is unreachable) while starting."""


class _Replays:
    """Signatures of the signed requests taken in the last `window` seconds, at most `size`.

    Bolt refuses a request whose timestamp is more than five minutes off, but within that
    window a captured request (body, timestamp and signature) would be accepted again as
    often as it is sent — a slash command like `/edgeqa reset-all` run twice. A signature is
    an HMAC over the timestamp and the body, so it names one request exactly.
    """

    def __init__(self, window: float = REPLAY_WINDOW, size: int = 100_000) -> None:
        self._window = window
        self._size = size
        self._seen: BoundedMap[str, float] = BoundedMap(size)

    def first(self, signature: str, now: float) -> bool:
        """Remember `signature`; False if it was seen within the window."""
        self._seen.forget_oldest_while(lambda taken: taken < now - self._window)
        if signature in self._seen:
            return False
        self._seen.put(signature, now)
        return True


class SlackAdapter(BaseAdapter):
    name = "slack"
    shows_typing = True
    serves_http = True  # in HTTP mode; mount() adds nothing in Socket Mode
    names_commands = True

    def __init__(self, settings: Settings) -> None:
        self._settings = settings.slack
        section = settings.slack
        self.limits = AdapterLimits(
            max_message_len=section.max_message_len,
            edit_interval=section.edit_interval,
        )
        token = settings.slack_bot_token.get_secret_value() if settings.slack_bot_token else ""
        self._app_token = (
            settings.slack_app_token.get_secret_value() if settings.slack_app_token else ""
        )
        secret = settings.slack_signing_secret
        # No retries inside the SDK: it would resend a chat.postMessage whose answer was
        # lost, posting it twice. The core retries, and the sender checks first.
        self._client = AsyncWebClient(
            token=token, base_url=section.base_url or SLACK_API, retry_handlers=[]
        )
        self._app = AsyncApp(
            client=self._client,
            signing_secret=secret.get_secret_value() if secret else "",
            request_verification_enabled=section.mode == "http",
            process_before_response=False,
        )
        self._app.event("app_mention")(self._on_mention)
        self._app.event("message")(self._on_message)
        self._app.command(section.command)(self._on_command)
        self._sender = SlackSender(self._client, section)
        self._catalogs = Catalogs(settings.bot.language)
        self._locales = UserLocales(self._client)
        self._handler: CoreHandler | None = None
        self._socket: AsyncSocketModeHandler | None = None
        self._tasks = Tasks()
        # (channel, ts) of messages already taken; (channel, thread_ts) the bot takes part in
        self._seen: BoundedMap[tuple[str, object], bool] = BoundedMap(10_000)
        self._threads: BoundedMap[tuple[str, str], bool] = BoundedMap(10_000)
        self.bot_user_id = ""
        self._bot_name = "edgeqa"  # as auth.test names it once started
        self.team_id = ""
        self._verifier = (
            SignatureVerifier(secret.get_secret_value())
            if section.mode == "http" and secret
            else None
        )
        self._replays = _Replays()

    @property
    def command_syntax(self) -> CommandSyntax:
        """Slack keeps "/help", "/reset" for itself: commands are "/edgeqa help" (the app's
        slash command), or "@edgeqa reset" in the thread they are about (slash commands
        cannot be used in threads)."""
        return CommandSyntax(chat=f"{self._settings.command} ", thread=f"@{self._bot_name} ")

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self, handler: CoreHandler) -> None:
        try:
            auth = await self._client.auth_test()
        except SlackApiError as exc:
            raise StartError(f"slack auth.test failed: {exc.response.get('error')}") from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise StartError(f"slack API unreachable: {type(exc).__name__}: {exc}") from exc
        self.bot_user_id = str(auth.get("user_id", ""))
        self._bot_name = str(auth.get("user") or self._bot_name)
        self.team_id = str(auth.get("team_id", ""))
        self._sender.identify(self.bot_user_id, self.team_id)
        self._handler = handler
        self._tasks.on_error = handler.on_error
        if self._settings.mode == "socket":
            try:  # fail fast on a wrong app token instead of retrying forever inside connect()
                await self._client.apps_connections_open(app_token=self._app_token)
            except SlackApiError as exc:
                error = exc.response.get("error")
                raise StartError(f"slack apps.connections.open failed: {error}") from exc
            self._socket = AsyncSocketModeHandler(
                self._app, self._app_token, web_client=self._client
            )
            await self._socket.connect_async()  # type: ignore[no-untyped-call]
        log.info(
            "slack connected as %s in %s (%s mode)",
            auth.get("user"),
            self.team_id,
            self._settings.mode,
        )

    async def stop(self) -> None:
        if self._socket is not None:
            await self._socket.close_async()  # type: ignore[no-untyped-call]
            self._socket = None
        self._handler = None
        await self._tasks.drain()

    def mount(self, app: web.Application) -> None:
        """HTTP mode: the Events API and the slash command on the bot's HTTP server."""
        if self._settings.mode != "http":
            return
        app.router.add_post(self._settings.events_path, self._on_http)
        if self._settings.commands_path != self._settings.events_path:
            app.router.add_post(self._settings.commands_path, self._on_http)

    async def _on_http(self, request: web.Request) -> web.Response:
        # Bolt checks the signature and the timestamp (older than 5 minutes: 401); a signed
        # request seen before is acknowledged and dropped, so a replay changes nothing.
        body = await request.text()
        signature = request.headers.get("X-Slack-Signature", "")
        timestamp = request.headers.get("X-Slack-Request-Timestamp")
        signed = self._signed(body, timestamp, signature)
        if signed and not self._replays.first(signature, time.monotonic()):
            log.warning("slack: ignored a replayed request from %s", request.remote)
            return web.Response(status=200)
        if not signed and timestamp is not None and not timestamp.strip().isdigit():
            # Bolt would fail on int(timestamp) with a 500 and a traceback.
            return web.json_response({"error": "invalid request"}, status=401)
        bolt_response = await self._app.async_dispatch(await to_bolt_request(request))
        return await to_aiohttp_response(bolt_response)

    def _signed(self, body: str, timestamp: str | None, signature: str) -> bool:
        if self._verifier is None:
            return False
        try:
            return self._verifier.is_valid(body, timestamp, signature)
        except ValueError:  # a timestamp that is not a number
            return False

    # -- sending (see sender.py) ---------------------------------------------------------

    async def send(
        self,
        key: ConversationKey,
        text: str,
        *,
        reply_to: str = "",
        final: bool = False,
        sources: Sequence[Source] = (),
    ) -> MessageRef:
        footer = self.render_sources(sources) if final else ""
        ref = await self._sender.send(key, text, final=final, after=reply_to, footer=footer)
        if key.thread:
            self._threads.put((key.channel, key.thread), True)
        return ref

    async def edit(
        self,
        ref: MessageRef,
        text: str,
        *,
        final: bool = False,
        sources: Sequence[Source] = (),
    ) -> None:
        footer = self.render_sources(sources) if final else ""
        await self._sender.edit(ref, text, final=final, footer=footer)

    def render_sources(self, sources: Sequence[Source]) -> str:
        return sources_footer(sources)

    async def typing(self, key: ConversationKey, *, reply_to: str = "") -> None:
        await self._sender.typing(key, reply_to)

    def edit_interval(self, key: ConversationKey) -> float:
        return self._sender.edit_interval(key)

    # -- receiving -----------------------------------------------------------------------

    def _dispatch(self, msg: IncomingMessage) -> None:
        if self._handler is not None:
            self._tasks.spawn(self._answer(self._handler, msg), f"slack: answering in {msg.key}")

    async def _answer(self, handler: CoreHandler, msg: IncomingMessage) -> None:
        """Answer in the asker's language, with "is thinking…" in it too."""
        language = await self._locales.of(msg.user_id)
        thinking = self._catalogs.for_tag(language).gettext(THINKING)
        self._sender.thinking.put((msg.key.channel, msg.key.thread), thinking)
        await handler.handle(dataclasses.replace(msg, language=language))

    def _question(self, key: ConversationKey, event: dict[str, Any], **kw: Any) -> None:
        """Turn an addressed message into the core's IncomingMessage (or a short note)."""
        seen = (key.channel, event.get("ts"))
        if seen in self._seen:
            return  # the same message as both app_mention and message event, or a retry
        self._seen.put(seen, True)
        user = str(event.get("user", ""))
        # An empty text (a file alone, a bare mention) still goes to the core, which checks
        # access and answers with a short note asking for words.
        text = to_plain(str(event.get("text", "")), self.bot_user_id)
        if text.lower().lstrip("/") in WORD_COMMANDS:
            text = "/" + text.lower().lstrip("/")
        self._sender.note_question(key, user, str(event["ts"]))
        msg = IncomingMessage(key=key, user_id=user, text=text, message_id=str(event["ts"]), **kw)
        self._dispatch(msg)

    def _from_bot(self, event: dict[str, Any]) -> bool:
        return bool(
            event.get("bot_id")
            or event.get("subtype") == "bot_message"
            or not event.get("user")
            or event.get("user") == self.bot_user_id
        )

    def _team(self, body: dict[str, Any], event: dict[str, Any]) -> str:
        return str(body.get("team_id") or event.get("team") or self.team_id)

    async def _on_mention(self, body: dict[str, Any], event: dict[str, Any]) -> None:
        if self._from_bot(event) or self._handler is None:
            return
        channel = str(event["channel"])
        thread = str(event.get("thread_ts") or event["ts"])
        self._threads.put((channel, thread), True)
        key = ConversationKey("slack", self._team(body, event), channel, thread)
        self._question(key, event)

    async def _on_message(self, body: dict[str, Any], event: dict[str, Any]) -> None:
        if event.get("subtype") not in _HANDLED_SUBTYPES or self._from_bot(event):
            return
        if self._handler is None:
            return
        channel = str(event.get("channel", ""))
        text = str(event.get("text", ""))
        team = self._team(body, event)
        mentioned = mentions(text, self.bot_user_id)
        if event.get("channel_type") == "im":
            key = ConversationKey("slack", team, channel, str(event.get("thread_ts") or ""))
            self._question(key, event, is_direct=True)
            return
        thread = str(event.get("thread_ts") or "")
        if mentioned or not thread or not self._settings.answer_thread_followups:
            return  # mentions arrive as app_mention; plain channel chatter is not for us
        key = ConversationKey("slack", team, channel, thread)
        if await self._takes_part(key):
            self._question(key, event)

    async def _takes_part(self, key: ConversationKey) -> bool:
        """Has the bot answered in this thread? Known threads are in memory; after a restart
        the stored history tells."""
        if (key.channel, key.thread) in self._threads:
            return True
        handler = self._handler
        if handler is None:
            return False
        try:
            history = await handler.history(key)
        except Exception as exc:
            log.warning("history lookup for %s failed: %s", key, exc)
            return False
        if history:
            self._threads.put((key.channel, key.thread), True)
        return bool(history)

    async def _on_command(
        self, ack: AsyncAck, command: dict[str, Any], respond: AsyncRespond
    ) -> None:
        await ack()  # within Slack's 3 seconds, whatever the command costs
        handler = self._handler
        if handler is None:
            return
        channel = str(command.get("channel_id", ""))
        key = ConversationKey("slack", str(command.get("team_id") or self.team_id), channel, "")
        direct = channel.startswith("D") or command.get("channel_name") == "directmessage"
        text = command_text(str(command.get("text", "")))
        msg = IncomingMessage(
            key=key,
            user_id=str(command.get("user_id", "")),
            text=text,
            is_direct=direct,
        )

        async def run() -> None:
            language = await self._locales.of(msg.user_id)
            texts = self._catalogs.for_tag(language)
            if not direct and text.split()[0] in THREAD_COMMANDS:
                # A slash command does not say which thread it was typed next to, and in a
                # channel every conversation is a thread: point to the way that works.
                reply = texts.gettext(THREAD_HINT, bot=self.bot_user_id)
            else:
                try:
                    reply = to_mrkdwn(
                        await handler.command(dataclasses.replace(msg, language=language))
                    )
                except Exception as exc:
                    handler.on_error(exc, f"slack: the slash command {text!r}")
                    reply = texts.gettext(FAILED)
            await respond(text=reply, response_type="ephemeral")

        self._tasks.spawn(run(), "slack: a slash command's reply")


def command_text(text: str) -> str:
    """ "/edgeqa reset" arrives as text "reset"; the core wants "/reset". A user given as
    <@U123|name> (the command escapes mentions) is passed on as the id U123."""
    words = text.strip().split(maxsplit=1)
    if not words:
        return "/help"
    name = words[0].lower().lstrip("/")
    args = _USER_REF.sub(lambda m: m.group(1), words[1]).strip() if len(words) > 1 else ""
    return f"/{name} {args}".strip()
