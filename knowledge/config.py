"""The `[knowledge]` section: where the documents are and how answers use them."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

DEFAULT_EMBEDDING_MODEL = "Qwen/Qwen3-Embedding-0.6B-GGUF/Qwen3-Embedding-0.6B-Q8_0.gguf"
"""Multilingual (Chinese and English among 100+ languages), from the chat model's makers;
see README, "Knowledge base", for why and for smaller choices."""


def _duration(value: Any) -> Any:
    """ "10m" like the other intervals (bot.sections' parser, imported when first used)."""
    from bot.sections import parse_duration

    return parse_duration(value)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceSettings(_Section):
    """One folder or glob of documents, in one collection.

    `path` is a folder (read recursively) or a glob; relative paths resolve against the
    config file's folder. `url_prefix` + the document's path relative to the source makes
    the link shown in citations ("" = no link, the title alone).
    """

    path: str
    collection: str = "default"
    url_prefix: str = ""


class CollectionRule(_Section):
    """Which collections one platform, chat or channel may search.

    `platform` is "web", "telegram" or "slack"; `chat` a chat or channel id ("" = every
    chat of that platform). The most specific matching rule wins; with no rule, all.
    """

    platform: str
    chat: str = ""
    collections: list[str]


class KnowledgeSettings(_Section):
    sources: list[SourceSettings] = []
    # Embedding GGUF (local path or hub reference, like the chat model); "" = keyword only.
    embedding_model: str = DEFAULT_EMBEDDING_MODEL
    embedding_threads: int = Field(1, ge=1, le=64)  # 1 leaves the other core to answers
    chunk_tokens: int = Field(300, ge=32, le=2048)
    # How many passages go into the prompt at most, and their share of the token budget.
    top_k: int = Field(4, ge=1, le=20)
    passage_tokens: int = Field(900, ge=64)
    # Below this fused relevance (0..1: the mean of the idf-weighted share of the question's
    # words a passage contains and its rescaled embedding similarity; the share alone
    # without an embedding model), a passage does not count (knowledge/search.py, README).
    min_score: float = Field(0.3, ge=0, le=1)
    # "strict": say the documents do not cover it and stop; "prefer": answer anyway, marked.
    mode: Literal["strict", "prefer"] = "strict"
    # Seconds (or "10m") between background syncs.
    sync_interval: Annotated[float, BeforeValidator(_duration), Field(gt=0)] = 600.0
    max_file_bytes: int = Field(20 * 1024 * 1024, ge=1)
    collections: list[CollectionRule] = []

    @property
    def enabled(self) -> bool:
        return bool(self.sources)
