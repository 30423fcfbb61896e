"""Shared pieces of the browser-chat tests: a scripted core, a server, an SSE reader.

`ScriptedCore` stands in for the ConversationService only where the adapter itself is under
test: it streams a fixed reply through the real adapter's send/edit/progress exactly the way
the core's flusher does (typing, send, growing edits, final edit) and keeps turns in memory.
The end-to-end browser test uses the real core and llama.cpp instead.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient, TestServer

from adapters.web import WebChatAdapter
from bot.access import AccessPolicy
from bot.config import Settings
from bot.types import ConversationKey, IncomingMessage, MessageRef, Progress
from storage.base import Turn

BROWSER = "browser-0001"
STEPS = ("The answer ", "grows ", "in **several** ", "steps.")


class ScriptedCore:
    """Answers every question with `Answer to <q>: ` + STEPS, one edit per step."""

    def __init__(self, adapter: WebChatAdapter, *, delay: float = 0.05) -> None:
        self.adapter = adapter
        self.delay = delay
        self.turns: dict[ConversationKey, list[Turn]] = {}
        self.gate: asyncio.Event | None = None  # when set, answers pause after two steps
        self.fail = False
        self.errors: list[str] = []  # what reached the error hook

    async def handle(self, msg: IncomingMessage) -> None:
        if self.fail:
            raise RuntimeError("boom")
        if msg.text.startswith("/"):
            await self.adapter.send(
                msg.key, await self.command(msg), reply_to=msg.message_id, final=True
            )
            return
        key, adapter = msg.key, self.adapter
        await adapter.progress(key, None, Progress(queue_position=1))
        await asyncio.sleep(self.delay)
        await adapter.typing(key)
        await asyncio.sleep(self.delay)
        text = f"Answer to {msg.text}: "
        ref: MessageRef | None = None
        for i, step in enumerate(STEPS):
            text += step
            if ref is None:
                ref = await adapter.send(key, text, reply_to=msg.message_id)
            else:
                await adapter.edit(ref, text)
            await adapter.progress(key, ref, Progress(tokens=i + 1, tokens_per_second=12.5))
            if i == 1 and self.gate is not None:
                await self.gate.wait()
            await asyncio.sleep(self.delay)
        assert ref is not None
        await adapter.edit(ref, text, final=True)
        await adapter.progress(
            key, ref, Progress(tokens=len(STEPS), tokens_per_second=12.5, done=True)
        )
        turn = Turn(msg.user_id, msg.text, text, "complete", 3, len(STEPS), datetime.now(UTC))
        self.turns.setdefault(key, []).append(turn)

    async def command(self, msg: IncomingMessage) -> str:
        name = msg.text.split()[0]
        if name == "/reset":
            removed = len(self.turns.pop(msg.key, []))
            return f"Forgot this thread ({removed} turns)."
        if name == "/help":
            return "Commands: /help /reset /stop /stats /reset-all /forget"
        return f"Unknown command {name}"

    async def history(self, key: ConversationKey) -> list[Turn]:
        return list(self.turns.get(key, []))

    def allows(self, msg: IncomingMessage) -> bool:
        return AccessPolicy(self.adapter.settings).allowed(msg)

    def on_error(self, exc: BaseException, what: str) -> None:
        self.errors.append(f"{what}: {exc}")


def web_settings(**kwargs: Any) -> Settings:
    return Settings(web={"edit_interval": 0.05}, **kwargs)


@asynccontextmanager
async def web_server(
    settings: Settings | None = None,
) -> AsyncIterator[tuple[WebChatAdapter, ScriptedCore, TestClient[web.Request, web.Application]]]:
    """The adapter mounted on an aiohttp app on 127.0.0.1 (free port), started on a ScriptedCore."""
    adapter = WebChatAdapter(settings or web_settings())
    adapter.routes.heartbeat = 0.05  # notice closed streams quickly
    app = web.Application()
    adapter.mount(app)
    core = ScriptedCore(adapter)
    await adapter.start(core)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        yield adapter, core, client
    finally:
        await adapter.stop()
        await client.close()


class EventStream:
    """Reads `data:` events of one SSE response, each within `wait` seconds by default."""

    def __init__(self, response: ClientResponse, wait: float = 10.0) -> None:
        self.response = response
        self.wait = wait
        self.seen: list[dict[str, Any]] = []

    async def next(self, wait: float | None = None) -> dict[str, Any]:
        async with asyncio.timeout(self.wait if wait is None else wait):
            while True:
                line = await self.response.content.readline()
                if not line:
                    raise EOFError("the event stream ended")
                if line.startswith(b"data: "):
                    event: dict[str, Any] = json.loads(line[6:])
                    self.seen.append(event)
                    return event

    async def until(self, done: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        """Events up to and including the first one `done` accepts."""
        events = []
        while True:
            event = await self.next()
            events.append(event)
            if done(event):
                return events


@asynccontextmanager
async def subscribed(
    client: TestClient[web.Request, web.Application],
    thread: str | None,
    browser: str = BROWSER,
    **headers: str,
) -> AsyncIterator[EventStream]:
    """The event stream of one thread, or of all the browser's threads (`thread` None)."""
    params = {"browser": browser} | ({"thread": thread} if thread else {})
    response = await client.get("/api/events", params=params, headers=headers)
    assert response.status == 200, await response.text()
    stream = EventStream(response)
    assert (await stream.next())["type"] == "hello"
    try:
        yield stream
    finally:
        response.close()


async def ask(
    client: TestClient[web.Request, web.Application], thread: str, text: str, **headers: str
) -> ClientResponse:
    return await client.post(
        "/api/ask", json={"browser": BROWSER, "thread": thread, "text": text}, headers=headers
    )
