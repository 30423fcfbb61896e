"""LlamaCppEngine: the in-process engine, an asyncio face on the llama.cpp worker thread.

The event loop never waits on llama.cpp: loading runs in an executor, decoding in the
worker thread, and chunks cross back through `call_soon_threadsafe` into a per-request
asyncio queue. Prompt building and token counting (template + tokenizer, no decoding) run
in the caller's thread, which llama.cpp allows while the worker decodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from bot.config import EngineSettings
from llm.base import (
    ChatMessage,
    Chunk,
    EngineError,
    EngineStats,
    GenerationRequest,
)
from llm.chat_template import ChatTemplate
from llm.llama_worker import Job, Worker
from llm.model_files import resolve_model
from llm.native import ContextParams, NativeContext, NativeModel, SamplingParams, init_backend

log = logging.getLogger(__name__)

TOKEN_CACHE_ENTRIES = 4096


class LlamaCppEngine:
    """One model, one context, one worker thread; many conversations batched together."""

    name = "llama.cpp"

    def __init__(
        self,
        settings: EngineSettings,
        *,
        model: str | Path | None = None,
        debug: bool = False,
        prefill_chunk: int = 128,
        state_cache_mb: int = 128,
    ) -> None:
        """`model`: a GGUF path or hub reference (default: settings.model).

        `prefill_chunk`: prompt tokens of a long prompt read per step while nobody is
        answering (larger reads a little faster, smaller lets a newcomer in sooner; see
        `llama_slots.plan_prefill`, which also decides the share while answers stream).
        `state_cache_mb`: RAM for KV states of conversations evicted from their slot.
        """
        self.settings = settings
        self.context_size = settings.context_size
        self._model_ref = str(model or settings.model)
        self._model_dir = settings.model_dir
        self._prefill_chunk = prefill_chunk
        self._state_cache_mb = state_cache_mb
        self._debug = debug
        self._model: NativeModel | None = None
        self._ctx: NativeContext | None = None
        self._template: ChatTemplate | None = None
        self._worker: Worker | None = None
        self.model_path: Path | None = None
        self._tokens: OrderedDict[tuple[str, bool], tuple[int, ...]] = OrderedDict()
        self.load_seconds = 0.0

    async def start(self) -> None:
        if self._worker is not None:
            return
        started = time.monotonic()
        path = await asyncio.to_thread(resolve_model, self._model_ref, self._model_dir)
        init_backend(debug=self._debug)
        model, ctx = await asyncio.to_thread(self._load, path)
        self._model, self._ctx, self.model_path = model, ctx, path
        self.context_size = ctx.n_ctx_seq
        self._template = ChatTemplate(
            model.chat_template(),
            bos_token=model.token_text(model.bos),
            eos_token="",
        )
        worker = Worker(
            model,
            ctx,
            max_queue=self.settings.max_queue,
            prefill_chunk=self._prefill_chunk,
            state_cache_bytes=self._state_cache_mb * 1024 * 1024,
        )
        worker.thread.start()
        self._worker = worker
        self.load_seconds = time.monotonic() - started
        log.info(
            "model %s ready in %.1f s: %d slots x %d tokens, %d threads",
            path.name,
            self.load_seconds,
            ctx.params.n_seq,
            ctx.n_ctx_seq,
            ctx.params.threads,
        )

    def _load(self, path: Path) -> tuple[NativeModel, NativeContext]:
        s = self.settings
        model = NativeModel(path)
        try:
            n_ctx_seq = min(s.context_size, model.n_ctx_train or s.context_size)
            params = ContextParams(
                n_seq=s.slots,
                n_ctx_seq=n_ctx_seq,
                n_batch=max(s.batch_size, s.slots),
                threads=s.threads or physical_cores(),
                kv_type=s.kv_cache_type,
                flash_attention=s.flash_attention,
            )
            return model, NativeContext(model, params)
        except BaseException:
            model.free()
            raise

    async def close(self) -> None:
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.stop()
            await asyncio.to_thread(worker.thread.join)
        if self._ctx is not None:
            self._ctx.free()
            self._ctx = None
        if self._model is not None:
            self._model.free()
            self._model = None
        self._tokens.clear()

    def prompt_tokens(self, messages: Sequence[ChatMessage]) -> list[int]:
        """The exact tokens the model reads for `messages` plus the assistant header."""
        model, template = self._model, self._template
        if model is None or template is None:
            raise EngineError("the engine is not running")
        tokens: list[int] = []
        segments = template.segments(messages)
        if model.add_bos and not (segments and segments[0][0].startswith(template_bos(model))):
            tokens.append(model.bos)
        for text, literal in segments:
            tokens += self._tokenize(model, text, special=not literal)
        return tokens

    def _tokenize(self, model: NativeModel, text: str, *, special: bool) -> tuple[int, ...]:
        """Tokenize one segment, remembering recent ones.

        The core counts a thread's history message by message and then as a whole, and the
        next question repeats it all; tokenizing ~1,000 tokens takes a few milliseconds of
        the event loop's time, a lookup takes microseconds.
        """
        key = (text, special)
        cached = self._tokens.get(key)
        if cached is not None:
            self._tokens.move_to_end(key)
            return cached
        tokens = tuple(model.tokenize(text, special=special))
        self._tokens[key] = tokens
        if len(self._tokens) > TOKEN_CACHE_ENTRIES:
            self._tokens.popitem(last=False)
        return tokens

    def count_tokens(self, messages: Sequence[ChatMessage]) -> int:
        return len(self.prompt_tokens(messages))

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        worker = self._worker
        if worker is None:
            raise EngineError("the engine is not running")
        prompt = self.prompt_tokens(request.messages)
        room = self.context_size - len(prompt)
        if room < 1:
            raise EngineError(
                f"the conversation is too long for the model ({len(prompt)} tokens, "
                f"the limit is {self.context_size - 1})"
            )
        s = self.settings
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Chunk | BaseException] = asyncio.Queue()

        def emit(item: Chunk | BaseException) -> None:
            # RuntimeError: the loop is gone, so nobody is listening any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(queue.put_nowait, item)

        job = Job(
            prompt=prompt,
            conversation_id=request.conversation_id,
            max_tokens=min(request.max_tokens or s.max_tokens, room),
            sampling=SamplingParams(
                temperature=s.temperature if request.temperature is None else request.temperature,
                top_p=s.top_p,
                top_k=s.top_k,
                repeat_penalty=s.repeat_penalty,
                seed=s.seed if request.seed is None else request.seed,
            ),
            stop=(*s.stop, *request.stop),
            emit=emit,
        )
        position = worker.submit(job)
        finished = False
        try:
            if position > 0:
                yield Chunk(queue_position=position)
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                if item.done:
                    finished = True
                yield item
                if finished:
                    return
        finally:
            if not finished:
                worker.cancel(job)

    def stats(self) -> EngineStats:
        worker = self._worker
        if worker is None:
            return EngineStats()
        active, queued = worker.counts()
        t = worker.totals
        return EngineStats(
            requests=t.requests,
            active=active,
            queued=queued,
            prompt_tokens=t.prompt_tokens,
            reused_tokens=t.reused_tokens,
            generated_tokens=t.generated_tokens,
            mean_time_to_first_token=t.first_token_seconds / t.first_tokens
            if t.first_tokens
            else 0.0,
            tokens_per_second=t.generated_tokens / t.busy_seconds if t.busy_seconds else 0.0,
            answer_tokens_per_second=t.answer_speed.tokens_per_second,
            extra={
                "slots": float(len(worker.slots)),
                "context_size": float(self.context_size),
                "threads": float(worker.ctx.params.threads),
                "load_seconds": self.load_seconds,
                "evictions": float(t.evictions),
                "restored_states": float(t.restored),
                "parked_states": float(len(worker.states)),
                "cancelled": float(t.cancelled),
                "rejected_busy": float(t.rejected),
                "errors": float(t.errors),
            },
        )


def template_bos(model: NativeModel) -> str:
    return model.token_text(model.bos) or "\0"


def physical_cores() -> int:
    """Physical cores this process may run on (hyper-threads share a core's math units)."""
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    count = len(allowed) if allowed else os.cpu_count() or 1
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as file:
            blocks = file.read().strip().split("\n\n")
    except OSError:
        return count
    cores: set[tuple[str, str]] = set()
    for block in blocks:
        fields = dict(
            (key.strip(), value.strip())
            for key, _, value in (line.partition(":") for line in block.splitlines())
        )
        if allowed is not None and int(fields.get("processor", -1)) not in allowed:
            continue
        if "core id" in fields:
            cores.add((fields.get("physical id", "0"), fields["core id"]))
    return max(1, min(count, len(cores) or count))
