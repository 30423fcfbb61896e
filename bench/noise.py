"""How much CPU *other* processes took while a measurement ran.

On a 2-core machine shared with other work, one busy neighbour halves llama.cpp's speed
(its threads wait for each other at every barrier), so a benchmark figure means little unless
we know the machine was ours. This compares the machine's busy time (/proc/stat) with the
CPU time of this process and its children over the same window.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def _machine_busy() -> float:
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(v) for v in fields[:8]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values) - idle) / TICK


def _process_seconds(pid: str) -> tuple[int, float]:
    """(parent pid, user+system seconds) of a live process."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    rest = stat[stat.rindex(")") + 2 :].split()
    return int(rest[1]), (int(rest[11]) + int(rest[12])) / TICK


def _own_seconds() -> float:
    """CPU of this process, its live descendants, and its children that have exited."""
    me = os.getpid()
    parents: dict[int, int] = {}
    seconds: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)], seconds[int(entry.name)] = _process_seconds(entry.name)
            except (OSError, ValueError, IndexError):
                continue
    total = 0.0
    for pid, used in seconds.items():
        node = pid
        while node > 1 and node != me:
            node = parents.get(node, 0)
        if node == me:
            total += used
    times = os.times()
    return total + times.children_user + times.children_system


class CpuWatch:
    """`with CpuWatch() as w: ...` then `w.others`: cores used by other processes meanwhile."""

    def __init__(self) -> None:
        self.others = 0.0
        self._start = (0.0, 0.0, 0.0)

    def __enter__(self) -> CpuWatch:
        self._start = (_machine_busy(), _own_seconds(), time.monotonic())
        return self

    def __exit__(self, *exc: object) -> None:
        busy, own, started = self._start
        wall = max(time.monotonic() - started, 1e-6)
        self.others = max(0.0, (_machine_busy() - busy) - (_own_seconds() - own)) / wall


async def wait_until_quiet(threshold: float = 0.15, limit: float = 90.0) -> float:
    """Wait (up to `limit` s) for a second in which others use < `threshold` of a core."""
    deadline = time.monotonic() + limit
    while True:
        with CpuWatch() as watch:
            await asyncio.sleep(1.0)
        if watch.others < threshold or time.monotonic() > deadline:
            return watch.others
