"""Sentence embeddings from a GGUF embedding model, run by llama.cpp in this process.

The knowledge base embeds its chunks (during a sync) and each question (during an answer)
with the same model. The model is found like the chat model (a local path, or a hub
reference downloaded once with a progress bar, llm/model_files.py) and runs through
llama-cpp-python's `Llama(embedding=True)`, which reads the pooling the model was trained
with (mean for BERT models, last token for Qwen3-Embedding) from the GGUF itself.

It runs on one thread by default: on a 2-core machine the chat engine's decoding is what
users wait for, and an embedding pass using both cores halves an answer's speed
(bench/kb_sync.py measures it). Calls are serialised by a lock, and the sync embeds in
small batches so a question's embedding never waits long behind it.

Some models are trained with prefixes that say which side of a search a text is on; the
ones for the models named in the README are applied by file name (`prefixes_for`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from llm.base import ModelError
from llm.model_files import resolve_model

log = logging.getLogger(__name__)

CONTEXT = 512
"""Tokens one text may have (longer ones are cut): BERT-family models stop at 512."""

QWEN3_QUERY = "Instruct: Given a question, retrieve passages that answer it\nQuery: "

Vectors = npt.NDArray[np.float32]


def prefixes_for(path: Path) -> tuple[str, str]:
    """(query prefix, passage prefix) the model family was trained with, else ("", "")."""
    name = path.name.lower()
    if name.startswith("e5") or "-e5-" in name:
        return "query: ", "passage: "
    if "qwen3-embedding" in name:
        return QWEN3_QUERY, ""
    return "", ""


class Embedder:
    """One loaded embedding model; `embed` may be called from any thread."""

    def __init__(self, path: Path, *, threads: int = 1) -> None:
        from llama_cpp import Llama

        self.path = path
        try:
            self._llama = Llama(
                model_path=str(path),
                embedding=True,
                n_ctx=CONTEXT,
                n_batch=CONTEXT,
                n_ubatch=CONTEXT,
                n_threads=threads,
                n_threads_batch=threads,
                verbose=False,
            )
        except Exception as exc:
            raise ModelError(f"llama.cpp could not load the embedding model {path}: {exc}") from exc
        self.dims: int = int(self._llama.n_embd())
        self.query_prefix, self.passage_prefix = prefixes_for(path)
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        """What the stored vectors came from: another name means they must be redone."""
        return f"{self.path.name}:{self.dims}"

    def embed(self, texts: Sequence[str], *, query: bool = False) -> Vectors:
        """L2-normalised float32 vectors, one row per text (texts past CONTEXT are cut)."""
        if not texts:
            return np.zeros((0, self.dims), dtype=np.float32)
        prefix = self.query_prefix if query else self.passage_prefix
        inputs = [prefix + (t if t.strip() else "-") for t in texts]
        with self._lock:
            rows = self._llama.embed(inputs, normalize=False, truncate=True)
        vectors = np.asarray(rows, dtype=np.float32).reshape(len(texts), self.dims)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        norms[norms == 0] = 1.0
        normalised: Vectors = vectors / norms
        return normalised

    def close(self) -> None:
        with self._lock:
            self._llama.close()


def load_embedder(
    ref: str, model_dir: str | Path, *, threads: int = 1, download: bool = True
) -> Embedder:
    """Resolve (and if needed download) `ref` and load it; ModelError says what to fix."""
    path = resolve_model(ref, model_dir, download=download)
    embedder = Embedder(path, threads=max(1, threads))
    log.info("embedding model %s (%d dimensions, %d thread(s))", path.name, embedder.dims, threads)
    return embedder
