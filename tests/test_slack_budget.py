"""The per-workspace edit budget: cadence shared by concurrent streams, and a hard cap on the
calls made in any window. A hand-driven clock makes the waiting deterministic."""

from __future__ import annotations

import asyncio

import pytest

from adapters.slack.budget import STALE_AFTER, EditBudget


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_cadence_slows_as_more_answers_stream() -> None:
    budget = EditBudget(50, clock=Clock())
    assert budget.interval(1.5) == 1.5  # alone: the configured cadence (60/50 = 1.2 < 1.5)
    for i in range(4):
        budget.open(f"m{i}")
    assert budget.interval(1.5) == pytest.approx(60 * 4 / 50)
    budget.close("m0")
    budget.close("m1")
    assert budget.interval(1.5) == pytest.approx(60 * 2 / 50)
    # Whatever the number of streams, together they stay within the budget.
    for n in range(1, 30):
        shared = EditBudget(50, clock=Clock())
        for i in range(n):
            shared.open(str(i))
        assert n * 60 / shared.interval(0.1) <= 50 + 1e-9


def test_streams_nobody_finished_stop_counting() -> None:
    clock = Clock()
    budget = EditBudget(50, clock=clock)
    budget.open("crashed")
    budget.open("alive")
    clock.now += STALE_AFTER - 1
    budget.touch("alive")
    clock.now += 2
    assert budget.streams == 1


async def test_calls_beyond_the_window_wait_for_it_to_move() -> None:
    clock = Clock()
    budget = EditBudget(3, window=0.2, clock=clock)
    for _ in range(3):
        await budget.acquire()
    assert budget.used() == 3
    fourth = asyncio.create_task(budget.acquire())
    await asyncio.sleep(0.5)  # real time passes, but the window has not moved
    assert not fourth.done()
    clock.now += 0.2
    await asyncio.wait_for(fourth, 5)
    assert budget.used() == 1
