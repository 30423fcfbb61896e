"""HTTP mode: the Events API and the slash command on the bot's own aiohttp server, with
Slack's request signatures checked (made here with slack-sdk's SignatureVerifier)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from adapters.slack import SlackAdapter
from adapters.slack.render import to_mrkdwn
from tests.fakes.common import serve
from tests.fakes.slack_workspace import SlackWorkspace, sign
from tests.harness import quiet
from tests.slack_support import (
    ScriptedCore,
    eventually,
    slack_settings,
    workspace,
)

CHANNEL = "C0GENERAL"


class Bot:
    def __init__(self, ws: SlackWorkspace, adapter: SlackAdapter, core: ScriptedCore) -> None:
        self.ws, self.adapter, self.core = ws, adapter, core
        self.session = aiohttp.ClientSession()

    async def post(
        self, body: str, *, content_type: str = "application/json", **headers: str
    ) -> tuple[int, str]:
        async with self.session.post(
            self.ws.http_url, data=body, headers={"Content-Type": content_type, **headers}
        ) as response:
            return response.status, await response.text()


@pytest.fixture
async def bot(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Bot]:
    async with workspace(monkeypatch) as ws:
        settings = slack_settings(ws, mode="http")
        adapter = SlackAdapter(settings)
        core = ScriptedCore(adapter)
        app = web.Application()
        adapter.mount(app)
        runner, port = await serve(app)
        ws.http_url = f"http://127.0.0.1:{port}{settings.slack.events_path}"
        ws.commands_url = f"http://127.0.0.1:{port}{settings.slack.commands_path}"
        await adapter.start(core)
        result = Bot(ws, adapter, core)
        yield result
        await result.session.close()
        await adapter.stop()
        await runner.cleanup()


def mention_body(ws: SlackWorkspace, text: str = "what is up?") -> str:
    message = ws.api.user_message(CHANNEL, f"<@{ws.bot}> {text}")
    event = ws.message_event(message)
    event["type"] = "app_mention"
    del event["channel_type"]
    return json.dumps(ws.envelope(event))


async def test_a_signed_mention_is_answered(bot: Bot) -> None:
    asked = await bot.ws.say(CHANNEL, f"<@{bot.ws.bot}> hello over http")
    await eventually(lambda: bot.core.answered)
    assert bot.core.handled[0].text == "hello over http"
    [reply] = bot.ws.api.bot_messages(CHANNEL, asked.ts)
    assert reply.text == to_mrkdwn(bot.core.stored[bot.core.handled[0].key][0])


async def test_bad_signatures_and_stale_timestamps_get_401(bot: Bot) -> None:
    body = mention_body(bot.ws)
    now = int(time.time())
    good = sign(body, now)
    forged = sign(body, now, secret="someone-elses-secret")
    tampered = sign(body.replace("what is up", "rm -rf /"), now)
    stale = sign(body, now - 6 * 60)  # Slack's limit is 5 minutes
    for headers in (forged, tampered, stale, {}):
        status, _ = await bot.post(body, **headers)
        assert status == 401
    await quiet(bot.core)
    assert bot.core.handled == []
    status, _ = await bot.post(body, **good)
    assert status == 200
    await eventually(lambda: bot.core.handled)


async def test_url_verification(bot: Bot) -> None:
    body = json.dumps({"token": "x", "challenge": "c-123", "type": "url_verification"})
    status, text = await bot.post(body, **sign(body, int(time.time())))
    assert status == 200 and "c-123" in text


async def test_retried_events_are_answered_once(bot: Bot) -> None:
    body = mention_body(bot.ws)
    for attempt in range(3):
        headers = sign(body, int(time.time()))
        if attempt:
            headers |= {"X-Slack-Retry-Num": str(attempt), "X-Slack-Retry-Reason": "timeout"}
        status, _ = await bot.post(body, **headers)
        assert status == 200
    await eventually(lambda: bot.core.answered)
    await quiet(bot.core)
    assert len(bot.core.handled) == 1


async def test_slash_command_is_acked_before_the_command_finishes(bot: Bot) -> None:
    bot.core.command_gate.clear()
    bot.core.command_reply = "Done — I've forgotten this thread."
    status, rid = await bot.ws.http_slash(bot.session, "reset", channel="D0ALICE")
    assert status == 200  # returned while the command is still blocked
    assert not bot.ws.api.responses.get(rid)
    bot.core.command_gate.set()
    reply = await bot.ws.ephemeral(rid)
    assert reply == {"text": "Done — I've forgotten this thread.", "response_type": "ephemeral"}
    assert [m.text for m in bot.core.commands] == ["/reset"]


async def test_unsigned_slash_command_changes_nothing(bot: Bot) -> None:
    payload, _ = bot.ws.command_payload("reset-all", user="U0ADMIN")
    from urllib.parse import urlencode

    raw = urlencode(payload)
    async with bot.session.post(
        bot.ws.commands_url,
        data=raw,
        headers={"Content-Type": "application/x-www-form-urlencoded", **sign(raw, 0)},
    ) as response:
        assert response.status == 401
    await quiet(bot.core)
    assert bot.core.commands == []
