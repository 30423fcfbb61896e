"""A local fake of the Telegram Bot API, good enough for python-telegram-bot to talk to.

It speaks HTTP on 127.0.0.1 (a free port) the way api.telegram.org does: POST
/bot<token>/<method> with form fields (JSON-encoded where not plain strings), answers
{"ok": true, "result": ...} or {"ok": false, "error_code", "description", "parameters"}.
It keeps every chat's messages (with their edit history), drafts and chat actions, serves
updates by long polling (getUpdates with offset) or delivers them to a webhook with the
secret header, and lets a test script faults: 429 + retry_after, "message is not modified",
entity parse errors, 5xx, a connection dropped before the call is processed ("drop") or
after it was (`drop_after`: the message exists, the client never hears so). HTML sent with
parse_mode=HTML is checked as strictly as Telegram does (allowed tags only, balanced, "<"
and "&" escaped). `close()` then `start()` restarts the server on the same port with the
same chats, as after an outage of api.telegram.org.

Tests play the users: `user_says(chat, user, text, ...)` puts a message in the update
queue exactly as Telegram would (with bot_command / mention entities).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import ClientSession, ClientTimeout, web

from tests.fakes.common import ScriptedFault, hang_up, serve, take_fault

NOT_MODIFIED = (
    "Bad Request: message is not modified: specified new message content and reply markup "
    "are exactly the same as a current content and reply markup of the message"
)
LIMIT = 4096
_JSON_FIELDS = {
    "reply_parameters",
    "commands",
    "scope",
    "allowed_updates",
    "entities",
    "reply_markup",
    "link_preview_options",
}
_INT_FIELDS = {
    "chat_id",
    "message_id",
    "message_thread_id",
    "draft_id",
    "offset",
    "limit",
    "timeout",
    "reply_to_message_id",
    "max_connections",
}
_ALLOWED_TAGS = {
    "b",
    "strong",
    "i",
    "em",
    "u",
    "ins",
    "s",
    "strike",
    "del",
    "a",
    "code",
    "pre",
    "blockquote",
    "span",
    "tg-spoiler",
    "tg-emoji",
}
_ENTITIES = {"lt": "<", "gt": ">", "amp": "&", "quot": '"'}
_MARKUP = re.compile(r"<(/?)([a-zA-Z][a-zA-Z-]*)((?:\s+[^<>]*)?)>|&(#\d+|#x[0-9a-fA-F]+|\w+);")


class ApiError(Exception):
    def __init__(self, code: int, description: str, parameters: dict[str, Any] | None = None):
        super().__init__(description)
        self.code = code
        self.description = description
        self.parameters = parameters


def parse_html(text: str) -> tuple[str, list[str]]:
    """Telegram's HTML: -> (visible text, tags used). Raises ApiError like Telegram does."""
    out: list[str] = []
    tags: list[str] = []
    stack: list[str] = []
    pos = 0
    for match in _MARKUP.finditer(text):
        out.append(_plain_run(text, pos, match.start()))
        pos = match.end()
        closing, name, attrs, entity = match.groups()
        if entity is not None:
            if entity.startswith("#x"):
                out.append(chr(int(entity[2:], 16)))
            elif entity.startswith("#"):
                out.append(chr(int(entity[1:])))
            elif entity in _ENTITIES:
                out.append(_ENTITIES[entity])
            else:
                raise ApiError(400, f"Bad Request: can't parse entities: Unknown entity {entity}")
            continue
        name = name.lower()
        if name not in _ALLOWED_TAGS:
            raise ApiError(
                400,
                f'Bad Request: can\'t parse entities: Unsupported start tag "{name}" '
                f"at byte offset {match.start()}",
            )
        if closing:
            if not stack or stack[-1] != name:
                raise ApiError(
                    400,
                    f"Bad Request: can't parse entities: Can't find end tag corresponding to "
                    f'start tag "{stack[-1] if stack else name}"',
                )
            stack.pop()
        else:
            stack.append(name)
            tags.append(f"<{name}{attrs}>")
    out.append(_plain_run(text, pos, len(text)))
    if stack:
        raise ApiError(
            400,
            "Bad Request: can't parse entities: Can't find end tag corresponding to start tag "
            f'"{stack[-1]}"',
        )
    return "".join(out), tags


