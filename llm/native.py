"""Thin typed wrappers over llama-cpp-python's low-level (ctypes) API.

The high-level `Llama` class owns one sequence and copies logits into numpy on every token,
which costs about a third of the decode speed on a small model. The engine drives
llama.cpp directly instead; this module keeps the ctypes details (pointers, buffers,
frees) in one place so the scheduler reads as plain Python.

Thread-safety: a `NativeContext` is used by exactly one thread (the engine's worker).
Tokenization only reads the model's vocabulary, which is immutable after loading (llama.cpp's
own server tokenizes in HTTP threads while its main loop decodes), so `NativeModel.tokenize`
may be called from any thread while the worker decodes.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp as lc

from llm.base import ModelError

log = logging.getLogger(__name__)

KV_TYPES = {"f16": lc.GGML_TYPE_F16, "q8_0": lc.GGML_TYPE_Q8_0, "q4_0": lc.GGML_TYPE_Q4_0}

_init_lock = threading.Lock()
_backend_ready = False
_debug_logs = False


@lc.llama_log_callback  # type: ignore[untyped-decorator]
def _log_callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    """llama.cpp's own log lines go to our logger at DEBUG (and nowhere unless enabled)."""
    if _debug_logs and text:
        log.debug("llama.cpp: %s", text.decode("utf-8", "replace").rstrip())


def init_backend(*, debug: bool = False) -> None:
    """Initialise llama.cpp once per process and route its stderr chatter to logging."""
    global _backend_ready, _debug_logs
    with _init_lock:
        _debug_logs = debug
        lc.llama_log_set(_log_callback, ctypes.c_void_p(0))
        if not _backend_ready:
            lc.llama_backend_init()
            _backend_ready = True


class NativeModel:
    """A loaded GGUF: weights and vocabulary."""

    def __init__(self, path: Path, *, vocab_only: bool = False) -> None:
        params = lc.llama_model_default_params()
        params.vocab_only = vocab_only
        model = lc.llama_model_load_from_file(str(path).encode(), params)
        if not model:
            raise ModelError(
                f"llama.cpp could not load {path} (unsupported architecture or damaged file); "
                "set EDGEQA_MODEL=/path/to/model.gguf to use another GGUF"
            )
        self.ptr = model
        self.vocab = lc.llama_model_get_vocab(model)
        self.n_vocab: int = lc.llama_vocab_n_tokens(self.vocab)
        self.n_ctx_train: int = lc.llama_model_n_ctx_train(model)
        self.add_bos: bool = lc.llama_vocab_get_add_bos(self.vocab)
        self.bos: int = lc.llama_vocab_bos(self.vocab)
        self._pieces: dict[int, bytes] = {}
        self._eog: dict[int, bool] = {}

    def chat_template(self) -> str | None:
        raw = lc.llama_model_chat_template(self.ptr, None)
        return raw.decode("utf-8", "replace") if raw else None

    def token_text(self, token: int) -> str:
        """The token as written in a prompt (special tokens included), e.g. "<|im_end|>"."""
        if token < 0:
            return ""
        return self._piece(token, special=True).decode("utf-8", "replace")

    def tokenize(self, text: str, *, special: bool) -> list[int]:
        """Tokens of `text`; `special` parses "<|im_start|>"-style markers as control tokens."""
        data = text.encode("utf-8")
        capacity = len(data) + 8
        buf = (lc.llama_token * capacity)()
        count = lc.llama_tokenize(self.vocab, data, len(data), buf, capacity, False, special)
        if count < 0:  # never for byte-level vocabularies, but the API allows it
            capacity = -count
            buf = (lc.llama_token * capacity)()
            count = lc.llama_tokenize(self.vocab, data, len(data), buf, capacity, False, special)
        return list(buf[:count])

    def piece(self, token: int) -> bytes:
        """The bytes a generated token stands for (control tokens render as nothing)."""
        cached = self._pieces.get(token)
        if cached is None:
            cached = self._pieces[token] = self._piece(token, special=False)
        return cached

    def _piece(self, token: int, *, special: bool) -> bytes:
        buf = ctypes.create_string_buffer(64)
        size = lc.llama_token_to_piece(self.vocab, token, buf, 64, 0, special)
        if size < 0:
            buf = ctypes.create_string_buffer(-size)
            size = lc.llama_token_to_piece(self.vocab, token, buf, -size, 0, special)
        return buf.raw[:size]

    def is_eog(self, token: int) -> bool:
        cached = self._eog.get(token)
        if cached is None:
            cached = self._eog[token] = bool(lc.llama_vocab_is_eog(self.vocab, token))
        return cached

    def free(self) -> None:
        if self.ptr:
            lc.llama_model_free(self.ptr)
            self.ptr = None


