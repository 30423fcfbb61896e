"""A local stand-in for Slack's Web API (https://slack.com/api/*) and response URLs.

The real slack-sdk client talks to it over HTTP (base_url). It keeps every channel's
messages and threads, each bot message's history of texts, every call made (with a
monotonic timestamp, to count chat.update per minute), and can be scripted to fail: 429 with
Retry-After, msg_too_long, 5xx, a connection dropped before the call is processed or after
it was (`drop="after"`: the message exists, the client never hears so). Only what the bot
uses is implemented, with Slack's field names and error codes. `close()` then `start()`
restarts it on the same port with the same messages, as after an outage.
"""

from __future__ import annotations

import inspect
import itertools
import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes.common import ScriptedFault, hang_up, serve, take_fault


@dataclass
class Message:
    channel: str
    ts: str
    text: str
    user: str = ""
    bot_id: str = ""
    thread_ts: str = ""
    texts: list[str] = field(default_factory=list)  # every text it showed, oldest first
    streaming: bool = False

    @property
    def is_bot(self) -> bool:
        return bool(self.bot_id)


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    at: float
    token: str


@dataclass
class Fault(ScriptedFault):
    status: int = 200
    error: str = ""
    retry_after: float | None = None
    drop: str = ""  # "before" / "after": hang up before / after doing what was asked


