"""Shared pieces of the Slack tests: the fake workspace, settings for it, a scripted core,
waiting, and starting the whole bot against the fakes.

`ScriptedCore` stands in for the conversation service only where the adapter itself is
under test: it records what the adapter delivers and streams a scripted answer through the
core's real StreamFlusher. The end-to-end tests (test_slack_e2e.py, test_faults_slack.py)
use the real service and the real llama.cpp engine instead (`bot_starter`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from adapters.shared import log_error
from adapters.slack import SlackAdapter
from adapters.slack.config import SlackSettings
from adapters.slack.render import escape, to_mrkdwn
from bot.app import App
from bot.config import Settings
from bot.flusher import StreamFlusher
from bot.types import ConversationKey, IncomingMessage
from storage.base import Turn
from tests.fakes.slack_workspace import SIGNING_SECRET, SlackWorkspace
from tests.harness import Start, as_shown, pieces, running_app, test_settings

PROXY_VARIABLES = (
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
)


def drop_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unset the proxy variables, so that slack-sdk talks to the local fakes directly."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@contextlib.asynccontextmanager
async def workspace(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[SlackWorkspace]:
    """A fake workspace (Web API and Socket Mode servers), started, without proxies."""
    drop_proxies(monkeypatch)
    ws = SlackWorkspace()
    await ws.start()
    try:
        yield ws
    finally:
        await ws.close()


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
        self._handling = 0
        self._quiet = asyncio.Event()
        self._quiet.set()

    @property
    def busy(self) -> bool:
        return self._handling > 0

    async def wait_quiet(self) -> None:
        await self._quiet.wait()

    @contextlib.contextmanager
    def _busy(self) -> Iterator[None]:
        self._handling += 1
        self._quiet.clear()
        try:
            yield
        finally:
            self._handling -= 1
            if not self._handling:
                self._quiet.set()

    async def handle(self, msg: IncomingMessage) -> None:
        with self._busy():
            await self._handle(msg)

    async def _handle(self, msg: IncomingMessage) -> None:
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
        with self._busy():
            self.commands.append(msg)
            await self.command_gate.wait()
            return self.command_reply

    async def history(self, key: ConversationKey) -> list[Turn]:
        return [
            Turn("", "", text, "complete", 0, 0, datetime.now(UTC))
            for text in self.stored.get(key, [])
        ]

    def allows(self, msg: IncomingMessage) -> bool:
        return True  # everyone: access is the service's, tested with it

    def on_error(self, exc: BaseException, what: str) -> None:
        log_error(exc, what)


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


# -- the whole bot against the fakes --------------------------------------------------------


def slack_env(ws: SlackWorkspace) -> dict[str, str]:
    """The variables that turn the Slack adapter on (Socket Mode) and point it at the fakes."""
    return {
        "EDGEQA_SLACK__ENABLED": "true",
        "EDGEQA_SLACK_BOT_TOKEN": ws.api.bot_token,
        "EDGEQA_SLACK_APP_TOKEN": ws.api.app_token,
        "EDGEQA_SLACK__BASE_URL": ws.api.base_url,
    }


def bot_starter(tmp_path: Path, model: Path, ws: SlackWorkspace, **defaults: str) -> Start:
    """`async with start(EDGEQA_...="...") as app:` runs the whole bot against the fakes and
    waits for its Socket Mode connection; a call's variables override `defaults`, and
    `start(other_model)` runs on another model than `model`."""

    @contextlib.asynccontextmanager
    async def start(other_model: Path | None = None, **env: str) -> AsyncIterator[App]:
        values = {**slack_env(ws), **defaults, **env}
        settings = test_settings(tmp_path, other_model or model, **values)
        async with running_app(settings, [SlackAdapter(settings)]) as app:
            await ws.socket.wait_connected()
            yield app

    return start


def expected_messages(answer: str, limit: int, *, cut: bool = True) -> list[str]:
    """The answer as the flusher cuts it and the adapter renders each piece; `cut`: it ran
    to max_tokens (as the tiny random model's always do) and ends with the length mark."""
    text = as_shown(answer) if cut else answer
    shown = [piece if piece.strip() else "…" for piece in pieces(text, limit)]
    return [to_mrkdwn(piece) or escape(piece) for piece in shown]
