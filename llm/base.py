"""The one protocol every engine implements, and the values it streams.

The core only ever calls `stream()`, `count_tokens()` and `stats()`, so an in-process
llama.cpp model and a remote OpenAI-compatible server are interchangeable.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

Role = Literal["system", "user", "assistant"]


class EngineError(Exception):
    """Generation failed; the message is fit to show a user."""


class EngineBusy(EngineError):
    """The waiting queue is full; try again later."""


class ModelError(EngineError):
    """The model could not be found, downloaded or loaded."""


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: Role
    content: str


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """One answer to generate.

    `conversation_id` lets an engine keep the conversation's KV cache between turns;
    `None` values fall back to the engine's configured defaults.
    """

    messages: Sequence[ChatMessage]
    conversation_id: str = ""
    max_tokens: int | None = None
    temperature: float | None = None
    seed: int | None = None
    stop: Sequence[str] = ()


@dataclass(frozen=True, slots=True)
class RequestStats:
    prompt_tokens: int = 0
    reused_tokens: int = 0
    generated_tokens: int = 0
    time_to_first_token: float = 0.0
    tokens_per_second: float = 0.0
    finish_reason: str = ""  # "stop", "length", "cancelled", "error"
    # Engine steps (llama_decode calls) from getting a slot to the first token: the wait
    # counted in work, whatever the machine's speed (0: read and answered in one step).
    steps_to_first_token: int = 0


@dataclass
class AnswerSpeed:
    """How fast answers are written once they have started, over many answers.

    Tokens after each answer's first one, over the time from its first token to its last:
    what a reader sees, whatever else the engine was doing meanwhile.
    """

    tokens: int = 0
    seconds: float = 0.0

    def add(self, stats: RequestStats) -> None:
        if stats.generated_tokens > 1 and stats.tokens_per_second > 0:
            self.tokens += stats.generated_tokens - 1
            self.seconds += (stats.generated_tokens - 1) / stats.tokens_per_second

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


@dataclass(frozen=True, slots=True)
class Chunk:
    """A piece of the stream.

    While the request waits, chunks carry only `queue_position` (1 = next). Then text
    chunks follow (`text` is whole UTF-8 characters, `tokens` how many tokens it took),
    and the last chunk has `done=True` and the request's `stats`.
    """

    text: str = ""
    tokens: int = 0
    queue_position: int | None = None
    done: bool = False
    stats: RequestStats | None = None


@dataclass(frozen=True, slots=True)
class EngineStats:
    requests: int = 0
    active: int = 0
    queued: int = 0
    prompt_tokens: int = 0
    reused_tokens: int = 0
    generated_tokens: int = 0
    mean_time_to_first_token: float = 0.0
    tokens_per_second: float = 0.0  # all answers together, over the time the engine was busy
    answer_tokens_per_second: float = 0.0  # one answer's own pace (AnswerSpeed)
    extra: dict[str, float] = field(default_factory=dict)


class Engine(Protocol):
    name: str
    context_size: int

    def stream(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        """Generate; closing the iterator (or cancelling its task) cancels the request at once."""

    def count_tokens(self, messages: Sequence[ChatMessage]) -> int:
        """Tokens these messages take in a prompt (exact where the engine can tell)."""

    def stats(self) -> EngineStats: ...

    async def start(self) -> None:
        """Load the model / connect. Raises ModelError with a message naming what to fix."""

    async def close(self) -> None: ...
