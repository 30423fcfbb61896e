"""Slots (llama.cpp sequences) and the choice of which one a new request gets.

A slot keeps the tokens whose KV cells it holds after its request ends, so the same
conversation's next question re-reads only what changed. Choosing a slot is a cache
policy: the conversation's own slot, else one nobody owns, else the least recently used.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING

from llm.base import RequestStats

if TYPE_CHECKING:
    from llm.llama_worker import Job
    from llm.native import Sampler
    from llm.textstream import TextStream


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token lists."""
    limit = min(len(a), len(b))
    if a[:limit] == b[:limit]:
        return limit
    low, high = 0, limit  # invariant: a[:low] == b[:low], a[:high] != b[:high]
    while high - low > 1:
        mid = (low + high) // 2
        if a[:mid] == b[:mid]:
            low = mid
        else:
            high = mid
    return low


class Slot:
    """One llama.cpp sequence: its cached tokens and, while busy, its request's state."""

    def __init__(self, seq: int) -> None:
        self.seq = seq
        self.tokens: list[int] = []  # tokens whose KV cells are in the cache, from position 0
        self.owner: str | None = None  # the conversation those tokens belong to
        self.last_used = 0.0
        self.job: Job | None = None
        self.pending: list[int] = []  # prompt tokens still to pre-fill
        self.next_token: int | None = None  # sampled, to be decoded in the next step
        self.logits_at = -1  # index of this slot's logits in the current batch
        self.sampler: Sampler | None = None
        self.text: TextStream | None = None
        self.reused = 0
        self.generated = 0
        self.unsent = 0  # tokens whose text has not been emitted yet
        self.first_token_at: float | None = None
        self.to_read = 0  # prompt tokens this request had to read when it got the slot
        self.admitted_step = 0
        self.first_token_step = 0

    def start(self, job: Job, keep: int, sampler: Sampler, text: TextStream) -> None:
        self.job = job
        self.pending = list(job.prompt[keep:])
        self.next_token = None
        self.sampler = sampler
        self.text = text
        self.reused = keep
        self.to_read = len(self.pending)
        self.generated = 0
        self.unsent = 0
        self.first_token_at = None

    def sampler_accept(self, prompt: Sequence[int]) -> None:
        if self.sampler is not None:
            self.sampler.accept(prompt)

    def stats(self, reason: str) -> RequestStats:
        assert self.job is not None
        now = time.monotonic()
        first = self.first_token_at
        ttft = first - self.job.submitted if first is not None else 0.0
        rate = (self.generated - 1) / (now - first) if first and self.generated > 1 else 0.0
        return RequestStats(
            prompt_tokens=len(self.job.prompt),
            reused_tokens=self.reused,
            generated_tokens=self.generated,
            time_to_first_token=ttft,
            tokens_per_second=rate,
            finish_reason=reason,
            steps_to_first_token=max(0, self.first_token_step - self.admitted_step),
        )

    def release(self) -> None:
        if self.sampler is not None:
            self.sampler.free()
        self.sampler = None
        self.text = None
        self.job = None
        self.pending = []
        self.next_token = None
        self.last_used = time.monotonic()


def choose_slot(idle: Sequence[Slot], conversation_id: str) -> Slot:
    """The conversation's own slot, else an unowned one, else the least recently used."""
    if conversation_id:
        own = [s for s in idle if s.owner == conversation_id]
        if own:
            return max(own, key=lambda s: len(s.tokens))
    unowned = [s for s in idle if s.owner is None]
    return min(unowned or idle, key=lambda s: s.last_used)


class StateCache:
    """Evicted conversations' KV state, kept in RAM (least recently parked dropped first).

    Restoring a 1,500-token conversation is a memory copy of ~18 MB instead of ~8 s of
    pre-fill on two cores.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self._items: OrderedDict[str, tuple[list[int], bytes]] = OrderedDict()

    def put(self, key: str, tokens: list[int], data: bytes) -> None:
        self._drop(key)
        if len(data) > self.capacity:
            return
        while self.used + len(data) > self.capacity and self._items:
            self._drop(next(iter(self._items)))
        self._items[key] = (tokens, data)
        self.used += len(data)

    def take(self, key: str) -> tuple[list[int], bytes] | None:
        item = self._items.pop(key, None) if key else None
        if item is not None:
            self.used -= len(item[1])
        return item

    def __len__(self) -> int:
        return len(self._items)

    def _drop(self, key: str) -> None:
        item = self._items.pop(key, None)
        if item is not None:
            self.used -= len(item[1])


# How prompts share a step with answers being written. A step's pass over the weights costs
# about as much as reading WEIGHT_PASS_TOKENS prompt tokens (0.5B model, 2 cores, measured:
# one token 51 ms, four 89 ms, a prompt token ~11 ms in a long prompt), so a step of d
# answers costs ~(d + 3) prompt tokens, and prompt tokens worth PREFILL_SHARE of that keep the
# answers at >= 1 / (1 + PREFILL_SHARE) of their speed.
WEIGHT_PASS_TOKENS = 3
PREFILL_SHARE = 0.4


def plan_prefill(
    prefilling: Sequence[Slot], decoding: int, *, room: int, step: int, short: int
) -> list[tuple[Slot, int]]:
    """Which prompt tokens go into this step: [(slot, how many of its pending tokens)].

    - Shortest first: a question with little to read is not stuck behind a long one.
    - A short question (at most `short` tokens to read when it got its slot) is read whole
      in one step, alone with the answers being written, even past the budget: its asker
      sees the first words one step after arriving, whatever else is being read.
    - Long prompts share the rest: `step` tokens per step when nobody is waiting for words
      (so one step never holds a newcomer back long), a few tokens per step while answers
      stream (so they keep >= ~0.7 of their speed).
    """
    order = sorted(prefilling, key=lambda s: (len(s.pending), s.job.submitted if s.job else 0))
    shorts = [s for s in order if s.to_read <= short]
    if shorts:
        order, budget = shorts, room
    elif decoding:
        budget = max(1, int(PREFILL_SHARE * (decoding + WEIGHT_PASS_TOKENS)))
    else:
        budget = step
    budget = min(budget, room)  # `room`: what the llama_decode batch still holds
    plan: list[tuple[Slot, int]] = []
    for slot in order:
        if budget <= 0:
            break
        count = min(budget, len(slot.pending))
        plan.append((slot, count))
        budget -= count
    return plan