class FakeSlackApi:
    def __init__(
        self,
        *,
        team_id: str = "T0TEAM",
        bot_user_id: str = "U0BOT",
        bot_id: str = "B0BOT",
        bot_token: str = "xoxb-test-token",
        app_token: str = "xapp-test-token",
        max_text: int = 40_000,
    ) -> None:
        self.team_id = team_id
        self.bot_user_id = bot_user_id
        self.bot_id = bot_id
        self.bot_token = bot_token
        self.app_token = app_token
        self.max_text = max_text
        # What apps.connections.open hands out; a coroutine function: a new URL each time.
        self.socket_url: Callable[[], Awaitable[str]] | str = ""
        self.calls: list[Call] = []
        self.messages: dict[str, list[Message]] = {}
        self.statuses: dict[tuple[str, str], str] = {}
        self.status_error = ""  # e.g. "not_allowed": assistant.threads.setStatus refuses
        self.status_errors: dict[str, str] = {}  # the same, in one channel only
        self.stream_error = ""  # e.g. "unknown_method": no native streaming
        # users.info: user id -> locale ("zh-CN"); the bot token's scopes (without
        # users:read, Slack answers missing_scope).
        self.locales: dict[str, str] = {}
        self.scopes = {"chat:write", "commands", "app_mentions:read", "users:read"}
        self.responses: dict[str, list[dict[str, Any]]] = {}
        self.faults: list[Fault] = []
        self.on_bot_message: Callable[[Message, str], None] | None = None
        self._ts = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self.port = 0

    # -- server --------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen on a free port, or again on the same port after `close()`."""
        app = web.Application()
        app.router.add_post("/api/{method}", self._api)
        app.router.add_get("/api/{method}", self._api)  # the SDK reads users.info with GET
        app.router.add_post("/response/{rid}", self._response)
        self._runner, self.port = await serve(app, self.port, shutdown_timeout=0.5)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/"

    def response_url(self, rid: str) -> str:
        return f"http://127.0.0.1:{self.port}/response/{rid}"

    # -- scripting and inspection --------------------------------------------------------

    def fail(self, method: str, **kw: Any) -> Fault:
        fault = Fault(method, **kw)
        self.faults.append(fault)
        return fault

    def new_ts(self) -> str:
        return f"1700000000.{next(self._ts):06d}"

    def user_message(
        self, channel: str, text: str, *, user: str = "U0ALICE", thread_ts: str = ""
    ) -> Message:
        message = Message(channel, self.new_ts(), text, user=user, thread_ts=thread_ts)
        message.texts.append(text)
        self.messages.setdefault(channel, []).append(message)
        return message

    def thread(self, channel: str, thread_ts: str) -> list[Message]:
        """The replies in a thread (without its first message), oldest first."""
        return [
            m
            for m in self.messages.get(channel, [])
            if m.thread_ts == thread_ts and m.ts != thread_ts
        ]

    def main_line(self, channel: str) -> list[Message]:
        return [m for m in self.messages.get(channel, []) if not m.thread_ts]

    def bot_messages(self, channel: str, thread_ts: str | None = None) -> list[Message]:
        source = (
            self.messages.get(channel, []) if thread_ts is None else self.thread(channel, thread_ts)
        )
        return [m for m in source if m.is_bot]

    def find(self, channel: str, ts: str) -> Message | None:
        return next((m for m in self.messages.get(channel, []) if m.ts == ts), None)

    def count(self, method: str) -> int:
        return sum(1 for call in self.calls if call.method == method)

    def max_per_window(self, method: str, window: float = 60.0) -> int:
        """The most calls of `method` in any `window` seconds."""
        times = [call.at for call in self.calls if call.method == method]
        best = 0
        for i, start in enumerate(times):
            best = max(best, sum(1 for t in times[i:] if t - start < window))
        return best

    # -- handlers ------------------------------------------------------------------------

    async def _response(self, request: web.Request) -> web.Response:
        self.responses.setdefault(request.match_info["rid"], []).append(await request.json())
        return web.Response(text="ok", content_type="text/plain")

    async def _params(self, request: web.Request) -> dict[str, Any]:
        params: dict[str, Any] = dict(request.query)
        if request.content_type == "application/json":
            body = await request.text()
            if body:
                params.update(json.loads(body))
        elif request.can_read_body:
            params.update(dict(await request.post()))
        return params

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        params = await self._params(request)
        auth = request.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ") if auth else str(params.get("token", ""))
        self.calls.append(Call(method, params, time.monotonic(), token))
        fault = take_fault(self.faults, method, params)
        if fault is not None and fault.drop != "after":
            return self._fault(fault, request)
        expected = self.app_token if method == "apps.connections.open" else self.bot_token
        if token != expected:
            return _ok(False, error="invalid_auth")
        handler = getattr(self, "_m_" + method.replace(".", "_"), None)
        if handler is None:
            return _ok(False, error="unknown_method")
        result = handler(params)
        if inspect.isawaitable(result):
            result = await result
        if fault is not None:  # done, but the answer never reaches the client
            return hang_up(request)
        return result

    def _fault(self, fault: Fault, request: web.Request) -> web.Response:
        if fault.drop:
            return hang_up(request)
        if fault.status >= 500:
            return web.Response(
                status=fault.status, text="<html>oops</html>", content_type="text/html"
            )
        headers = {}
        if fault.retry_after is not None:
            headers["Retry-After"] = f"{fault.retry_after:g}"
        error = fault.error or ("ratelimited" if fault.status == 429 else "fatal_error")
        return web.json_response(
            {"ok": False, "error": error}, status=fault.status, headers=headers
        )

    def _m_auth_test(self, params: dict[str, Any]) -> web.Response:
        return _ok(
            url="https://fake.slack.com/",
            team="Fake Team",
            user="edgeqa",
            team_id=self.team_id,
            user_id=self.bot_user_id,
            bot_id=self.bot_id,
            is_enterprise_install=False,
        )

    async def _m_apps_connections_open(self, params: dict[str, Any]) -> web.Response:
        url = await self.socket_url() if callable(self.socket_url) else self.socket_url
        return _ok(url=url)

    def _m_users_info(self, params: dict[str, Any]) -> web.Response:
        """Slack's users.info: the locale only with include_locale=true, the scope needed."""
        if "users:read" not in self.scopes:
            provided = ",".join(sorted(self.scopes))
            return _ok(False, error="missing_scope", needed="users:read", provided=provided)
        user = str(params.get("user", ""))
        if not user.startswith(("U", "W")):
            return _ok(False, error="user_not_found")
        info: dict[str, Any] = {
            "id": user,
            "team_id": self.team_id,
            "name": user.lower(),
            "deleted": False,
            "is_bot": False,
            "tz": "Asia/Shanghai",
        }
        if str(params.get("include_locale", "")).lower() in ("true", "1"):
            info["locale"] = self.locales.get(user, "en-US")
        return _ok(user=info)

    def _listed(self, message: Message) -> dict[str, Any]:
        listed: dict[str, Any] = {"type": "message", "ts": message.ts, "text": message.text}
        listed["user"] = message.user
        if message.bot_id:
            listed["bot_id"] = message.bot_id
        if message.thread_ts:
            listed["thread_ts"] = message.thread_ts
        return listed

    def _m_conversations_history(self, params: dict[str, Any]) -> web.Response:
        """The channel's main line, newest first, after `oldest` (exclusive)."""
        channel = str(params.get("channel", ""))
        if channel not in self.messages:
            return _ok(False, error="channel_not_found")
        oldest = _ts_key(str(params.get("oldest") or "0"))
        limit = int(params.get("limit") or 100)
        found = [m for m in self.main_line(channel) if _ts_key(m.ts) > oldest]
        found.sort(key=lambda m: _ts_key(m.ts), reverse=True)
        listed = [self._listed(m) for m in found[:limit]]
        return _ok(messages=listed, has_more=len(found) > limit)

    def _m_conversations_replies(self, params: dict[str, Any]) -> web.Response:
        """A thread: its first message, then the replies after `oldest`, oldest first."""
        channel, ts = str(params.get("channel", "")), str(params.get("ts", ""))
        parent = self.find(channel, ts)
        if parent is None:
            return _ok(False, error="thread_not_found")
        oldest = _ts_key(str(params.get("oldest") or "0"))
        limit = int(params.get("limit") or 100)
        replies = [m for m in self.thread(channel, ts) if _ts_key(m.ts) > oldest]
        replies.sort(key=lambda m: _ts_key(m.ts))
        listed = [self._listed(m) for m in [parent, *replies][:limit]]
        return _ok(messages=listed, has_more=len(replies) + 1 > limit)

    def _bot_post(self, channel: str, text: str, thread_ts: str) -> Message:
        message = Message(
            channel,
            self.new_ts(),
            text,
            user=self.bot_user_id,
            bot_id=self.bot_id,
            thread_ts=thread_ts,
        )
        message.texts.append(text)
        self.messages.setdefault(channel, []).append(message)
        self.statuses.pop((channel, thread_ts), None)  # Slack clears the status on a reply
        if self.on_bot_message is not None:
            self.on_bot_message(message, "")
        return message

    def _m_chat_postMessage(self, params: dict[str, Any]) -> web.Response:
        channel, text = str(params.get("channel", "")), str(params.get("text", ""))
        if not channel:
            return _ok(False, error="channel_not_found")
        if not text:
            return _ok(False, error="no_text")
        if len(text) > self.max_text:
            return _ok(False, error="msg_too_long")
        message = self._bot_post(channel, text, str(params.get("thread_ts", "")))
        return _ok(channel=channel, ts=message.ts, message={"text": text, "ts": message.ts})

    def _m_chat_update(self, params: dict[str, Any]) -> web.Response:
        channel, text = str(params.get("channel", "")), str(params.get("text", ""))
        message = self.find(channel, str(params.get("ts", "")))
        if message is None:
            return _ok(False, error="message_not_found")
        if not message.is_bot:
            return _ok(False, error="cant_update_message")
        if len(text) > self.max_text:
            return _ok(False, error="msg_too_long")
        message.text = text
        message.texts.append(text)
        if self.on_bot_message is not None:
            self.on_bot_message(message, "message_changed")
        return _ok(channel=channel, ts=message.ts, text=text)

    def _m_chat_startStream(self, params: dict[str, Any]) -> web.Response:
        if self.stream_error:
            return _ok(False, error=self.stream_error)
        channel, thread_ts = str(params.get("channel", "")), str(params.get("thread_ts", ""))
        if not thread_ts:
            return _ok(False, error="invalid_arguments")
        if not channel.startswith("D") and not (
            params.get("recipient_user_id") and params.get("recipient_team_id")
        ):
            return _ok(False, error="invalid_arguments")  # required when streaming to channels
        text = str(params.get("markdown_text", ""))
        message = self._bot_post(channel, text, thread_ts)
        message.streaming = True
        return _ok(channel=channel, ts=message.ts)

    def _stream(self, params: dict[str, Any]) -> Message | web.Response:
        message = self.find(str(params.get("channel", "")), str(params.get("ts", "")))
        if message is None:
            return _ok(False, error="message_not_found")
        if not message.streaming:
            return _ok(False, error="message_not_in_streaming_state")
        text = str(params.get("markdown_text", "") or "")
        if len(message.text + text) > self.max_text:
            return _ok(False, error="msg_too_long")
        if text:
            message.text += text
            message.texts.append(message.text)
        return message

    def _m_chat_appendStream(self, params: dict[str, Any]) -> web.Response:
        message = self._stream(params)
        if isinstance(message, web.Response):
            return message
        return _ok(channel=message.channel, ts=message.ts)

    def _m_chat_stopStream(self, params: dict[str, Any]) -> web.Response:
        message = self._stream(params)
        if isinstance(message, web.Response):
            return message
        message.streaming = False
        return _ok(channel=message.channel, ts=message.ts, message={"text": message.text})

    def _m_assistant_threads_setStatus(self, params: dict[str, Any]) -> web.Response:
        channel, thread_ts = str(params.get("channel_id", "")), str(params.get("thread_ts", ""))
        if error := self.status_errors.get(channel, self.status_error):
            return _ok(False, error=error)
        if not channel or not thread_ts:
            return _ok(False, error="invalid_arguments")
        self.statuses[(channel, thread_ts)] = str(params.get("status", ""))
        return _ok()


