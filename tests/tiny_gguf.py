"""A tiny Qwen2-architecture GGUF that real llama.cpp loads and runs in microseconds.

Tests must drive the real llama.cpp, but the real model is ~470 MiB and slow on 2 cores.
This writes a 2-layer, 64-wide model with a byte-level BPE vocabulary (256 byte tokens, a
few merges, <|endoftext|>, <|im_start|>, <|im_end|>) and a ChatML template, under 0.5 MB.

Two flavours:
- `write_tiny_model(path)`: random weights, biased so that greedy output is printable
  ASCII, depends on the whole context (attention and MLP are live), and never ends on its
  own (answers run to max_tokens) — good for batching, caching and streaming tests.
- `write_tiny_model(path, script="...")`: a deterministic bigram machine; after the
  assistant header's newline it writes `script` byte by byte, then <|im_end|>. The bytes
  of `script` must be distinct and must not include a newline. Good for UTF-8 streaming
  and stop tests, since its answer is known in advance.
  `script` may also be a list of strings: each becomes one token of its own (added to the
  vocabulary), so a scripted answer can repeat characters ("<!channel>", "<script>") as
  long as the pieces themselves are distinct.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from gguf import GGUFWriter, TokenType

N_EMBD = 64
N_HEAD = 4
N_HEAD_KV = 2
N_FF = 128
N_LAYER = 2
CONTEXT_LENGTH = 8192

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = [("Ġ", "t"), ("h", "e"), ("i", "n"), ("Ġt", "he")]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used by byte-level BPE vocabularies."""
    visible = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    chars = list(visible)
    extra = 0
    for byte in range(256):
        if byte not in visible:
            visible.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {byte: chr(char) for byte, char in zip(visible, chars, strict=True)}


BYTE_TOKEN = _bytes_to_unicode()


def vocabulary() -> list[str]:
    """Token strings by id: the 256 bytes (id == byte value), the merges, then the specials."""
    tokens = [BYTE_TOKEN[byte] for byte in range(256)]
    tokens += [left + right for left, right in MERGES]
    return tokens + SPECIALS


def write_tiny_model(
    path: str | Path, *, script: str | Sequence[str] | None = None, seed: int = 1234
) -> Path:
    """Write the tiny model to `path` and return it."""
    path = Path(path)
    tokens = vocabulary()
    if script is not None and not isinstance(script, str):
        pieces = [_byte_text(piece) for piece in script]
        tokens += [piece for piece in dict.fromkeys(pieces) if piece not in tokens]
        chain = [tokens.index(piece) for piece in pieces]
    elif script is not None:
        chain = list(script.encode("utf-8"))  # byte tokens: id == byte value
    n_vocab = len(tokens)
    im_end = tokens.index("<|im_end|>")
    rng = np.random.default_rng(seed)

    embed = rng.standard_normal((n_vocab, N_EMBD)).astype(np.float32)
    if script is None:
        output, live = _chatty_output(rng, embed, tokens)
    else:
        output, live = _script_output(rng, embed, chain, im_end), False

    writer = GGUFWriter(str(path), "qwen2")
    writer.add_name("edgeqa-tiny" if script is None else "edgeqa-tiny-script")
    writer.add_context_length(CONTEXT_LENGTH)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(N_LAYER)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD_KV)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_file_type(1)  # mostly F16

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types(
        [TokenType.CONTROL if tok in SPECIALS else TokenType.NORMAL for tok in tokens]
    )
    writer.add_token_merges([f"{left} {right}" for left, right in MERGES])
    writer.add_bos_token_id(tokens.index("<|endoftext|>"))
    writer.add_eos_token_id(im_end)
    writer.add_pad_token_id(tokens.index("<|endoftext|>"))
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHATML_TEMPLATE)

    head_dim = N_EMBD // N_HEAD
    kv_dim = N_HEAD_KV * head_dim
    scale = 0.3 if live else 0.0

    def matrix(rows: int, cols: int, factor: float = 1.0) -> np.ndarray:
        weights = rng.standard_normal((rows, cols)) * factor / np.sqrt(cols)
        return weights.astype(np.float16)

    writer.add_tensor("token_embd.weight", embed.astype(np.float16))
    writer.add_tensor("output_norm.weight", np.ones(N_EMBD, dtype=np.float32))
    writer.add_tensor("output.weight", output.astype(np.float16))
    for layer in range(N_LAYER):
        name = f"blk.{layer}"
        writer.add_tensor(f"{name}.attn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        writer.add_tensor(f"{name}.attn_q.weight", matrix(N_EMBD, N_EMBD, 2.0))
        writer.add_tensor(f"{name}.attn_q.bias", np.zeros(N_EMBD, dtype=np.float32))
        writer.add_tensor(f"{name}.attn_k.weight", matrix(kv_dim, N_EMBD, 2.0))
        writer.add_tensor(f"{name}.attn_k.bias", np.zeros(kv_dim, dtype=np.float32))
        writer.add_tensor(f"{name}.attn_v.weight", matrix(kv_dim, N_EMBD))
        writer.add_tensor(f"{name}.attn_v.bias", np.zeros(kv_dim, dtype=np.float32))
        writer.add_tensor(f"{name}.attn_output.weight", matrix(N_EMBD, N_EMBD, 3 * scale))
        writer.add_tensor(f"{name}.ffn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        writer.add_tensor(f"{name}.ffn_gate.weight", matrix(N_FF, N_EMBD))
        writer.add_tensor(f"{name}.ffn_up.weight", matrix(N_FF, N_EMBD))
        writer.add_tensor(f"{name}.ffn_down.weight", matrix(N_EMBD, N_FF, 3 * scale))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _chatty_output(
    rng: np.random.Generator, embed: np.ndarray, tokens: list[str]
) -> tuple[np.ndarray, bool]:
    """Output weights that only ever pick printable ASCII (letters, digits, space, .,!?).

    Every embedding shares a large component on dimension 0, which survives the (small)
    attention and MLP updates and the final RMS norm; the output rows of allowed tokens
    point along it and all others against it, so the allowed set always wins and the
    random rest of each row decides among them by context.
    """
    embed[:, 0] = 4.0
    output = rng.standard_normal((len(tokens), N_EMBD))
    allowed = {
        ord(c) for c in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,!?"
    }
    output[:, 0] = [12.0 if index in allowed else -12.0 for index in range(len(tokens))]
    return output, True


def _byte_text(piece: str) -> str:
    """A piece of text as a byte-level BPE token string (GPT-2's byte -> character map)."""
    return "".join(BYTE_TOKEN[byte] for byte in piece.encode("utf-8"))


def _script_output(
    rng: np.random.Generator, embed: np.ndarray, script: list[int], im_end: int
) -> np.ndarray:
    """Bigram weights: the row of the successor of token t is t's own embedding."""
    chain = [ord("\n"), *script, im_end]
    if len(set(chain)) != len(chain):
        raise ValueError("script tokens must be distinct and must not be a newline")
    output = rng.standard_normal((embed.shape[0], N_EMBD)) * 0.05
    for current, following in itertools.pairwise(chain):
        output[following] = 2.0 * embed[current]
    return output
