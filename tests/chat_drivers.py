"""One way to play a chat user on every platform, for the corpus and security tests.

A driver starts a platform's fake, gives the settings that point the bot at it, and then
talks as a person in a conversation of its own per name: `ask(conv, text)` sends a message
the way that platform delivers it (the web chat's HTTP API, a Telegram private chat, a Slack
DM or an @mention in a channel), `replies(conv)` is what the bot has shown there so far, and
`final_ok(conv, text)` tells whether the chat shows `text` (the core's final text) rendered
as the platform renders it. The bot itself is the real App on the real engine:
`running_bot(driver, tmp_path, model)` runs it against the driver's platform.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from adapters.base import Adapter
from adapters.slack import SlackAdapter
from adapters.slack.render import escape, to_mrkdwn
from adapters.telegram import TelegramAdapter
from adapters.telegram.render import render, visible_text
from adapters.web import WebChatAdapter
from bot.app import App
from bot.config import Settings
from bot.types import ConversationKey
from storage.base import Turn
from tests.fakes.slack_workspace import SlackWorkspace
from tests.fakes.telegram_api import FakeTelegram
from tests.harness import as_shown, running_app, test_settings
from tests.slack_support import slack_env
from tests.telegram_support import telegram_env

ADMIN_SLOTS = 64  # admin identities handed out per driver (ids are fixed before the start)


@dataclass(frozen=True)
class Conv:
    """A conversation of its own, held by an ordinary user or an admin. `who` picks the
    user's id where the platform lets the client choose it (the web chat's browser id)."""

    name: str
    admin: bool = False
    who: str = ""


class Driver:
    platform = ""

    def __init__(self) -> None:
        self._numbers: dict[Conv, int] = {}

    def number(self, conv: Conv) -> int:
        """A small number per conversation, separately for admins and ordinary users."""
        if conv not in self._numbers:
            self._numbers[conv] = sum(1 for c in self._numbers if c.admin == conv.admin)
        return self._numbers[conv]

    async def open(self) -> None:
        """Start the platform's fake (before the settings are made)."""

    async def close(self) -> None:
        pass

    def env(self) -> dict[str, str]:
        raise NotImplementedError

    def adapters(self, settings: Settings) -> list[Adapter]:
        raise NotImplementedError

    async def started(self, app: App) -> None:
        """The bot is running: connect whatever the test needs to it."""

    async def ask(self, conv: Conv, text: str) -> None:
        raise NotImplementedError

    def key(self, conv: Conv) -> ConversationKey:
        raise NotImplementedError

    def user_ref(self, conv: Conv) -> str:
        """How a person names the user of `conv` in a command (/forget ...)."""
        raise NotImplementedError

    def messages(self, conv: Conv) -> list[Any]:
        """The bot's messages in the conversation, in the platform's own form."""
        raise NotImplementedError

    def plain(self, message: Any) -> str:
        """A message as the text a person reads."""
        raise NotImplementedError

    def shows(self, message: Any, text: str) -> bool:
        """Is `message` the core's final `text`, rendered as this platform renders it?"""
        raise NotImplementedError

    def replies(self, conv: Conv) -> list[str]:
        return [self.plain(message) for message in self.messages(conv)]

    def final_ok(self, conv: Conv, text: str) -> bool:
        """Does the conversation show exactly one message: `text`, final and rendered?"""
        messages = self.messages(conv)
        return len(messages) == 1 and self.shows(messages[0], text)

    def last_ok(self, conv: Conv, text: str) -> bool:
        messages = self.messages(conv)
        return bool(messages) and self.shows(messages[-1], text)

    def status(self, conv: Conv) -> int | None:
        """The HTTP status the platform's front door gave the last message (web only)."""
        return None