def _plain_run(text: str, start: int, end: int) -> str:
    run = text[start:end]
    for bad in ("<", "&"):
        if bad in run:
            offset = len(text[: start + run.index(bad)].encode())
            raise ApiError(
                400,
                f"Bad Request: can't parse entities: Unexpected {bad!r} at byte offset {offset}",
            )
    return run


def _utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def auto_entities(text: str) -> list[dict[str, Any]]:
    """The entities Telegram adds by itself: a leading bot command, @mentions."""
    entities = []
    command = re.match(r"/[A-Za-z0-9_]{1,32}(?:@[A-Za-z0-9_]{3,32})?(?=\s|$)", text)
    if command:
        entities.append({"type": "bot_command", "offset": 0, "length": len(command.group())})
    for match in re.finditer(r"(?<![\w/])@[A-Za-z0-9_]{4,32}", text):
        offset = _utf16_len(text[: match.start()])
        entities.append({"type": "mention", "offset": offset, "length": len(match.group())})
    return entities


@dataclass
class Fault(ScriptedFault):
    kind: str  # retry_after not_modified parse_entities server_error drop drop_after
    # bad_request forbidden deleted not_found; malformed / malformed_date: the call is
    # carried out, but the reply is {} / has a date no client can read
    chat_id: int | None = None
    retry_after: int = 1
    description: str = ""
    only_html: bool = False

    def applies(self, params: dict[str, Any]) -> bool:
        if self.chat_id is not None and params.get("chat_id") != self.chat_id:
            return False
        return not (self.only_html and params.get("parse_mode") != "HTML")


@dataclass
class Sent:
    """A message in a chat (the bot's or a user's) as the fake server holds it."""

    message_id: int
    chat_id: int
    from_id: int
    text: str
    html: str | None = None
    reply_to: int | None = None
    thread_id: int | None = None
    history: list[str] = field(default_factory=list)  # every text it showed, in order


