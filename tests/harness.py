"""Start the whole bot in a test: real App wiring, real storage, real engine, given adapters.

    settings = test_settings(tmp_path, tiny_model_path, EDGEQA_TELEGRAM__ENABLED="true", ...)
    async with running_app(settings, [TelegramAdapter(settings)]) as app:
        ...  # talk to the fake platform server; app.repo / app.metrics / app.port to check

By default the engine is the real llama.cpp engine (llm.factory) on the model given; pass
`engine=` only in tests of the core's own logic.

The end-to-end tests of every platform check a chat against what the bot stored:
`await stored(app, key)` waits for the answers (they are stored once delivered), and
`pieces(answer, limit)` cuts an answer into messages exactly where the flusher does, and
`as_shown(answer)` is a tiny-model answer as the chat shows it (with the length mark).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Protocol

from adapters.base import Adapter
from bot.app import App
from bot.config import Settings, load_settings
from bot.flusher import split_point
from bot.service import LENGTH_MARK
from bot.types import ConversationKey
from llm.base import Engine

SHOWN_LENGTH_MARK = "\n\n" + LENGTH_MARK  # after a blank line, in English

TEST_DEFAULTS = {
    "EDGEQA_WEB__PORT": "0",
    "EDGEQA_ENGINE__THREADS": "1",
    "EDGEQA_ENGINE__SLOTS": "4",
    "EDGEQA_ENGINE__CONTEXT_SIZE": "1024",
    "EDGEQA_ENGINE__MAX_TOKENS": "48",
    "EDGEQA_ENGINE__SEED": "7",
    "EDGEQA_BOT__CONTEXT_TOKENS": "768",
    "EDGEQA_BOT__RATE_LIMIT_PER_MINUTE": "0",
    "EDGEQA_WEB__EDIT_INTERVAL": "0.02",
    "EDGEQA_TELEGRAM__EDIT_INTERVAL": "0.05",
    "EDGEQA_TELEGRAM__GROUP_EDIT_INTERVAL": "0.1",
    "EDGEQA_SLACK__EDIT_INTERVAL": "0.05",
}


def test_settings(tmp_path: Path, model: Path | str | None = None, **env: str) -> Settings:
    """Settings for a test: a fresh SQLite file in tmp_path, an ephemeral port, fast cadences.

    `env` entries override (use the real variable names, e.g. EDGEQA_TELEGRAM__ENABLED)."""
    values = {
        **TEST_DEFAULTS,
        "EDGEQA_HISTORY__DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'edgeqa.db'}",
        **({"EDGEQA_MODEL": str(model)} if model is not None else {}),
        **env,
    }
    return load_settings(_empty_config(tmp_path), env=values)


def _empty_config(tmp_path: Path) -> Path:
    """An explicit empty file, so a developer's ./edgeqa.toml never leaks into a test."""
    path = tmp_path / "empty-edgeqa.toml"
    path.write_text("")
    return path


test_settings.__test__ = False  # type: ignore[attr-defined]  # not a test, despite the name

# What a test module's `bot` fixture gives: `async with bot(EDGEQA_...="...") as app:`.
Start = Callable[..., AbstractAsyncContextManager[App]]


def free_port() -> int:
    """A loopback port nothing listens on (just now): for a server a test starts on it, or
    for an address that must refuse connections."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def running_app(
    settings: Settings, adapters: list[Adapter], *, engine: Engine | None = None
) -> AsyncIterator[App]:
    app = App(settings, engine=engine, adapters=adapters)
    await app.start()
    try:
        yield app
    finally:
        await app.stop(grace=5.0)


async def eventually(
    check: Callable[[], object], within: float = 10.0, interval: float = 0.02
) -> None:
    """Wait until `check()` is truthy (or raises no AssertionError); fail after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        try:
            if check():
                return
            failure: AssertionError | None = None
        except AssertionError as exc:
            failure = exc
        if time.monotonic() > deadline:
            if failure is not None:
                raise failure
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(interval)


class Quiet(Protocol):
    """A core that says when it handles no message (ConversationService, a scripted core)."""

    @property
    def busy(self) -> bool: ...

    async def wait_quiet(self) -> None: ...


async def quiet(core: App | Quiet, turns: int = 3) -> None:
    """Wait until nothing more will happen on its own: the core handles no message (nothing
    answered, queued or run as a command), over `turns` event-loop turns in a row, so a
    message an adapter handed over just now has started. For "nothing more arrived" checks
    after the input was delivered, instead of a fixed sleep that a slow machine outlasts."""
    target: Quiet = core.service if isinstance(core, App) else core
    calm = 0
    while calm < turns:
        if target.busy:
            calm = 0
            await target.wait_quiet()
        else:
            calm += 1
        await asyncio.sleep(0)


async def answers(app: App, key: ConversationKey) -> list[str]:
    return [turn.answer for turn in await app.repo.load_history(key)]


async def stored(app: App, key: ConversationKey, count: int = 1) -> list[str]:
    """The answers stored for `key`, once there are `count` of them (stored after delivery)."""
    for _ in range(1500):
        found = await answers(app, key)
        if len(found) >= count:
            return found
        await asyncio.sleep(0.02)
    raise AssertionError(f"{key} has {len(await answers(app, key))} answers, not {count}")


def as_shown(answer: str) -> str:
    """What the chat shows for a stored answer of the tiny random model: it always runs to
    max_tokens, so the answer ends with the length mark (which is not stored)."""
    return answer + SHOWN_LENGTH_MARK


def stored_form(shown: str) -> str:
    """The answer stored for what the chat shows of a tiny-model answer (`as_shown`)."""
    assert shown.endswith(SHOWN_LENGTH_MARK), shown[-80:]
    return shown.removesuffix(SHOWN_LENGTH_MARK)


def pieces(answer: str, limit: int) -> list[str]:
    """The answer cut into messages exactly where the flusher cuts it."""
    out = []
    while len(answer) > limit:
        cut = split_point(answer, limit)
        out.append(answer[:cut])
        answer = answer[cut:]
    return [*out, answer]