class WebDriver(Driver):
    """The browser chat's HTTP API: POST /api/ask, one event stream per browser."""

    platform = "web"
    ADMIN = "corpus-admin"

    def __init__(self, token: str = "") -> None:
        super().__init__()
        self.token = token
        self.session: aiohttp.ClientSession | None = None
        self.base = ""
        self._streams: dict[str, asyncio.Task[None]] = {}
        self._ready: dict[str, asyncio.Event] = {}
        # (browser, thread) -> reply id -> (text, final)
        self._replies: dict[tuple[str, str], dict[str, tuple[str, bool]]] = defaultdict(dict)
        self._status: dict[Conv, int] = {}

    def env(self) -> dict[str, str]:
        env = {"EDGEQA_WEB__ADMINS": self.ADMIN}
        if self.token:
            env["EDGEQA_WEB_TOKEN"] = self.token
        return env

    def adapters(self, settings: Settings) -> list[Adapter]:
        return [WebChatAdapter(settings)]

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    async def started(self, app: App) -> None:
        self.base = f"http://127.0.0.1:{app.port}"
        self.session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None), headers=self.headers
        )

    async def close(self) -> None:
        for task in self._streams.values():
            task.cancel()
        await asyncio.gather(*self._streams.values(), return_exceptions=True)
        if self.session is not None:
            await self.session.close()

    def browser(self, conv: Conv) -> str:
        return conv.who or (self.ADMIN if conv.admin else "corpus-user")

    def thread(self, conv: Conv) -> str:
        return f"thread-{self.number(conv):04d}"

    def key(self, conv: Conv) -> ConversationKey:
        return ConversationKey("web", "", self.browser(conv), self.thread(conv))

    def user_ref(self, conv: Conv) -> str:
        return self.browser(conv)

    async def _subscribe(self, browser: str) -> None:
        if browser in self._streams:
            return
        ready = self._ready[browser] = asyncio.Event()
        self._streams[browser] = asyncio.create_task(self._read(browser, ready))
        await asyncio.wait_for(ready.wait(), 10)

    async def _read(self, browser: str, ready: asyncio.Event) -> None:
        assert self.session is not None
        url = f"{self.base}/api/events"
        with contextlib.suppress(aiohttp.ClientError):
            async with self.session.get(url, params={"browser": browser}) as response:
                async for line in response.content:
                    if not line.startswith(b"data: "):
                        continue
                    event: dict[str, Any] = json.loads(line[6:])
                    ready.set()
                    if event.get("type") == "reply":
                        replies = self._replies[(browser, event["thread"])]
                        replies[event["id"]] = (event["text"], event["final"])

    async def ask(self, conv: Conv, text: str) -> None:
        assert self.session is not None
        await self._subscribe(self.browser(conv))
        body = {"browser": self.browser(conv), "thread": self.thread(conv), "text": text}
        async with self.session.post(f"{self.base}/api/ask", json=body) as response:
            self._status[conv] = response.status
            if response.status != 202:
                assert "error" in await response.json()

    def status(self, conv: Conv) -> int | None:
        return self._status.get(conv)

    def messages(self, conv: Conv) -> list[Any]:
        return list(self._replies[(self.browser(conv), self.thread(conv))].values())

    def plain(self, message: Any) -> str:
        return str(message[0])

    def shows(self, message: Any, text: str) -> bool:
        return bool(message == (text, True))


class TelegramDriver(Driver):
    """Private chats with the bot through the fake Bot API (long polling)."""

    platform = "telegram"

    def __init__(self, token: str = "123456:TEST-TOKEN") -> None:
        super().__init__()
        self.fake = FakeTelegram(token=token)

    async def open(self) -> None:
        await self.fake.start()

    async def close(self) -> None:
        await self.fake.close()

    def env(self) -> dict[str, str]:
        admins = ",".join(str(self._user_id(n, admin=True)) for n in range(ADMIN_SLOTS))
        return {
            **telegram_env(self.fake),
            "EDGEQA_TELEGRAM__ADMINS": admins,
            "EDGEQA_TELEGRAM__EDIT_INTERVAL": "0.01",
        }

    def adapters(self, settings: Settings) -> list[Adapter]:
        return [TelegramAdapter(settings)]

    @staticmethod
    def _user_id(number: int, *, admin: bool) -> int:
        return (5000 if admin else 1000) + number

    def user_id(self, conv: Conv) -> int:
        return self._user_id(self.number(conv), admin=conv.admin)

    def key(self, conv: Conv) -> ConversationKey:
        return ConversationKey("telegram", "", str(self.user_id(conv)), "")

    def user_ref(self, conv: Conv) -> str:
        return f"@{self.fake.users[self.user_id(conv)]['username']}"

    async def ask(self, conv: Conv, text: str) -> None:
        uid = self.user_id(conv)
        user = self.fake.users.get(uid) or self.fake.user(uid, f"User {conv.name}", f"u{uid}")
        self.fake.user_says(self.fake.private_chat(user), user, text)

    def messages(self, conv: Conv) -> list[Any]:
        return self.fake.bot_messages(self.user_id(conv))

    def plain(self, message: Any) -> str:
        return str(message.text)

    def shows(self, message: Any, text: str) -> bool:
        if message.html is not None:  # rendered; else Telegram refused the HTML: plain text
            return bool(message.html == render(text) and message.text == visible_text(message.html))
        return bool(message.text == text)


