"""What every adapter needs the same way: bounded memory and background tasks.

Adapters remember a little about the chats they serve (messages already taken, threads the
bot answers in, drafts that became messages) and answer in tasks of their own so a
platform's listener returns at once. Both are kept here, once: memory is bounded so a long
run cannot grow without end, and every task is drained by the adapter's stop() and reports
an error to the core's one hook (`bot.service.ConversationService.on_error`) instead of each
adapter logging its own way.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

K = TypeVar("K")
V = TypeVar("V")

ErrorHook = Callable[[BaseException, str], None]


class BoundedMap(Generic[K, V]):
    """A dict that forgets its least recently used entries past `size`."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._data: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self._data.get(key)
        if value is not None:
            self._data.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self._size:
            self._data.popitem(last=False)

    def forget_oldest_while(self, stale: Callable[[V], bool]) -> None:
        """Drop entries from the least recently used end as long as `stale(value)` holds."""
        while self._data and stale(next(iter(self._data.values()))):
            self._data.popitem(last=False)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)


def log_error(exc: BaseException, what: str) -> None:
    """The hook until the core gives its own: one line with the traceback."""
    log.error("%s failed", what, exc_info=exc)


class Tasks:
    """An adapter's fire-and-forget tasks: errors go to one hook, `drain()` ends them all."""

    def __init__(self, on_error: ErrorHook = log_error) -> None:
        self.on_error = on_error
        self._running: set[asyncio.Task[None]] = set()

    def spawn(self, work: Awaitable[object], what: str) -> asyncio.Task[None]:
        """Run `work` in its own task; `what` names it in the error report."""

        async def run() -> None:
            try:
                await work
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.on_error(exc, what)

        task = asyncio.create_task(run(), name=what)
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        return task

    async def drain(self) -> None:
        """Cancel the tasks still running and wait until they have ended."""
        tasks = list(self._running)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def __len__(self) -> int:
        return len(self._running)
