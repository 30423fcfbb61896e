"""One fake Slack workspace: the Web API fake, the Socket Mode fake, and what people do in it.

`say()` posts a user's message and delivers the events Slack would (a `message` event, plus
`app_mention` when it mentions the bot outside a DM), over Socket Mode or — for HTTP mode —
as signed POSTs. With `echo=True` the bot's own posts and edits come back as events too, as
they do in Slack, so tests see that the bot ignores itself.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from typing import Any
from urllib.parse import urlencode

import aiohttp
from slack_sdk.signature import SignatureVerifier

from tests.fakes.slack_api import FakeSlackApi, Message
from tests.fakes.slack_socket import FakeSocketMode

SIGNING_SECRET = "fake-signing-secret"


def channel_type(channel: str) -> str:
    return {"D": "im", "G": "group", "C": "channel"}.get(channel[:1], "channel")


def sign(body: str, timestamp: int, secret: str = SIGNING_SECRET) -> dict[str, str]:
    """Slack's request signature headers ("v0=" HMAC-SHA256 of "v0:{timestamp}:{body}"),
    made by slack-sdk's own SignatureVerifier."""
    signature = SignatureVerifier(secret).generate_signature(timestamp=str(timestamp), body=body)
    assert signature is not None
    return {"X-Slack-Request-Timestamp": str(timestamp), "X-Slack-Signature": signature}


class SlackWorkspace:
    def __init__(self, *, echo: bool = True, **api_options: Any) -> None:
        self.api = FakeSlackApi(**api_options)
        self.socket = FakeSocketMode()
        self.echo = echo
        self.http_url = ""  # set for HTTP mode: where the bot's events endpoint is
        self.commands_url = ""
        self._event_ids = itertools.count(1)
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        await self.api.start()
        await self.socket.start()
        self.api.socket_url = self.socket.next_url  # a fresh ticket for every open
        self.api.on_bot_message = self._echo

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await self.socket.close()
        await self.api.close()

    @property
    def team_id(self) -> str:
        return self.api.team_id

    @property
    def bot(self) -> str:
        return self.api.bot_user_id

    # -- events --------------------------------------------------------------------------

    def envelope(self, event: dict[str, Any]) -> dict[str, Any]:
        return {
            "token": "legacy-verification-token",
            "team_id": self.team_id,
            "api_app_id": "A0APP",
            "event": event,
            "type": "event_callback",
            "event_id": f"Ev{next(self._event_ids):08d}",
            "event_time": int(time.time()),
            "authorizations": [
                {
                    "enterprise_id": None,
                    "team_id": self.team_id,
                    "user_id": self.bot,
                    "is_bot": True,
                    "is_enterprise_install": False,
                }
            ],
            "is_ext_shared_channel": False,
        }

    async def deliver(self, event: dict[str, Any]) -> None:
        body = self.envelope(event)
        if self.http_url:
            async with aiohttp.ClientSession() as session:
                raw = json.dumps(body)
                headers = {"Content-Type": "application/json", **sign(raw, int(time.time()))}
                async with session.post(self.http_url, data=raw, headers=headers) as response:
                    assert response.status == 200, await response.text()
        else:
            envelope_id = await self.socket.push("events_api", body)
            await self.socket.wait_ack(envelope_id)

    def message_event(self, message: Message, **extra: Any) -> dict[str, Any]:
        event: dict[str, Any] = {
            "type": "message",
            "channel": message.channel,
            "user": message.user,
            "text": message.text,
            "ts": message.ts,
            "event_ts": message.ts,
            "team": self.team_id,
            "channel_type": channel_type(message.channel),
            "client_msg_id": str(uuid.uuid4()),
        }
        if message.thread_ts:
            event["thread_ts"] = message.thread_ts
        event.update(extra)
        return event

    async def say(
        self,
        channel: str,
        text: str,
        *,
        user: str = "U0ALICE",
        thread_ts: str = "",
        **extra: Any,
    ) -> Message:
        """A person posts `text`; Slack delivers the events the bot is subscribed to."""
        message = self.api.user_message(channel, text, user=user, thread_ts=thread_ts)
        event = self.message_event(message, **extra)
        if f"<@{self.bot}" in text and channel_type(channel) != "im":
            mention = {k: v for k, v in event.items() if k not in ("channel_type", "subtype")}
            mention["type"] = "app_mention"
            await self.deliver(mention)
        await self.deliver(event)
        return message

    def _echo(self, message: Message, subtype: str) -> None:
        if not self.echo or self.http_url or self.socket.connections == 0:
            return
        event = self.message_event(message, bot_id=message.bot_id, app_id="A0APP")
        event.pop("client_msg_id")
        if subtype == "message_changed":
            event = {
                "type": "message",
                "subtype": "message_changed",
                "hidden": True,
                "channel": message.channel,
                "channel_type": channel_type(message.channel),
                "ts": self.api.new_ts(),
                "event_ts": message.ts,
                "message": {k: v for k, v in event.items() if k != "channel_type"},
            }
        task = asyncio.get_running_loop().create_task(
            self.socket.push("events_api", self.envelope(event))
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- slash commands ------------------------------------------------------------------

    def command_payload(
        self, text: str, *, channel: str = "C0GENERAL", user: str = "U0ALICE"
    ) -> tuple[dict[str, str], str]:
        rid = uuid.uuid4().hex
        payload = {
            "token": "legacy-verification-token",
            "team_id": self.team_id,
            "team_domain": "fake",
            "channel_id": channel,
            "channel_name": "directmessage" if channel.startswith("D") else "general",
            "user_id": user,
            "user_name": user.lower(),
            "command": "/edgeqa",
            "text": text,
            "api_app_id": "A0APP",
            "is_enterprise_install": "false",
            "response_url": self.api.response_url(rid),
            "trigger_id": uuid.uuid4().hex,
        }
        return payload, rid

    async def slash(self, text: str, **kw: Any) -> tuple[str, str]:
        """Run /edgeqa over Socket Mode; returns (envelope id, response id)."""
        payload, rid = self.command_payload(text, **kw)
        envelope_id = await self.socket.push(
            "slash_commands", payload, accepts_response_payload=True
        )
        return envelope_id, rid

    async def http_slash(
        self, session: aiohttp.ClientSession, text: str, **kw: Any
    ) -> tuple[int, str]:
        payload, rid = self.command_payload(text, **kw)
        raw = urlencode(payload)
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            **sign(raw, int(time.time())),
        }
        async with session.post(self.commands_url, data=raw, headers=headers) as response:
            return response.status, rid

    async def ephemeral(self, rid: str, within: float = 20.0) -> dict[str, Any]:
        """The reply sent to a command's response_url."""
        deadline = time.monotonic() + within
        while not self.api.responses.get(rid):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no response to {rid}")
            await asyncio.sleep(0.02)
        return self.api.responses[rid][-1]