# Slack styles a run between two markers only at word edges: the opening marker at the
# start or after a space or an opening bracket/quote, followed by a non-space; the closing
# one after a non-space, followed by the end, a space or punctuation. Inside a word
# ("2_3_4") or after any other character (a zero-width space included) it stays a character.
_STYLED = re.compile(
    r"(?:(?<=^)|(?<=[\s(\[{\"']))([*_~`])(?=\S)(.+?)(?<=\S)\1(?=$|[\s.,;:!?)\]}\"'-])",
    re.MULTILINE,
)
_STYLE_NAMES = {"*": "bold", "_": "italic", "~": "strike", "`": "code"}
_LINKED = re.compile(r"<([^<>|]+)(?:\|([^<>]*))?>")


def shown(mrkdwn: str) -> tuple[str, list[tuple[str, str]]]:
    """What a reader sees of a message's mrkdwn `text`, the way Slack's clients render it:
    the visible characters (markers that style something, links' URLs and zero-width spaces
    are not seen), and the styled runs as (style, visible text)."""
    styles: list[tuple[str, str]] = []

    def style(match: re.Match[str]) -> str:
        styles.append((_STYLE_NAMES[match.group(1)], match.group(2)))
        return match.group(2)

    text = mrkdwn
    while True:
        styled = _STYLED.sub(style, text)
        if styled == text:
            break
        text = styled
    text = _LINKED.sub(lambda m: m.group(2) or m.group(1), text)
    text = text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    return text.replace("\u200b", ""), styles


def _ok(ok: bool = True, **fields: Any) -> web.Response:
    return web.json_response({"ok": ok, **fields})


def _ts_key(ts: str) -> tuple[int, int]:
    """Slack timestamps ("1700000000.000123") in order, without float rounding."""
    seconds, _, micros = ts.partition(".")
    return int(seconds or 0), int(micros or 0)