class SlackDriver(Driver):
    """Slack over Socket Mode: each conversation a DM of its own, or (`mention=True`) a
    thread started by an @mention in a channel."""

    platform = "slack"
    CHANNEL = "C0CORPUS"

    def __init__(self, *, mention: bool = False, **api: Any) -> None:
        super().__init__()
        self.mention = mention
        self.ws = SlackWorkspace(**api)
        self._threads: dict[Conv, str] = {}

    async def open(self) -> None:
        await self.ws.start()

    async def close(self) -> None:
        await self.ws.close()

    def env(self) -> dict[str, str]:
        admins = ",".join(self._user(n, admin=True) for n in range(ADMIN_SLOTS))
        return {
            **slack_env(self.ws),
            "EDGEQA_SLACK__ADMINS": admins,
            "EDGEQA_SLACK__WORKSPACE_EDITS_PER_MINUTE": "60000",
        }

    def adapters(self, settings: Settings) -> list[Adapter]:
        return [SlackAdapter(settings)]

    async def started(self, app: App) -> None:
        slack = app.settings.slack
        if slack.mode == "socket":
            await self.ws.socket.wait_connected()
        else:  # events and slash commands come as signed POSTs to the bot's HTTP server
            self.ws.http_url = f"http://127.0.0.1:{app.port}{slack.events_path}"
            self.ws.commands_url = f"http://127.0.0.1:{app.port}{slack.commands_path}"

    @staticmethod
    def _user(number: int, *, admin: bool) -> str:
        return f"U0{'A' if admin else 'C'}{number:03d}"

    def user(self, conv: Conv) -> str:
        return self._user(self.number(conv), admin=conv.admin)

    def channel(self, conv: Conv) -> str:
        return self.CHANNEL if self.mention else "D" + self.user(conv)[1:]

    def key(self, conv: Conv) -> ConversationKey:
        thread = self._threads.get(conv, "") if self.mention else ""
        return ConversationKey("slack", self.ws.team_id, self.channel(conv), thread)

    def user_ref(self, conv: Conv) -> str:
        return f"<@{self.user(conv)}>"

    async def ask(self, conv: Conv, text: str) -> None:
        if not self.mention:
            await self.ws.say(self.channel(conv), text, user=self.user(conv))
            return
        thread = self._threads.get(conv, "")
        said = await self.ws.say(
            self.CHANNEL, f"<@{self.ws.bot}> {text}", user=self.user(conv), thread_ts=thread
        )
        self._threads.setdefault(conv, said.ts)

    def messages(self, conv: Conv) -> list[Any]:
        if self.mention:
            thread = self._threads.get(conv)
            return self.ws.api.bot_messages(self.CHANNEL, thread) if thread else []
        return self.ws.api.bot_messages(self.channel(conv))

    def plain(self, message: Any) -> str:
        return str(message.text)

    def shows(self, message: Any, text: str) -> bool:
        return bool(message.text == (to_mrkdwn(text) or escape(text)))


@contextlib.asynccontextmanager
async def running_bot(
    driver: Driver, tmp_path: Path, model: Path, **env: str
) -> AsyncIterator[App]:
    """The whole bot against the driver's platform (its fake started first, closed after);
    `env` adds settings or overrides the driver's."""
    await driver.open()
    try:
        settings = test_settings(tmp_path, model, **{**driver.env(), **env})
        async with running_app(settings, driver.adapters(settings)) as app:
            await driver.started(app)
            yield app
    finally:
        await driver.close()


async def turns(app: App, driver: Driver, conv: Conv) -> list[Turn]:
    return list(await app.repo.load_history(driver.key(conv)))


async def until(check: Callable[[], Awaitable[object]], within: float = 30.0) -> bool:
    """Poll the async `check` until it is truthy; False after `within` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await check():
            return True
        await asyncio.sleep(0.05)
    return False


async def answered(
    app: App, driver: Driver, conv: Conv, count: int, *, cut: bool = True
) -> list[Turn]:
    """Wait until `count` turns are stored and the last one is shown (`cut`: it ran to
    max_tokens, as the tiny random model's answers do, and shows the length mark); return
    the turns."""
    found: list[Turn] = []

    async def done() -> bool:
        found[:] = await turns(app, driver, conv)
        last = found[-1].answer if found else ""
        return len(found) >= count and driver.last_ok(conv, as_shown(last) if cut else last)

    assert await until(done), f"{conv}: {len(found)} turns, chat shows {driver.replies(conv)}"
    return found


DRIVERS: dict[str, Callable[..., Driver]] = {
    "web": WebDriver,
    "telegram": TelegramDriver,
    "slack-dm": SlackDriver,
    "slack-mention": lambda **kw: SlackDriver(mention=True, **kw),
}
