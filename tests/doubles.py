"""Test doubles for the core's own logic: a recording adapter and a scripted engine.

They stand in for a platform adapter and an engine only where the core's cadence,
queueing and bookkeeping are under test. End-to-end tests use the real adapters against
the fakes in tests/fakes/ and the real llama.cpp engine.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from adapters.base import AdapterLimits, BaseAdapter, CoreHandler, MessageTooLong, PlatformError
from bot.types import ConversationKey, MessageRef, Progress, Source
from llm.base import (
    ChatMessage,
    Chunk,
    EngineBusy,
    EngineStats,
    GenerationRequest,
    RequestStats,
)


def now() -> float:
    """The event loop's clock, the flusher's too: on a fast-forwarded loop (looptime) the
    recorded times are the loop's, exact and independent of the machine's speed."""
    return asyncio.get_running_loop().time()


@dataclass
class Op:
    kind: str  # "send", "edit", "typing"
    key: ConversationKey
    message_id: str
    text: str
    final: bool
    at: float
    reply_to: str = ""
    sources: tuple[Source, ...] = ()


@dataclass
class RecordingAdapter(BaseAdapter):
    """Keeps what a chat would show; faults are queued per operation kind."""

    shows_typing: ClassVar[bool] = True
    shows_progress: ClassVar[bool] = True

    name: str = "test"
    limits: AdapterLimits = field(
        default_factory=lambda: AdapterLimits(max_message_len=4000, edit_interval=0.05)
    )
    ops: list[Op] = field(default_factory=list)
    shown: dict[str, str] = field(default_factory=dict)
    faults: dict[str, list[Exception]] = field(default_factory=dict)
    too_long_over: int | None = None
    progress_seen: list[Progress] = field(default_factory=list)
    refused: list[tuple[str, float]] = field(default_factory=list)  # (kind, when)
    down: bool = False  # every send and edit fails with a PlatformError while set
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    async def start(self, handler: CoreHandler) -> None:
        self.handler = handler

    async def stop(self) -> None:
        pass

    def fail(self, kind: str, *errors: Exception) -> None:
        self.faults.setdefault(kind, []).extend(errors)

    def _maybe_fail(self, kind: str, text: str) -> None:
        if self.down:
            self.refused.append((kind, now()))
            raise PlatformError("503 Service Unavailable")
        queue = self.faults.get(kind)
        if queue:
            self.refused.append((kind, now()))
            raise queue.pop(0)
        if self.too_long_over is not None and len(text) > self.too_long_over:
            raise MessageTooLong(f"{len(text)} > {self.too_long_over}")

    async def send(
        self,
        key: ConversationKey,
        text: str,
        *,
        reply_to: str = "",
        final: bool = False,
        sources: Sequence[Source] = (),
    ) -> MessageRef:
        self._maybe_fail("send", text + self.render_sources(sources))
        message_id = str(next(self._ids))
        self.shown[message_id] = text + self.render_sources(sources)
        self.ops.append(Op("send", key, message_id, text, final, now(), reply_to, tuple(sources)))
        return MessageRef(key, message_id)

    async def edit(
        self,
        ref: MessageRef,
        text: str,
        *,
        final: bool = False,
        sources: Sequence[Source] = (),
    ) -> None:
        self._maybe_fail("edit", text + self.render_sources(sources))
        self.shown[ref.message_id] = text + self.render_sources(sources)
        self.ops.append(Op("edit", ref.key, ref.message_id, text, final, now(), "", tuple(sources)))

    def render_sources(self, sources: Sequence[Source]) -> str:
        """A plain footer, so length limits and what a user sees include it."""
        if not sources:
            return ""
        return "\n\n📚 " + " · ".join(f"[{s.number}] {s.title}" for s in sources)

    async def typing(self, key: ConversationKey, *, reply_to: str = "") -> None:
        self.ops.append(Op("typing", key, "", "", False, now()))

    def edit_interval(self, key: ConversationKey) -> float:
        return self.limits.edit_interval

    async def progress(self, key: ConversationKey, ref: MessageRef | None, info: Progress) -> None:
        self.progress_seen.append(info)

    # -- what a user sees ----------------------------------------------------------------

    def messages(self, key: ConversationKey | None = None) -> list[str]:
        """Texts of the messages in order of sending, as shown now."""
        ids = [op.message_id for op in self.ops if op.kind == "send"]
        if key is not None:
            ids = [op.message_id for op in self.ops if op.kind == "send" and op.key == key]
        return [self.shown[i] for i in ids]

    def reply_to(self, message_id: str) -> list[Op]:
        """Every write to the messages sent in reply to the user's message `message_id`."""
        ids = {op.message_id for op in self.ops if op.kind == "send" and op.reply_to == message_id}
        return [op for op in self.writes() if op.message_id in ids]

    def writes(self, kind: str | None = None) -> list[Op]:
        return [op for op in self.ops if op.kind != "typing" and (kind is None or op.kind == kind)]


Answer = str | Callable[[GenerationRequest], str]  # one answer, or one per request


class ScriptedEngine:
    """Streams fixed answers (or one per request) at a fixed pace; one request at a time like a
    1-slot engine."""

    name = "scripted"
    context_size = 4096

    def __init__(
        self,
        answer: Answer = "Hello there, this is a scripted answer.",
        *,
        token_delay: float = 0.0,
        slots: int = 1,
        max_queue: int = 8,
    ) -> None:
        self.answer = answer
        self.token_delay = token_delay
        self.requests: list[GenerationRequest] = []
        self.cancelled = 0
        self._slots = asyncio.Semaphore(slots)
        self._waiting = 0
        self._max_queue = max_queue
        self._generated = 0
        # When set to an unset Event, answers wait for it before their first token (so a
        # test can keep a thread busy for as long as it needs, whatever the machine's speed).
        self.gate: asyncio.Event | None = None

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def count_tokens(self, messages: Sequence[ChatMessage]) -> int:
        return sum(4 + len(m.content) // 4 for m in messages) + 2

    def stats(self) -> EngineStats:
        return EngineStats(queued=self._waiting, generated_tokens=self._generated)

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        self.requests.append(request)
        if self._slots.locked():
            if self._waiting >= self._max_queue:
                raise EngineBusy(f"{self._waiting} questions are waiting")
            self._waiting += 1
            yield Chunk(queue_position=self._waiting)
            try:
                await self._slots.acquire()
            finally:
                self._waiting -= 1
        else:
            await self._slots.acquire()
        tokens = 0
        try:
            if self.gate is not None:
                await self.gate.wait()
            started = time.monotonic()
            answer = self.answer(request) if callable(self.answer) else self.answer
            for piece in _pieces(answer):
                if self.token_delay:
                    await asyncio.sleep(self.token_delay)
                tokens += 1
                self._generated += 1
                yield Chunk(text=piece, tokens=1)
            yield Chunk(
                done=True,
                stats=RequestStats(
                    prompt_tokens=self.count_tokens(request.messages),
                    generated_tokens=tokens,
                    time_to_first_token=0.0,
                    tokens_per_second=tokens / max(1e-6, time.monotonic() - started),
                    finish_reason="stop",
                ),
            )
        except (GeneratorExit, asyncio.CancelledError):
            self.cancelled += 1
            raise
        finally:
            self._slots.release()


def _pieces(text: str) -> list[str]:
    """Split like a tokenizer would: words with their leading space."""
    pieces: list[str] = []
    for word in text.split(" "):
        pieces.append(word if not pieces else " " + word)
    return [p for p in pieces if p]
