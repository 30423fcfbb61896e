"""What the fake servers (and the tests' own small aiohttp servers) share: serving an app on
loopback, and hanging up on a client the way a lost connection looks to it."""

from __future__ import annotations

from typing import Any

from aiohttp import web


async def serve(app: web.Application, port: int = 0, **runner: Any) -> tuple[web.AppRunner, int]:
    """Serve `app` on 127.0.0.1:`port`; 0 picks a free port, a fake restarting after an
    outage passes its old one (the address is reusable at once). Returns the runner (to
    `cleanup()`) and the port. `runner`: options of web.AppRunner."""
    app_runner = web.AppRunner(app, **runner)
    await app_runner.setup()
    site = web.TCPSite(app_runner, "127.0.0.1", port, reuse_address=True)
    await site.start()
    return app_runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


def hang_up(request: web.Request) -> web.Response:
    """Close the connection without an answer (the client sees a dropped connection)."""
    assert request.transport is not None
    request.transport.close()
    return web.Response()
