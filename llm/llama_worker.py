"""The thread that owns the llama.cpp context and decodes every conversation in one batch.

Each step builds a single llama_decode batch: one token for every conversation that is
generating, plus prompt tokens for those still pre-filling, chosen by
`llama_slots.plan_prefill` (short questions first and whole, long prompts in chunks, only a
few tokens per step while answers stream, so those keep flowing). Each slot is a llama.cpp
sequence whose KV cells outlive the request: a follow-up in the same conversation
pre-fills only what differs from the cached tokens. A request takes its conversation's
slot, else an empty one, else the least recently used idle one (whose KV state may be
parked in RAM to restore later).

Nothing here touches asyncio: results go out through each job's `emit` callback, which
must be thread-safe; requests and cancellations come in through `submit()` / `cancel()`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from llm.base import AnswerSpeed, Chunk, EngineBusy, EngineError
from llm.llama_slots import Slot, StateCache, choose_slot, common_prefix, plan_prefill
from llm.native import Batch, NativeContext, NativeModel, Sampler, SamplingParams
from llm.textstream import TextStream

log = logging.getLogger(__name__)

Emit = Callable[[Chunk | BaseException], None]
GATHER_SECONDS = 0.005


@dataclass(eq=False)
class Job:
    prompt: list[int]
    conversation_id: str
    max_tokens: int
    sampling: SamplingParams
    stop: tuple[str, ...]
    emit: Emit
    submitted: float = field(default_factory=time.monotonic)
    cancelled: bool = False
    position: int = 0  # the last queue position reported to the caller


@dataclass
class Totals:
    requests: int = 0
    prompt_tokens: int = 0
    reused_tokens: int = 0
    generated_tokens: int = 0
    first_token_seconds: float = 0.0
    first_tokens: int = 0
    busy_seconds: float = 0.0
    answer_speed: AnswerSpeed = field(default_factory=AnswerSpeed)
    cancelled: int = 0
    rejected: int = 0
    errors: int = 0
    evictions: int = 0
    restored: int = 0


class Worker:
    def __init__(
        self,
        model: NativeModel,
        ctx: NativeContext,
        *,
        max_queue: int,
        prefill_chunk: int = 128,
        short_prompt: int = 128,
        state_cache_bytes: int = 0,
    ) -> None:
        self.model = model
        self.ctx = ctx
        self.max_queue = max_queue
        self.prefill_chunk = prefill_chunk
        self.short_prompt = short_prompt
        self.steps = 0  # llama_decode calls so far
        self.n_batch = ctx.params.n_batch
        self.slots = [Slot(seq) for seq in range(ctx.params.n_seq)]
        self.states = StateCache(state_cache_bytes)
        self.batch = Batch(self.n_batch)
        self.totals = Totals()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._waiting: deque[Job] = deque()
        self._active = 0
        self._dirty = False  # queue positions changed outside the worker
        self._stopping = False
        self.thread = threading.Thread(target=self._run, name="edgeqa-llama", daemon=True)

    # -- called from other threads -------------------------------------------------------

    def submit(self, job: Job) -> int:
        """Queue a job; returns its queue position (0: a slot is free for it)."""
        with self._lock:
            if self._stopping:
                raise EngineError("the engine is shutting down")
            position = len(self._waiting) + 1 - (len(self.slots) - self._active)
            if position > self.max_queue:
                self.totals.rejected += 1
                raise EngineBusy(f"{position - 1} questions are already waiting")
            job.position = max(position, 0)
            self._waiting.append(job)
            self.totals.requests += 1
            self._wake.notify()
            return job.position

    def cancel(self, job: Job) -> None:
        with self._lock:
            job.cancelled = True
            if job in self._waiting:
                self._waiting.remove(job)
                self.totals.cancelled += 1
                self._dirty = True
            self._wake.notify()

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._wake.notify()

    def counts(self) -> tuple[int, int]:
        """(active, queued) right now."""
        with self._lock:
            return self._active, len(self._waiting)

    # -- the worker thread ---------------------------------------------------------------

    def _run(self) -> None:
        try:
            while self._wait_for_work():
                started = time.monotonic()
                try:
                    self._step()
                except Exception as exc:  # a bug or a llama.cpp failure: fail, reset, go on
                    log.exception("engine step failed")
                    self._fail_all(EngineError(f"the model failed: {exc}"))
                self.totals.busy_seconds += time.monotonic() - started
        finally:
            self._fail_all(EngineError("the engine was stopped"), waiting=True)
            self.batch.free()

    def _wait_for_work(self) -> bool:
        with self._lock:
            idle = not self._waiting and not self._active
            while not self._stopping and not self._waiting and not self._active:
                self._wake.wait()
            stopping = self._stopping
        if idle and not stopping:
            # Requests sent together (several people asking at once) start together: their
            # prompts share one pre-fill batch instead of the first one running alone.
            time.sleep(GATHER_SECONDS)
        return not stopping

    def _step(self) -> None:
        self._reap_cancelled()
        self._admit()
        batch = self.batch
        batch.clear()
        decoding = [s for s in self.slots if s.job and s.next_token is not None]
        for slot in decoding:
            assert slot.next_token is not None
            slot.logits_at = batch.add(slot.next_token, len(slot.tokens), slot.seq, True)
        prefilling = plan_prefill(
            [s for s in self.slots if s.job is not None and s.pending],
            len(decoding),
            room=self.n_batch - batch.n,
            step=self.prefill_chunk,
            short=self.short_prompt,
        )
        for slot, count in prefilling:
            last = count == len(slot.pending)
            slot.logits_at = batch.add_many(slot.pending[:count], len(slot.tokens), slot.seq, last)
        if batch.n == 0:
            return
        code = self.ctx.decode(batch)
        self.steps += 1
        if code != 0:
            failed = [s for s in decoding] + [s for s, _ in prefilling]
            self._decode_failed(failed, code)
            return
        ready = decoding[:]
        for slot in decoding:
            assert slot.next_token is not None
            slot.tokens.append(slot.next_token)
            slot.next_token = None
        for slot, count in prefilling:
            slot.tokens.extend(slot.pending[:count])
            del slot.pending[:count]
            if not slot.pending:
                ready.append(slot)
        for slot in ready:
            assert slot.sampler is not None
            self._take(slot, slot.sampler.sample(self.ctx, slot.logits_at))

    def _reap_cancelled(self) -> None:
        for slot in self.slots:
            if slot.job is not None and slot.job.cancelled:
                self._finish(slot, "cancelled")

    def _admit(self) -> None:
        with self._lock:
            while self._waiting:
                idle = [s for s in self.slots if s.job is None]
                if not idle:
                    break
                job = self._waiting.popleft()
                slot = choose_slot(idle, job.conversation_id)
                self._active += 1
                self._assign(slot, job)
                slot.admitted_step = self.steps
                self._dirty = True
            if self._dirty:
                self._dirty = False
                for index, job in enumerate(self._waiting):
                    if job.position != index + 1:
                        job.position = index + 1
                        job.emit(Chunk(queue_position=index + 1))

    def _assign(self, slot: Slot, job: Job) -> None:
        """Point the slot at the job and keep the longest cached prefix of its prompt."""
        if slot.owner != job.conversation_id or not job.conversation_id:
            self._park(slot)
            restored = self.states.take(job.conversation_id)
            if restored is not None:
                tokens, data = restored
                if common_prefix(tokens, job.prompt) > common_prefix(slot.tokens, job.prompt):
                    self.ctx.seq_truncate(slot.seq, 0)
                    if self.ctx.seq_restore(slot.seq, data):
                        slot.tokens = list(tokens)
                        self.totals.restored += 1
                    else:
                        slot.tokens = []
            slot.owner = job.conversation_id or None
        keep = min(common_prefix(slot.tokens, job.prompt), len(job.prompt) - 1)
        if keep < len(slot.tokens) and not self.ctx.seq_truncate(slot.seq, keep):
            self.ctx.seq_truncate(slot.seq, 0)
            keep = 0
        del slot.tokens[keep:]
        slot.start(job, keep, Sampler(self.model, job.sampling), TextStream(job.stop))
        slot.sampler_accept(job.prompt)

    def _park(self, slot: Slot) -> None:
        """The slot changes hands: keep the old conversation's KV state in RAM if it fits."""
        if slot.owner and len(slot.tokens) >= 32 and self.states.capacity:
            data = self.ctx.seq_save(slot.seq)
            self.states.put(slot.owner, list(slot.tokens), data)
        if slot.owner:
            self.totals.evictions += 1

    def _take(self, slot: Slot, token: int) -> None:
        """A sampled token: stream its text, or end the answer."""
        job = slot.job
        assert job is not None and slot.text is not None
        now = time.monotonic()
        if slot.first_token_at is None:
            slot.first_token_at = now
            slot.first_token_step = self.steps - 1  # the step that produced it
        if self.model.is_eog(token):
            self._finish(slot, "stop")
            return
        slot.generated += 1
        slot.unsent += 1
        text = slot.text.push(self.model.piece(token))
        if text:
            job.emit(Chunk(text=text, tokens=slot.unsent))
            slot.unsent = 0
        if slot.text.stopped:
            self._finish(slot, "stop")
        elif slot.generated >= job.max_tokens or len(slot.tokens) >= self.ctx.n_ctx_seq:
            self._finish(slot, "length")
        else:
            slot.next_token = token

    def _finish(self, slot: Slot, reason: str) -> None:
        job = slot.job
        assert job is not None
        tail = slot.text.finish() if slot.text is not None else ""
        if tail and reason != "cancelled":
            job.emit(Chunk(text=tail, tokens=slot.unsent))
        stats = slot.stats(reason)
        with self._lock:
            self._active -= 1
            self._dirty = True
            totals = self.totals
            totals.prompt_tokens += stats.prompt_tokens
            totals.reused_tokens += stats.reused_tokens
            totals.generated_tokens += stats.generated_tokens
            if slot.first_token_at is not None:
                totals.first_token_seconds += stats.time_to_first_token
                totals.first_tokens += 1
            totals.answer_speed.add(stats)
            totals.cancelled += reason == "cancelled"
        slot.release()
        job.emit(Chunk(done=True, stats=stats))

    def _decode_failed(self, failed: list[Slot], code: int) -> None:
        log.error("llama_decode returned %d for %d sequences", code, len(failed))
        error = EngineError(f"the model could not process the request (llama.cpp code {code})")
        for slot in failed:
            job = slot.job
            assert job is not None
            self._forget(slot)
            with self._lock:
                self._active -= 1
                self._dirty = True
                self.totals.errors += 1
            slot.release()
            job.emit(error)

    def _forget(self, slot: Slot) -> None:
        self.ctx.seq_truncate(slot.seq, 0)
        slot.tokens = []
        slot.owner = None

    def _fail_all(self, error: EngineError, *, waiting: bool = False) -> None:
        for slot in self.slots:
            job = slot.job
            if job is not None:
                with self._lock:
                    self._active -= 1
                    self.totals.errors += 1
                slot.release()
                job.emit(error)
            self._forget(slot)
        if waiting:
            with self._lock:
                jobs = list(self._waiting)
                self._waiting.clear()
            for job in jobs:
                job.emit(error)