class FakeTelegram:
    def __init__(
        self, token: str = "123456:TEST-TOKEN", bot_id: int = 777, username: str = "edgeqa_bot"
    ) -> None:
        self.token = token
        self.bot: dict[str, Any] = {
            "id": bot_id,
            "is_bot": True,
            "first_name": "edgeqa",
            "username": username,
        }
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.faults: list[Fault] = []
        self.chats: dict[int, dict[str, Any]] = {}
        self.messages: dict[int, dict[int, Sent]] = {}
        self.drafts: dict[tuple[int, int], list[str]] = {}
        self.actions: list[tuple[int, str]] = []
        self.commands: dict[str, list[dict[str, str]]] = {}
        self.webhook: dict[str, Any] | None = None
        self.webhook_results: list[int] = []
        self.users: dict[int, dict[str, Any]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._ids = itertools.count(1)
        self._update_ids = itertools.count(1)
        self._updates: list[dict[str, Any]] = []
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self._delivery: asyncio.Task[None] | None = None
        self._closing = False
        self.port = 0

    # -- server --------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen on a free port, or again on the same port after `close()`."""
        self._closing = False
        app = web.Application()
        app.router.add_route("*", "/bot{token}/{method}", self._dispatch)
        self._runner, self.port = await serve(app, self.port, shutdown_timeout=0.5)

    async def close(self) -> None:
        """Stop listening and drop every connection (the chats and updates are kept)."""
        if self._delivery is not None:
            self._delivery.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._delivery
        self._closing = True  # long polls in flight return now instead of at their timeout
        await self._notify()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def base_url(self) -> str:
        """For python-telegram-bot's base_url (the token is appended to it)."""
        return f"http://127.0.0.1:{self.port}/bot"

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        method = request.match_info["method"]
        if request.match_info["token"] != self.token:
            return _error(ApiError(401, "Unauthorized"))
        try:
            params = await _params(request)
        except ConnectionResetError:  # the client gave up mid-request (a cancelled task)
            return web.Response(status=400)
        self.calls.append((method, params))
        try:
            fault = self._fault(method, params)
            if fault is not None and fault.kind == "drop":
                return hang_up(request)
            handler = getattr(self, f"api_{method}", None)
            if handler is None:
                raise ApiError(404, "Not Found")
            result = await handler(params)
        except ApiError as exc:
            return _error(exc)
        async with self._changed:
            self._changed.notify_all()
        if fault is not None and fault.kind == "drop_after":
            return hang_up(request)  # done, but the answer never reaches the client
        if fault is not None and fault.kind == "malformed":
            result = {}
        if fault is not None and fault.kind == "malformed_date" and isinstance(result, dict):
            result = {**result, "date": 10**12}  # the year 33658
        return web.json_response({"ok": True, "result": result})

    def fail(self, method: str, kind: str, **options: Any) -> Fault:
        """Make the next matching call(s) of `method` fail (see Fault for the options)."""
        fault = Fault(method, kind, **options)
        self.faults.append(fault)
        return fault

    def _fault(self, method: str, params: dict[str, Any]) -> Fault | None:
        fault = take_fault(self.faults, method, params)
        if fault is None:
            return None
        if fault.kind == "retry_after":
            raise ApiError(
                429,
                f"Too Many Requests: retry after {fault.retry_after}",
                {"retry_after": fault.retry_after},
            )
        if fault.kind == "not_modified":
            raise ApiError(400, NOT_MODIFIED)
        if fault.kind == "parse_entities":
            raise ApiError(
                400,
                "Bad Request: can't parse entities: Can't find end of the entity starting "
                "at byte offset 0",
            )
        if fault.kind == "server_error":
            raise ApiError(500, "Internal Server Error")
        if fault.kind == "not_found":  # an unknown method (an older self-hosted server)
            raise ApiError(404, "Not Found")
        if fault.kind == "deleted":  # a user deletes the message just before the edit
            self.messages.get(params.get("chat_id", 0), {}).pop(params.get("message_id", 0), None)
            raise ApiError(400, "Bad Request: message to edit not found")
        if fault.kind == "forbidden":
            raise ApiError(403, "Forbidden: bot was blocked by the user")
        if fault.kind == "bad_request":
            raise ApiError(400, fault.description or "Bad Request: chat not found")
        return fault

    # -- the test's side: users talk -----------------------------------------------------

    def user(
        self, user_id: int, name: str, username: str | None = None, language: str = ""
    ) -> dict[str, Any]:
        """`language`: the IETF tag of the user's Telegram app ("zh-hans"), as Telegram sends
        it in language_code; "" leaves the field out, as Telegram does when it is unknown."""
        user: dict[str, Any] = {"id": user_id, "is_bot": False, "first_name": name}
        if username:
            user["username"] = username
        if language:
            user["language_code"] = language
        self.users[user_id] = user
        return user

    def private_chat(self, user: dict[str, Any]) -> dict[str, Any]:
        chat = {"id": user["id"], "type": "private", "first_name": user["first_name"]}
        self.chats[user["id"]] = chat
        return chat

    def group(self, chat_id: int, title: str = "team", forum: bool = False) -> dict[str, Any]:
        chat: dict[str, Any] = {"id": chat_id, "type": "supergroup", "title": title}
        if forum:
            chat["is_forum"] = True
        self.chats[chat_id] = chat
        return chat

    def user_says(
        self,
        chat: dict[str, Any],
        user: dict[str, Any],
        text: str | None,
        *,
        reply_to: int | None = None,
        topic: int | None = None,
        entities: list[dict[str, Any]] | None = None,
        extra: dict[str, Any] | None = None,
        kind: str = "message",
    ) -> int:
        """A user posts `text` (None: a non-text message, see `extra`). Returns its id."""
        message_id = next(self._ids)
        sent = Sent(message_id, chat["id"], user["id"], text or "", None, reply_to, topic)
        sent.history.append(text or "")
        self.messages.setdefault(chat["id"], {})[message_id] = sent
        payload: dict[str, Any] = {
            "message_id": message_id,
            "date": int(time.time()),
            "chat": chat,
            "from": user,
        }
        if text is not None:
            payload["text"] = text
            found = auto_entities(text) if entities is None else entities
            if found:
                payload["entities"] = found
        if reply_to is not None:
            payload["reply_to_message"] = self._payload(self.messages[chat["id"]][reply_to])
        if topic is not None:
            payload["message_thread_id"] = topic
            payload["is_topic_message"] = True
        payload.update(extra or {})
        self.push_update({kind: payload})
        return message_id

    def push_update(self, update: dict[str, Any]) -> None:
        update = {"update_id": next(self._update_ids), **update}
        self._updates.append(update)
        if self.webhook is not None:
            self._start_delivery()
        task = asyncio.get_running_loop().create_task(self._notify())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # -- observing -----------------------------------------------------------------------

    def bot_messages(self, chat_id: int) -> list[Sent]:
        bot_id = self.bot["id"]
        return [m for m in self.messages.get(chat_id, {}).values() if m.from_id == bot_id]

    def method_calls(self, method: str, chat_id: int | None = None) -> list[dict[str, Any]]:
        return [
            params
            for name, params in self.calls
            if name == method and (chat_id is None or params.get("chat_id") == chat_id)
        ]

    async def wait_for(self, condition: Callable[[], Any], within: float = 30.0) -> Any:
        """Wait until `condition()` is truthy (re-checked after every API call)."""
        deadline = asyncio.get_running_loop().time() + within
        while not (result := condition()):
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise TimeoutError("condition not met in time")
            async with self._changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), min(left, 0.2))
        return result

    # -- Bot API methods -----------------------------------------------------------------

    async def api_getMe(self, params: dict[str, Any]) -> dict[str, Any]:
        return {**self.bot, "can_join_groups": True, "can_read_all_group_messages": False}

    async def api_deleteWebhook(self, params: dict[str, Any]) -> bool:
        self.webhook = None
        if params.get("drop_pending_updates"):
            self._updates.clear()
        return True

    async def api_setWebhook(self, params: dict[str, Any]) -> bool:
        self.webhook = params
        self._start_delivery()
        return True

    async def api_getWebhookInfo(self, params: dict[str, Any]) -> dict[str, Any]:
        url = self.webhook["url"] if self.webhook else ""
        return {"url": url, "has_custom_certificate": False, "pending_update_count": 0}

    async def api_setMyCommands(self, params: dict[str, Any]) -> bool:
        scope = params.get("scope") or {"type": "default"}
        name = scope["type"] + (f":{scope['chat_id']}" if "chat_id" in scope else "")
        if params.get("language_code"):  # the menu for users of that app language
            name += f"@{params['language_code']}"
        self.commands[name] = params["commands"]
        return True

    async def api_getUpdates(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        if self.webhook is not None:
            raise ApiError(
                409,
                "Conflict: can't use getUpdates method while webhook is active; "
                "use deleteWebhook to delete the webhook first",
            )
        offset = params.get("offset") or 0
        # Confirming: everything below the offset is forgotten, as on Telegram.
        self._updates = [u for u in self._updates if u["update_id"] >= offset]
        allowed = params.get("allowed_updates") or None
        limit = params.get("limit") or 100

        def pending() -> list[dict[str, Any]]:
            return [u for u in self._updates if allowed is None or set(u) & set(allowed)]

        timeout = float(params.get("timeout") or 0)
        if not pending() and timeout > 0:
            async with self._changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._changed.wait_for(lambda: pending() or self._closing), timeout
                    )
        return pending()[:limit]

    async def api_sendChatAction(self, params: dict[str, Any]) -> bool:
        self._chat(params)
        self.actions.append((params["chat_id"], params["action"]))
        return True

    async def api_sendMessageDraft(self, params: dict[str, Any]) -> bool:
        chat = self._chat(params)
        if chat["type"] != "private":
            raise ApiError(400, "Bad Request: TEXTDRAFT_PEER_INVALID")
        if not params.get("draft_id"):
            raise ApiError(400, "Bad Request: draft_id must be non-zero")
        text, _ = self._text(params, allow_empty=True)
        self.drafts.setdefault((chat["id"], params["draft_id"]), []).append(text)
        return True

    async def api_sendMessage(self, params: dict[str, Any]) -> dict[str, Any]:
        chat = self._chat(params)
        text, html = self._text(params)
        reply_to = None
        if "reply_parameters" in params:
            reply_to = params["reply_parameters"]["message_id"]
        elif "reply_to_message_id" in params:
            reply_to = params["reply_to_message_id"]
        message = Sent(
            next(self._ids),
            chat["id"],
            self.bot["id"],
            text,
            html,
            reply_to,
            params.get("message_thread_id"),
            [text],
        )
        self.messages.setdefault(chat["id"], {})[message.message_id] = message
        return self._payload(message)

    async def api_editMessageText(self, params: dict[str, Any]) -> dict[str, Any]:
        chat = self._chat(params)
        message = self.messages.get(chat["id"], {}).get(params.get("message_id", 0))
        if message is None or message.from_id != self.bot["id"]:
            raise ApiError(400, "Bad Request: message to edit not found")
        text, html = self._text(params)
        if (text, _tags(html)) == (message.text, _tags(message.html)):
            raise ApiError(400, NOT_MODIFIED)
        message.text, message.html = text, html
        message.history.append(text)
        return {**self._payload(message), "edit_date": int(time.time())}

    # -- helpers -------------------------------------------------------------------------

    def _chat(self, params: dict[str, Any]) -> dict[str, Any]:
        chat = self.chats.get(params.get("chat_id", 0))
        if chat is None:
            raise ApiError(400, "Bad Request: chat not found")
        return chat

    def _text(self, params: dict[str, Any], allow_empty: bool = False) -> tuple[str, str | None]:
        raw = params.get("text", "")
        html = None
        if params.get("parse_mode") == "HTML":
            html = raw
            raw, _ = parse_html(raw)
        elif params.get("parse_mode"):
            raise ApiError(400, "Bad Request: unsupported parse_mode in this fake")
        if not raw.strip() and not allow_empty:
            raise ApiError(400, "Bad Request: message text is empty")
        if _utf16_len(raw) > LIMIT:
            raise ApiError(400, "Bad Request: message is too long")
        return raw, html

    def _payload(self, message: Sent) -> dict[str, Any]:
        bot_id = self.bot["id"]
        payload: dict[str, Any] = {
            "message_id": message.message_id,
            "date": int(time.time()),
            "chat": self.chats[message.chat_id],
            "from": self.bot if message.from_id == bot_id else self.users[message.from_id],
            "text": message.text,
        }
        if message.thread_id is not None:
            payload["message_thread_id"] = message.thread_id
            payload["is_topic_message"] = True
        if message.reply_to is not None:
            replied = self.messages[message.chat_id].get(message.reply_to)
            if replied is not None:  # Telegram nests one level only
                payload["reply_to_message"] = {
                    k: v for k, v in self._payload(replied).items() if k != "reply_to_message"
                }
        return payload

    # -- webhook delivery ----------------------------------------------------------------

    def _start_delivery(self) -> None:
        if self._delivery is None or self._delivery.done():
            self._delivery = asyncio.create_task(self._deliver())

    async def _deliver(self) -> None:
        """POST pending updates to the webhook in order, with the secret header."""
        async with ClientSession(timeout=ClientTimeout(total=10)) as session:
            while self.webhook is not None and self._updates:
                update = self._updates.pop(0)
                headers = {}
                if self.webhook.get("secret_token"):
                    headers["X-Telegram-Bot-Api-Secret-Token"] = self.webhook["secret_token"]
                async with session.post(self.webhook["url"], json=update, headers=headers) as r:
                    self.webhook_results.append(r.status)
                async with self._changed:
                    self._changed.notify_all()


def _tags(html: str | None) -> list[str]:
    return parse_html(html)[1] if html else []


def _error(exc: ApiError) -> web.Response:
    body: dict[str, Any] = {"ok": False, "error_code": exc.code, "description": exc.description}
    if exc.parameters:
        body["parameters"] = exc.parameters
    return web.json_response(body, status=exc.code)


async def _params(request: web.Request) -> dict[str, Any]:
    """PTB posts form fields: strings as they are, everything else JSON-encoded."""
    if request.content_type == "application/json":
        data = await request.json()
        return dict(data) if isinstance(data, dict) else {}
    form = await request.post() if request.can_read_body else {}
    params: dict[str, Any] = dict(request.query)
    for name, value in form.items():
        if not isinstance(value, str):
            continue
        if name in _JSON_FIELDS or name in _INT_FIELDS or value in ("true", "false"):
            with contextlib.suppress(ValueError):
                params[name] = json.loads(value)
                continue
        params[name] = value
    return params
