"""What retrieval hands to the core: passages, already judged relevant, best first.

The core never sees index rows or scores' internals: a `Passage` carries what the prompt
needs (text, numbered in the prompt) and what a citation needs (title, heading, link).
An empty result means the documents do not cover the question; the relevance threshold
lives in the retriever, so the core has no number to tune.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Passage:
    """One retrieved chunk of a document."""

    chunk_id: int
    collection: str
    title: str  # the document's title (first heading, <title>, PDF metadata or file name)
    heading: str  # heading path inside the document, "Travel > Hotels" ("" at the top)
    location: str  # the document's path relative to its source folder
    url: str  # link for citations: the source's url_prefix + location ("" without one)
    text: str  # the chunk's text, as it goes into the prompt
    score: float  # fused relevance, higher is better (comparable within one retrieval)


class Retriever(Protocol):
    """The one call the question pipeline makes into the knowledge base."""

    async def retrieve(
        self, query: str, *, collections: Sequence[str] | None = None, limit: int = 4
    ) -> list[Passage]:
        """Relevant passages for `query` from `collections` (None = all), best first.

        Only passages above the configured relevance threshold are returned; [] means the
        knowledge base does not cover the question.
        """
        ...
