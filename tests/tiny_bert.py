"""A tiny BERT-architecture embedding GGUF that real llama.cpp loads and runs at once.

The knowledge base's vector search must be tested through real llama.cpp, but a real
embedding model is tens of MB. This writes a 2-layer, 32-wide BERT with a WordPiece
vocabulary (whole words from `WORDS`, every letter and digit as word start and as
continuation, [CLS]/[SEP]/[UNK]/[PAD]/[MASK]), mean pooling, under 100 kB.

Its attention and feed-forward outputs are zero, so each token's output is its own
(normalised) embedding and the sentence vector is the mean over tokens: a bag of words.
Words in one `SYNONYMS` group share one embedding row, so "automobile" and "car" embed
alike although no keyword matches: what vector search adds, in miniature.
"""

from __future__ import annotations

import string
from pathlib import Path

import numpy as np
from gguf import GGUFWriter, PoolingType, TokenType

N_EMBD = 32
N_FF = 64
N_LAYER = 2
N_HEAD = 2
CONTEXT = 512

_WORDS = (
    "car automobile vehicle parking garage bicycle travel hotel flight refund expense "
    "vpn laptop password office lunch holiday leave sick policy how what where when the "
    "a is of for in my i can do many much days"
)
WORDS = _WORDS.split()
SYNONYMS = [("car", "automobile", "vehicle"), ("holiday", "leave")]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def vocabulary() -> list[str]:
    chars = string.ascii_lowercase + string.digits
    tokens = list(SPECIALS)
    tokens += ["\u2581" + w for w in WORDS]  # "▁" marks a word start (llama.cpp's WPM)
    tokens += ["\u2581" + c for c in chars] + list(chars)
    tokens += ["\u2581" + p for p in ".,?!:;-()"]
    return list(dict.fromkeys(tokens))


def write_tiny_bert(path: str | Path, *, seed: int = 7) -> Path:
    path = Path(path)
    tokens = vocabulary()
    rng = np.random.default_rng(seed)
    embed = rng.standard_normal((len(tokens), N_EMBD)).astype(np.float32)
    for group in SYNONYMS:
        rows = [tokens.index("\u2581" + w) for w in group]
        embed[rows] = embed[rows[0]]
    for special in ("[CLS]", "[SEP]", "[PAD]"):  # they are in every text: keep them quiet
        embed[tokens.index(special)] *= 0.01

    writer = GGUFWriter(str(path), "bert")
    writer.add_name("edgeqa-tiny-bert")
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(N_EMBD)
    writer.add_feed_forward_length(N_FF)
    writer.add_block_count(N_LAYER)
    writer.add_head_count(N_HEAD)
    writer.add_layer_norm_eps(1e-12)
    writer.add_causal_attention(False)
    writer.add_pooling_type(PoolingType.MEAN)
    writer.add_file_type(0)

    writer.add_tokenizer_model("bert")
    writer.add_token_list(tokens)
    writer.add_token_types(
        [TokenType.CONTROL if t in SPECIALS else TokenType.NORMAL for t in tokens]
    )
    writer.add_token_type_count(2)
    writer.add_unk_token_id(tokens.index("[UNK]"))
    writer.add_pad_token_id(tokens.index("[PAD]"))
    writer.add_bos_token_id(tokens.index("[CLS]"))  # llama.cpp reads CLS as BOS
    writer.add_sep_token_id(tokens.index("[SEP]"))
    writer.add_eos_token_id(tokens.index("[SEP]"))
    writer.add_mask_token_id(tokens.index("[MASK]"))

    def zeros(*shape: int) -> np.ndarray:
        return np.zeros(shape, dtype=np.float32)

    def ones(n: int) -> np.ndarray:
        return np.ones(n, dtype=np.float32)

    writer.add_tensor("token_embd.weight", embed)
    writer.add_tensor("token_types.weight", zeros(2, N_EMBD))
    writer.add_tensor("position_embd.weight", zeros(CONTEXT, N_EMBD))
    writer.add_tensor("token_embd_norm.weight", ones(N_EMBD))
    writer.add_tensor("token_embd_norm.bias", zeros(N_EMBD))
    for layer in range(N_LAYER):
        name = f"blk.{layer}"
        for part in ("attn_q", "attn_k", "attn_v"):
            writer.add_tensor(
                f"{name}.{part}.weight",
                rng.standard_normal((N_EMBD, N_EMBD)).astype(np.float32) * 0.1,
            )
            writer.add_tensor(f"{name}.{part}.bias", zeros(N_EMBD))
        writer.add_tensor(f"{name}.attn_output.weight", zeros(N_EMBD, N_EMBD))
        writer.add_tensor(f"{name}.attn_output.bias", zeros(N_EMBD))
        writer.add_tensor(f"{name}.attn_output_norm.weight", ones(N_EMBD))
        writer.add_tensor(f"{name}.attn_output_norm.bias", zeros(N_EMBD))
        writer.add_tensor(f"{name}.ffn_up.weight", zeros(N_FF, N_EMBD))
        writer.add_tensor(f"{name}.ffn_up.bias", zeros(N_FF))
        writer.add_tensor(f"{name}.ffn_down.weight", zeros(N_EMBD, N_FF))
        writer.add_tensor(f"{name}.ffn_down.bias", zeros(N_EMBD))
        writer.add_tensor(f"{name}.layer_output_norm.weight", ones(N_EMBD))
        writer.add_tensor(f"{name}.layer_output_norm.bias", zeros(N_EMBD))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
