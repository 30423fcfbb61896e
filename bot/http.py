"""The bot's one HTTP server: health, metrics, and whatever adapters mount on it
(the browser chat, Telegram's webhook, Slack's Events API)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from adapters.base import StartError
from bot.metrics import Metrics

log = logging.getLogger(__name__)

HealthCheck = Callable[[], Awaitable[dict[str, bool]]]


def build_app(metrics: Metrics, health: HealthCheck) -> web.Application:
    app = web.Application(client_max_size=2 * 1024 * 1024)

    async def healthz(_: web.Request) -> web.Response:
        try:
            checks = await asyncio.wait_for(health(), timeout=5)
        except Exception as exc:  # a health check must answer, whatever broke
            log.warning("health check failed: %s", exc)
            checks = {"ok": False}
        ok = all(checks.values())
        return web.json_response({"ok": ok, **checks}, status=200 if ok else 503)

    async def metrics_page(_: web.Request) -> web.Response:
        return web.Response(text=metrics.render(), content_type="text/plain", charset="utf-8")

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_page)
    return app


class HttpServer:
    def __init__(self, app: web.Application, host: str, port: int) -> None:
        self.app = app
        self._host = host
        self._port = port
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        self.port = port

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise StartError(
                f"cannot listen on {self._host}:{self._port}: {exc.strerror or exc} "
                "(set web.host / web.port, e.g. EDGEQA_WEB__PORT=8081)"
            ) from None
        for server in self._runner.addresses:
            self.port = server[1]
            break
        log.info("HTTP server on http://%s:%d", self._host, self.port)

    async def stop(self) -> None:
        await self._runner.cleanup()
