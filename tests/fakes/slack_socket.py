"""A local Socket Mode server: the websocket end of apps.connections.open.

Like Slack's, it greets a new connection with a `hello`, pushes envelopes
(`{"envelope_id", "type", "payload", "accepts_response_payload", "retry_attempt"}`) and
expects each to be acknowledged with `{"envelope_id": ...}` (plus an optional `payload`).
It records every ack, and any ack for an envelope it never sent. Each URL (`url`, what
apps.connections.open hands out) carries a ticket that opens one connection only, as
Slack's do; `drop()` hangs up on the client, `close()` then `start()` restarts the server
on the same port.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass
from typing import Any

from aiohttp import WSMsgType, web

from tests.fakes.common import serve


@dataclass
class Ack:
    envelope_id: str
    payload: dict[str, Any] | None


class FakeSocketMode:
    def __init__(self) -> None:
        self.sent: dict[str, dict[str, Any]] = {}
        self.acks: dict[str, Ack] = {}
        self.bad_acks: list[dict[str, Any]] = []
        self.connections = 0
        self.refused = 0  # connection attempts with an unknown or used ticket
        self._tickets: set[str] = set()  # issued, not used yet
        self._ws: web.WebSocketResponse | None = None
        self._connected = asyncio.Event()
        self._up = asyncio.Event()  # listening
        self._acked: dict[str, asyncio.Event] = {}
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> None:
        """Listen on a free port, or again on the same port after `close()`."""
        app = web.Application()
        app.router.add_get("/link/", self._link)
        self._runner, self.port = await serve(app, self.port, shutdown_timeout=0.5)
        self._up.set()

    async def close(self) -> None:
        self._up.clear()
        await self.drop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def drop(self) -> None:
        """Close the current connection (Slack does so now and then, e.g. to move it)."""
        if self._ws is not None:
            await self._ws.close()

    @property
    def url(self) -> str:
        """A new URL, good for one connection."""
        ticket = str(uuid.uuid4())
        self._tickets.add(ticket)
        return f"ws://127.0.0.1:{self.port}/link/?ticket={ticket}&app_id=A0APP"

    async def next_url(self) -> str:
        """What apps.connections.open hands out: a new URL, once the server is up (while it
        restarts, Slack has no server to send clients to, and they wait)."""
        await asyncio.wait_for(self._up.wait(), 30)
        return self.url

    async def wait_connected(self, within: float = 10.0) -> None:
        await asyncio.wait_for(self._connected.wait(), within)

    async def _link(self, request: web.Request) -> web.StreamResponse:
        ticket = request.query.get("ticket", "")
        if ticket not in self._tickets:
            self.refused += 1
            return web.Response(status=401, text="invalid or used ticket")
        self._tickets.discard(ticket)
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self.connections += 1
        self._ws = ws
        await ws.send_json(
            {
                "type": "hello",
                "num_connections": 1,
                "debug_info": {"host": "fake", "approximate_connection_time": 3600},
                "connection_info": {"app_id": "A0APP"},
            }
        )
        self._connected.set()
        async for frame in ws:
            if frame.type != WSMsgType.TEXT:
                continue
            data = json.loads(frame.data)
            envelope_id = data.get("envelope_id", "")
            if envelope_id not in self.sent or envelope_id in self.acks:
                self.bad_acks.append(data)
                continue
            self.acks[envelope_id] = Ack(envelope_id, data.get("payload"))
            self._acked[envelope_id].set()
        if self._ws is ws:
            self._ws = None
            self._connected.clear()
        return ws

    async def push(
        self,
        kind: str,
        payload: dict[str, Any],
        *,
        accepts_response_payload: bool = False,
        retry_attempt: int = 0,
    ) -> str:
        """Send an envelope (events_api, slash_commands, interactive); returns its id."""
        await self.wait_connected()
        assert self._ws is not None
        envelope_id = str(uuid.uuid4())
        envelope = {
            "envelope_id": envelope_id,
            "type": kind,
            "payload": payload,
            "accepts_response_payload": accepts_response_payload,
            "retry_attempt": retry_attempt,
            "retry_reason": "timeout" if retry_attempt else "",
        }
        self.sent[envelope_id] = envelope
        self._acked[envelope_id] = asyncio.Event()
        await self._ws.send_json(envelope)
        return envelope_id

    async def wait_ack(self, envelope_id: str, within: float = 3.0) -> Ack:
        """The ack for `envelope_id`; TimeoutError if it did not come within `within`
        seconds (Slack's deadline is 3 s)."""
        await asyncio.wait_for(self._acked[envelope_id].wait(), within)
        return self.acks[envelope_id]

    def unacked(self) -> list[str]:
        return [envelope_id for envelope_id in self.sent if envelope_id not in self.acks]
