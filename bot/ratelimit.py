"""Per-user question rate limit: a sliding one-minute window.

A CPU engine answers a few questions a minute; one eager user should not fill the queue
for everyone else.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable


class RateLimiter:
    def __init__(
        self, per_minute: int, *, window: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.per_minute = per_minute
        self._window = window
        self._clock = clock
        self._seen: dict[tuple[str, str], deque[float]] = {}

    def check(self, platform: str, user_id: str) -> float:
        """Record a question; returns 0 if allowed, else seconds until the next one would be."""
        if self.per_minute <= 0:
            return 0.0
        now = self._clock()
        stamps = self._seen.setdefault((platform, user_id), deque())
        while stamps and now - stamps[0] >= self._window:
            stamps.popleft()
        if len(stamps) >= self.per_minute:
            return max(0.1, self._window - (now - stamps[0]))
        stamps.append(now)
        self._forget_idle(now)
        return 0.0

    def _forget_idle(self, now: float) -> None:
        """Keep memory bounded by the number of recently active users."""
        if len(self._seen) < 10_000:
            return
        for user, stamps in list(self._seen.items()):
            if not stamps or now - stamps[-1] >= self._window:
                del self._seen[user]
