"""HTTP side of the browser chat: the page, asking, history and the per-thread event stream.

Ids from the page (browser id, thread id) are opaque strings we only check for shape; they
become `ConversationKey.channel` / `.thread`. When a token is configured (always when the
chat listens beyond loopback) every route here needs it, from an `Authorization: Bearer`
header or the cookie a `/?token=...` visit sets. Without a token the routes only answer a
loopback `Host`, so a web page elsewhere cannot reach the chat through DNS rebinding, and
asking needs a JSON body, which a cross-site form cannot send.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import re
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import TYPE_CHECKING, Any

from aiohttp import web

from adapters.web.page import PageRenderer
from adapters.web.state import source_dicts
from bot.grounding import cited
from bot.i18n import N_, Texts
from bot.text import clean_text
from bot.types import ConversationKey
from storage.base import Turn

if TYPE_CHECKING:
    from adapters.web.adapter import WebChatAdapter

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
BAD_IDS = N_("browser and thread must be 8-64 letters, digits, - or _")
MAX_TEXT_CHARS = 32_000  # above bot.max_question_chars so the core explains a long question
MAX_BODY_BYTES = 4 * MAX_TEXT_CHARS + 1024
MAX_RUNNING_PER_THREAD = 8
MAX_STREAMS = 256  # open event streams, all browsers together
COOKIE = "edgeqa_web"
HEARTBEAT_SECONDS = 15.0
STATIC_TYPES = {".html": "text/html", ".css": "text/css", ".js": "text/javascript"}
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def _static_files() -> dict[str, bytes]:
    folder = resources.files("adapters.web") / "static"
    return {
        item.name: item.read_bytes()
        for item in folder.iterdir()
        if item.is_file() and any(item.name.endswith(ext) for ext in STATIC_TYPES)
    }


def _content_type(name: str) -> str:
    return next(ctype for ext, ctype in STATIC_TYPES.items() if name.endswith(ext))


def _loopback_name(name: str | None) -> bool:
    if name is None:
        return False
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name.strip("[]")).is_loopback
    except ValueError:
        return False


class WebRoutes:
    """The routes `WebChatAdapter.mount` adds to the bot's one aiohttp application."""

    heartbeat = HEARTBEAT_SECONDS

    def __init__(self, adapter: WebChatAdapter, *, token: str | None) -> None:
        self.adapter = adapter
        self.token = token
        self.session = (
            hmac.new(token.encode(), b"edgeqa-web-session", hashlib.sha256).hexdigest()
            if token
            else None
        )
        self.files = _static_files()
        self.renderer = PageRenderer(self.files["index.html"].decode())

    def mount(self, app: web.Application) -> None:
        app.router.add_get("/", self._guard(self.page))
        app.router.add_get("/assets/{name}", self._guard(self.asset))
        app.router.add_post("/api/ask", self._guard(self.ask))
        app.router.add_get("/api/history", self._guard(self.history))
        app.router.add_get("/api/events", self._guard(self.events))
        app.on_shutdown.append(self._on_shutdown)

    async def _on_shutdown(self, app: web.Application) -> None:
        self.adapter.state.close_all()

    # --- access --------------------------------------------------------------------------

    def _guard(self, handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            if self.token is None:
                if not _loopback_name(request.url.host):
                    message = N_("the browser chat answers only on a loopback address")
                    return self._error(request, 403, message)
            elif request.path == "/" and "token" in request.query:
                return self._login(request)
            elif not self._authorized(request):
                message = N_("open the chat once as /?token=<EDGEQA_WEB_TOKEN>")
                return self._error(request, 401, message)
            return await handler(request)

        return guarded

    def _authorized(self, request: web.Request) -> bool:
        assert self.token is not None and self.session is not None
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            return hmac.compare_digest(header[7:].strip().encode(), self.token.encode())
        cookie = request.cookies.get(COOKIE, "")
        return hmac.compare_digest(cookie.encode(), self.session.encode())

    def _login(self, request: web.Request) -> web.StreamResponse:
        assert self.token is not None and self.session is not None
        given = request.query.get("token", "")
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            return self._error(request, 401, N_("wrong token"))
        response = web.Response(status=303, headers={**SECURITY_HEADERS, "Location": "/"})
        response.set_cookie(
            COOKIE,
            self.session,
            max_age=30 * 86400,
            httponly=True,
            samesite="Strict",
            secure=request.secure,
        )
        return response

    # --- language ------------------------------------------------------------------------

    def texts(self, request: web.Request) -> Texts:
        """The browser's language (Accept-Language), for the page, its API and its questions."""
        return self.adapter.catalogs.for_header(request.headers.get("Accept-Language", ""))

    def _error(
        self, request: web.Request, status: int, message: str, **values: object
    ) -> web.Response:
        return _error(status, self.texts(request).gettext(message, **values))

    def _too_long(self, request: web.Request) -> web.Response:
        message = N_("a message may have at most %(limit)d characters")
        return self._error(request, 413, message, limit=MAX_TEXT_CHARS)

    # --- page ----------------------------------------------------------------------------

    async def page(self, request: web.Request) -> web.StreamResponse:
        headers = {**SECURITY_HEADERS, "Content-Security-Policy": PAGE_CSP}
        return web.Response(
            body=self.renderer.render(self.texts(request)),
            content_type="text/html",
            charset="utf-8",
            headers=headers,
        )

    async def asset(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in self.files or name == "index.html":
            return self._error(request, 404, N_("no such file"))
        return web.Response(
            body=self.files[name],
            content_type=_content_type(name),
            charset="utf-8",
            headers=SECURITY_HEADERS,
        )

    # --- API -----------------------------------------------------------------------------

    async def ask(self, request: web.Request) -> web.StreamResponse:
        if request.content_type != "application/json":
            return self._error(request, 415, N_("send JSON: {browser, thread, text}"))
        if (request.content_length or 0) > MAX_BODY_BYTES:
            return self._too_long(request)
        body = await request.read()
        if len(body) > MAX_BODY_BYTES:
            return self._too_long(request)
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return self._error(request, 400, N_("not JSON"))
        if not isinstance(data, dict):
            return self._error(request, 400, N_("send a JSON object: {browser, thread, text}"))
        key = _key(data.get("browser"), data.get("thread"))
        if key is None:
            return self._error(request, 400, BAD_IDS)
        text = data.get("text")
        if not isinstance(text, str):
            return self._error(request, 400, N_("the message is empty"))
        # As the core will store it (no NUL, no lone surrogates), so the question shown live
        # matches the stored one and every event can be encoded as UTF-8.
        text = clean_text(text).strip()
        if not text:
            return self._error(request, 400, N_("the message is empty"))
        if len(text) > MAX_TEXT_CHARS:
            return self._too_long(request)
        if self.adapter.handler is None:
            return self._error(request, 503, N_("the bot is starting or stopping"))
        if self.adapter.state.running(key) >= MAX_RUNNING_PER_THREAD:
            message = N_("this thread already has several questions waiting")
            return self._error(request, 429, message)
        message_id = self.adapter.ask(key, text, language=self.texts(request).language)
        return web.json_response({"id": message_id}, status=202, headers=SECURITY_HEADERS)

    async def history(self, request: web.Request) -> web.StreamResponse:
        key = _key(request.query.get("browser"), request.query.get("thread"))
        if key is None:
            return self._error(request, 400, BAD_IDS)
        handler = self.adapter.handler
        if handler is None:
            return self._error(request, 503, N_("the bot is starting or stopping"))
        state = self.adapter.state
        since = state.seq
        turns = list(await handler.history(key))
        live = _without_stored(state.snapshot(key, finished_since=since), turns)
        payload = {
            "seq": state.seq,
            "turns": [
                {
                    "question": t.question,
                    "answer": t.answer,
                    "status": t.status,
                    "tokens": t.completion_tokens,
                    "sources": source_dicts(cited(t.answer, t.sources)),
                }
                for t in turns
            ],
            "live": live,
        }
        return web.json_response(payload, headers=SECURITY_HEADERS)

    async def events(self, request: web.Request) -> web.StreamResponse:
        """All threads of a browser (the page: one stream per browser, shared by its tabs),
        or one thread with `&thread=`."""
        browser, thread = request.query.get("browser"), request.query.get("thread")
        if _key(browser, thread if thread is not None else browser) is None:
            return self._error(request, 400, BAD_IDS)
        assert browser is not None
        state = self.adapter.state
        if state.subscriber_count >= MAX_STREAMS:
            return self._error(request, 503, N_("too many open event streams"))
        subscriber = state.subscribe(browser, thread)
        response = web.StreamResponse(
            headers={
                **SECURITY_HEADERS,
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache, no-transform",
                "X-Accel-Buffering": "no",
            }
        )
        try:
            await response.prepare(request)
            await response.write(b'retry: 1500\n\ndata: {"type":"hello"}\n\n')
            while True:
                frames = await subscriber.wait(self.heartbeat)
                if frames is None:
                    break
                await response.write("".join(frames).encode() if frames else b": ping\n\n")
        except ConnectionError:
            log.debug("an event stream of browser %s went away", browser)
        finally:
            state.unsubscribe(subscriber)
        return response


def _key(browser: Any, thread: Any) -> ConversationKey | None:
    if not isinstance(browser, str) or not isinstance(thread, str):
        return None
    if not ID_PATTERN.match(browser) or not ID_PATTERN.match(thread):
        return None
    return ConversationKey(platform="web", workspace="", channel=browser, thread=thread)


def _without_stored(live: list[dict[str, Any]], turns: list[Turn]) -> list[dict[str, Any]]:
    """Drop live exchanges whose turn the history already holds.

    The core delivers the final text, then stores the turn, then returns from handle(); so
    only an exchange whose replies are all final can be stored already. Such an exchange is
    matched (by its question) with one of the last stored turns, so a reload at that instant
    shows the turn once. (Two identical questions in a row may show once until the next load.)
    """
    tail = [_normal(turn.question) for turn in turns[-len(live) :]] if live else []
    kept = []
    for exchange in live:
        replies = exchange["replies"]
        question = exchange["question"]
        stored = question is not None and replies and all(r["final"] for r in replies)
        if stored and _normal(question) in tail:
            tail.remove(_normal(question))
            continue
        kept.append(exchange)
    return kept


def _normal(text: str) -> str:
    return text.replace("\r\n", "\n").strip()


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=SECURITY_HEADERS)