@dataclass(frozen=True, slots=True)
class ContextParams:
    n_seq: int
    n_ctx_seq: int
    n_batch: int
    threads: int
    kv_type: str = "f16"
    flash_attention: bool = True


class NativeContext:
    """One llama.cpp context: `n_seq` sequences sharing one pool of `n_seq * n_ctx_seq` cells.

    The KV cache is unified (one pool, cells tagged by sequence), not one stream per sequence:
    llama.cpp can put tokens of several streams in one micro-batch only when their sequence
    ids are consecutive (and then only the same number of tokens each), so 4 conversations
    in slots 0, 2, 5 and 7 cost 4 passes over the weights per step, and 3 answers plus a
    prompt chunk cost 2. With a unified pool every step is one pass whatever the slots (it
    is what llama-server does with `-np auto`). Attention masks other sequences' cells, and
    the CPU kernel skips masked cells, so sharing the pool costs nothing measurable. Each
    slot stays within `n_ctx_seq` (the worker's limit), so the pool never overflows.
    """

    def __init__(self, model: NativeModel, params: ContextParams) -> None:
        cparams = lc.llama_context_default_params()
        cparams.n_ctx = params.n_ctx_seq * params.n_seq
        cparams.n_batch = params.n_batch
        cparams.n_ubatch = params.n_batch
        cparams.n_seq_max = params.n_seq
        cparams.n_threads = params.threads
        cparams.n_threads_batch = params.threads
        cparams.kv_unified = True
        cparams.no_perf = True
        quantized = params.kv_type != "f16"
        # A quantized V cache needs flash attention in llama.cpp.
        flash = params.flash_attention or quantized
        cparams.flash_attn_type = (
            lc.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash else lc.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        cparams.type_k = KV_TYPES[params.kv_type]
        cparams.type_v = KV_TYPES[params.kv_type]
        ctx = lc.llama_init_from_model(model.ptr, cparams)
        if not ctx:
            raise ModelError(
                f"llama.cpp could not create a context of {cparams.n_ctx} tokens "
                f"({params.n_seq} slots x {params.n_ctx_seq}); lower engine.slots or "
                "engine.context_size"
            )
        self.ptr = ctx
        self.model = model
        self.params = params
        # llama.cpp's n_ctx_seq is the whole pool when unified; a slot gets its share.
        self.n_ctx_seq: int = min(params.n_ctx_seq, lc.llama_n_ctx(ctx) // params.n_seq)
        self.memory = lc.llama_get_memory(ctx)

    def decode(self, batch: Batch) -> int:
        return int(lc.llama_decode(self.ptr, batch.raw))

    def seq_truncate(self, seq: int, keep: int) -> bool:
        """Drop the KV cells of `seq` from position `keep` on (keep=0: the whole sequence)."""
        return bool(lc.llama_memory_seq_rm(self.memory, seq, keep, -1))

    def seq_save(self, seq: int) -> bytes:
        size = lc.llama_state_seq_get_size(self.ptr, seq)
        buf = (ctypes.c_uint8 * size)()
        written = lc.llama_state_seq_get_data(self.ptr, buf, size, seq)
        return bytes(buf)[:written]

    def seq_restore(self, seq: int, data: bytes) -> bool:
        buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        return bool(lc.llama_state_seq_set_data(self.ptr, buf, len(data), seq))

    def free(self) -> None:
        if self.ptr:
            lc.llama_free(self.ptr)
            self.ptr = None


class Batch:
    """A reusable llama_batch; `add()` one token at a time, `clear()` between decodes."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.raw = lc.llama_batch_init(capacity, 0, 1)
        self.n = 0
        self._token = self.raw.token
        self._pos = self.raw.pos
        self._n_seq = self.raw.n_seq_id
        self._seq = self.raw.seq_id
        self._logits = self.raw.logits

    def clear(self) -> None:
        self.n = 0
        self.raw.n_tokens = 0

    def add(self, token: int, pos: int, seq: int, logits: bool) -> int:
        """Append a token; returns its index (the logits index when `logits` is set)."""
        index = self.n
        self._token[index] = token
        self._pos[index] = pos
        self._n_seq[index] = 1
        self._seq[index][0] = seq
        self._logits[index] = logits
        self.n = index + 1
        self.raw.n_tokens = self.n
        return index

    def add_many(self, tokens: Sequence[int], start: int, seq: int, logits_last: bool) -> int:
        """Append a run of prompt tokens at positions start.. ; returns the last index."""
        index = self.n
        token, pos, n_seq, seq_ids, logits = (
            self._token,
            self._pos,
            self._n_seq,
            self._seq,
            self._logits,
        )
        for offset, value in enumerate(tokens):
            token[index] = value
            pos[index] = start + offset
            n_seq[index] = 1
            seq_ids[index][0] = seq
            logits[index] = 0
            index += 1
        if logits_last and tokens:
            logits[index - 1] = 1
        self.n = index
        self.raw.n_tokens = index
        return index - 1

    def free(self) -> None:
        if self.capacity:
            lc.llama_batch_free(self.raw)
            self.capacity = 0


@dataclass(frozen=True, slots=True)
class SamplingParams:
    temperature: float
    top_p: float
    top_k: int
    repeat_penalty: float
    seed: int  # -1: random


PENALTY_WINDOW = 64


class Sampler:
    """llama.cpp's sampler chain: penalties -> top-k -> top-p -> temperature -> draw.

    Temperature 0 means greedy (with the repeat penalty still applied).

    The penalty pass looks every candidate up in its history: ~0.3 ms a token on a 152k
    vocabulary, most of the chain's cost. A penalty above 1 only lowers the logits of the at
    most PENALTY_WINDOW tokens it has seen, so the k best after it are among the
    k + PENALTY_WINDOW best before it: a top-k of that size first gives the same draws for
    a third of the work.
    """

    def __init__(self, model: NativeModel, params: SamplingParams) -> None:
        chain_params = lc.llama_sampler_chain_default_params()
        chain_params.no_perf = True
        self.ptr: Any = lc.llama_sampler_chain_init(chain_params)
        add = lc.llama_sampler_chain_add
        greedy = params.temperature <= 0
        if params.repeat_penalty > 1.0 and (greedy or params.top_k > 0):
            best = 1 if greedy else params.top_k
            add(self.ptr, lc.llama_sampler_init_top_k(best + PENALTY_WINDOW))
        if params.repeat_penalty != 1.0:
            add(
                self.ptr,
                lc.llama_sampler_init_penalties(
                    model.n_vocab, PENALTY_WINDOW, params.repeat_penalty, 0.0, 0.0
                ),
            )
        if greedy:
            add(self.ptr, lc.llama_sampler_init_greedy())
        else:
            if params.top_k > 0:
                add(self.ptr, lc.llama_sampler_init_top_k(params.top_k))
            if params.top_p < 1.0:
                add(self.ptr, lc.llama_sampler_init_top_p(params.top_p, 1))
            add(self.ptr, lc.llama_sampler_init_temp(params.temperature))
            seed = lc.LLAMA_DEFAULT_SEED if params.seed < 0 else params.seed & 0xFFFFFFFF
            add(self.ptr, lc.llama_sampler_init_dist(seed))

    def accept(self, tokens: Sequence[int]) -> None:
        """Feed the prompt's last tokens so the repeat penalty sees them, as llama.cpp does."""
        for token in tokens[-PENALTY_WINDOW:]:
            lc.llama_sampler_accept(self.ptr, token)

    def sample(self, ctx: NativeContext, index: int) -> int:
        return int(lc.llama_sampler_sample(self.ptr, ctx.ptr, index))

    def free(self) -> None:
        if self.ptr:
            lc.llama_sampler_free(self.ptr)
            self.ptr = None
