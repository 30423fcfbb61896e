"""Counting a plain text's tokens the way the chat model will read it.

The knowledge base sizes its chunks in the chat model's tokens (a passage's cost in the
prompt), long before and often far from the running engine: `edgeqa kb sync` runs in its
own process. Loading only the vocabulary of the chat GGUF (`vocab_only`) takes
milliseconds and a few MB, so the count is exact without the weights.

Special tokens are never parsed: a document that contains "<|im_end|>" is counted (and
later read) as those characters, not as the control token.

Without a local llama.cpp model (the OpenAI-compatible engine, or a hub model not yet
downloaded) the count is an estimate on the high side, like the remote engine's own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

TextCounter = Callable[[str], int]


def estimate_tokens(text: str) -> int:
    """About 3 UTF-8 bytes a token (English ~4, Chinese ~1.5 characters of 3 bytes)."""
    return (len(text.encode("utf-8")) + 2) // 3


def chat_token_counter(model_path: Path | None) -> TextCounter:
    """A counter backed by the chat GGUF's vocabulary, or the estimate without one."""
    if model_path is None:
        return estimate_tokens
    try:
        from llm.native import NativeModel, init_backend

        init_backend()
        model = NativeModel(model_path, vocab_only=True)
    except Exception as exc:
        log.warning("counting tokens by estimate: cannot read %s (%s)", model_path, exc)
        return estimate_tokens

    def count(text: str) -> int:
        return len(model.tokenize(text, special=False))

    return count
