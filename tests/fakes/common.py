"""What the fake servers (and the tests' own small aiohttp servers) share: serving an app on
loopback, hanging up on a client the way a lost connection looks to it, and scripted faults
(which call fails, how often, after letting how many through)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, TypeVar

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


@dataclass
class ScriptedFault:
    """The next `times` calls of `method` that `when` (and `applies`) accept fail, after
    `skip` of them went through; `hits` counts the failed calls, `hit` keeps their params.
    Each fake subclasses it with how its platform fails."""

    method: str
    _: KW_ONLY
    times: int = 1
    skip: int = 0  # let this many matching calls through first
    when: Callable[[dict[str, Any]], bool] | None = None  # only calls with these params
    hits: int = 0
    hit: list[dict[str, Any]] = field(default_factory=list)  # the params of each hit call

    def applies(self, params: dict[str, Any]) -> bool:
        """The platform's own conditions on the call, checked before `when`."""
        return True


F = TypeVar("F", bound=ScriptedFault)


def take_fault(faults: Iterable[F], method: str, params: dict[str, Any]) -> F | None:
    """The first fault due for this call, counted as hit; None: the call goes through."""
    for fault in faults:
        if fault.method != method or fault.times <= 0:
            continue
        if not fault.applies(params) or (fault.when is not None and not fault.when(params)):
            continue
        if fault.skip > 0:
            fault.skip -= 1
            continue
        fault.times -= 1
        fault.hits += 1
        fault.hit.append(params)
        return fault
    return None


def end(faults: Iterable[ScriptedFault]) -> None:
    """The platform is back: these faults hit no more calls."""
    for fault in faults:
        fault.times = 0
