"""One workspace's share of a rate-limited Slack method (chat.update: Tier 3, ~50 a minute).

Slack counts chat.update per workspace, across every conversation, so one answer streaming
alone may edit often but ten streaming at once must share the same ~50 edits. Two things
keep us under the limit: the cadence each message is given (`interval`, longer as more
messages stream at once), and a sliding-window count of the calls actually made (`acquire`
waits when a burst — final edits, retries — would still exceed it).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

STALE_AFTER = 300.0  # a stream nobody finished (a crash) stops counting after this long


class EditBudget:
    def __init__(
        self,
        per_minute: int,
        *,
        window: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_minute = per_minute
        self.window = window
        self._clock = clock
        self._calls: deque[float] = deque()
        self._streams: dict[str, float] = {}  # message id -> last activity

    # -- streams: who shares the budget right now -------------------------------------

    def open(self, message_id: str) -> None:
        """A message started streaming (it will be edited until finished)."""
        self._streams[message_id] = self._clock()

    def touch(self, message_id: str) -> None:
        if message_id in self._streams:
            self._streams[message_id] = self._clock()

    def close(self, message_id: str) -> None:
        self._streams.pop(message_id, None)

    @property
    def streams(self) -> int:
        now = self._clock()
        for message_id, seen in list(self._streams.items()):
            if now - seen > STALE_AFTER:
                del self._streams[message_id]
        return len(self._streams)

    def interval(self, base: float) -> float:
        """Seconds between two edits of one message so all streams together fit the budget."""
        return max(base, self.window * max(1, self.streams) / self.per_minute)

    # -- calls: what was actually spent ------------------------------------------------

    def used(self) -> int:
        self._expire(self._clock())
        return len(self._calls)

    def _expire(self, now: float) -> None:
        while self._calls and now - self._calls[0] >= self.window:
            self._calls.popleft()

    async def acquire(self) -> None:
        """Wait until one more call fits in the window, then count it."""
        while True:
            now = self._clock()
            self._expire(now)
            if len(self._calls) < self.per_minute:
                self._calls.append(now)
                return
            await asyncio.sleep(max(0.01, self._calls[0] + self.window - now))
