"""A concurrency limit whose waiting queue is bounded and tells each waiter its place.

Used by the remote engine, where the limit is how many streams we open to the server at
once; past `max_queue` waiters a newcomer gets EngineBusy instead of an endless wait.
"""

from __future__ import annotations

import asyncio

from llm.base import EngineBusy


class Ticket:
    def __init__(self) -> None:
        self.admitted = False
        self.position = 0  # 1 = next; 0 once admitted
        self._moved = asyncio.Event()

    async def moved(self) -> None:
        """Wait until the position changes (or the ticket is admitted)."""
        await self._moved.wait()
        self._moved.clear()


class WaitLine:
    def __init__(self, capacity: int, max_queue: int) -> None:
        self.capacity = capacity
        self.max_queue = max_queue
        self.running = 0
        self._waiting: list[Ticket] = []

    @property
    def queued(self) -> int:
        return len(self._waiting)

    def join(self) -> Ticket:
        ticket = Ticket()
        if self.running < self.capacity and not self._waiting:
            ticket.admitted = True
            self.running += 1
            return ticket
        if len(self._waiting) >= self.max_queue:
            raise EngineBusy(f"{len(self._waiting)} questions are already waiting")
        self._waiting.append(ticket)
        ticket.position = len(self._waiting)
        return ticket

    def leave(self, ticket: Ticket) -> None:
        if ticket.admitted:
            ticket.admitted = False
            self.running -= 1
        elif ticket in self._waiting:
            self._waiting.remove(ticket)
        else:
            return
        while self._waiting and self.running < self.capacity:
            nxt = self._waiting.pop(0)
            nxt.admitted, nxt.position = True, 0
            self.running += 1
            nxt._moved.set()
        for index, waiter in enumerate(self._waiting):
            if waiter.position != index + 1:
                waiter.position = index + 1
                waiter._moved.set()
