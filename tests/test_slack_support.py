"""Shared pieces of the Slack tests: settings for the fakes, a scripted core, waiting.

`ScriptedCore` stands in for the conversation service only where the adapter itself is
under test: it records what the adapter delivers and streams a scripted answer through the
core's real StreamFlusher. The end-to-end tests (test_slack_e2e.py) use the real service
and the real llama.cpp engine instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from pydantic import SecretStr

from adapters.slack import SlackAdapter
from bot.config import Settings, SlackSettings
from bot.flusher import StreamFlusher
from bot.types import ConversationKey, IncomingMessage
from tests.fakes.slack_workspace import SIGNING_SECRET, SlackWorkspace

PROXY_VARIABLES = (
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
)


def slack_settings(ws: SlackWorkspace, **slack: Any) -> Settings:
    section: dict[str, Any] = {
        "enabled": True,
        "base_url": ws.api.base_url,
        "edit_interval": 0.05,
        "workspace_edits_per_minute": 600,
    }
    section.update(slack)
    return Settings(
        slack=SlackSettings(**section),
        slack_bot_token=SecretStr(ws.api.bot_token),
        slack_app_token=SecretStr(ws.api.app_token),
        slack_signing_secret=SecretStr(SIGNING_SECRET),
    )


def default_answer(msg: IncomingMessage) -> str:
    return f"You asked: {msg.text}. Here is **the answer** with a [link](https://example.com)."


class ScriptedCore:
    def __init__(
        self,
        adapter: SlackAdapter,
        answer: Callable[[IncomingMessage], str] = default_answer,
        *,
        step: float = 0.02,
        chunk: int = 6,
        first_token_after: float = 0.0,
    ) -> None:
        self.adapter = adapter
        self.answer = answer
        self.step = step
        self.chunk = chunk
        self.first_token_after = first_token_after
        self.handled: list[IncomingMessage] = []
        self.answered: list[IncomingMessage] = []
        self.commands: list[IncomingMessage] = []
        self.stored: dict[ConversationKey, list[str]] = {}
        self.command_gate = asyncio.Event()
        self.command_gate.set()
        self.command_reply = "done"

    async def handle(self, msg: IncomingMessage) -> None:
        self.handled.append(msg)
        text = self.answer(msg)
        flusher = StreamFlusher(self.adapter, msg.key, reply_to=msg.message_id)
        flusher.start()
        flusher.start_typing()
        await asyncio.sleep(self.first_token_after)
        for i in range(0, len(text), self.chunk):
            flusher.feed(text[i : i + self.chunk])
            await asyncio.sleep(self.step)
        await flusher.finish(text)
        self.stored.setdefault(msg.key, []).append(text)
        self.answered.append(msg)

    async def command(self, msg: IncomingMessage) -> str:
        self.commands.append(msg)
        await self.command_gate.wait()
        return self.command_reply

    async def history(self, key: ConversationKey) -> list[str]:
        return self.stored.get(key, [])


async def eventually(check: Callable[[], Any], within: float = 20.0) -> Any:
    """Wait until `check()` is truthy (and return it); fail after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(0.02)


async def settle(seconds: float = 0.3) -> None:
    """Give events that should be ignored the time to (not) do something."""
    await asyncio.sleep(seconds)


@contextlib.asynccontextmanager
async def running(
    ws: SlackWorkspace, core_options: dict[str, Any] | None = None, **slack: Any
) -> AsyncIterator[tuple[SlackAdapter, ScriptedCore]]:
    adapter = SlackAdapter(slack_settings(ws, **slack))
    core = ScriptedCore(adapter, **(core_options or {}))
    await adapter.start(core)
    try:
        if adapter._settings.mode == "socket":
            await ws.socket.wait_connected()
        yield adapter, core
    finally:
        await adapter.stop()
