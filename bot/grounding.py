"""What the question pipeline needs from the knowledge base, and how it uses the answer.

The core asks `knowledge.KnowledgeBase` for passages (scoped to the collections the chat
may read), numbers them into the prompt (bot/prompt.py) and, once the model has answered,
decides which of them to show as the answer's sources: those the answer cites with [n],
or all it was given when it cites none (a small model often forgets to cite; the reader
should still see what it read). Adapters render the sources for their platform.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Protocol

from bot.i18n import N_, Texts
from bot.types import ConversationKey, Source
from knowledge.types import Passage, Retriever
from storage.base import Repository, Turn


class Knowledge(Retriever, Protocol):
    """The part of `knowledge.base.KnowledgeBase` the conversation service uses."""

    stats: Any  # searches, seconds (spent searching)

    def collections_for(self, platform: str, chat: str) -> list[str] | None: ...

    async def status(self) -> Any:
        """documents, chunks, last_sync (datetime | None), errors [(location, reason)]."""

    async def sync(self, progress: Callable[..., Any] | None = None) -> Any: ...


# Heads the footer under an answer on every platform. A sign, not a word: the footer is
# rendered by the adapter, which does not know the asker's language, and a Chinese answer
# should not end in English chrome.
SOURCES_LABEL = "📚"
NO_KB = N_("No company documents are set up for me (knowledge.sources is empty).")
NO_SOURCES = N_("My last answer in this thread did not come from the company's documents.")
MAX_ERRORS_SHOWN = 5
SOURCE_PREVIEW_CHARS = 300

# [2], and the full-width forms a model writing Chinese uses: 【2】 ［2］.
_CITATION = re.compile(r"[\[【［]\s*(\d{1,3})\s*[\]】］]")
QUERY_CONTEXT_CHARS = 500  # of the previous question, added to a follow-up's search


def retrieval_query(question: str, history: Sequence[Turn]) -> str:
    """What to search for: the question, plus the thread's previous question so a
    follow-up ("and in Oslo?") still finds what the first question was about."""
    if not history:
        return question
    previous = history[-1].question[:QUERY_CONTEXT_CHARS]
    return f"{previous}\n{question}"


async def search(
    knowledge: Knowledge,
    key: ConversationKey,
    question: str,
    history: Sequence[Turn],
    limit: int,
) -> list[Passage]:
    """The passages for a question (a follow-up with its thread's previous question), from
    the collections this chat may read only."""
    usable = [turn for turn in history if turn.status != "error"]
    return await knowledge.retrieve(
        retrieval_query(question, usable),
        collections=knowledge.collections_for(key.platform, key.channel),
        limit=limit,
    )


def to_sources(passages: Sequence[Passage]) -> list[Source]:
    """The passages as numbered in the prompt ([1] first)."""
    return [
        Source(
            number=number,
            title=passage.title or passage.location,
            location=passage.location,
            url=passage.url,
            heading=passage.heading,
            collection=passage.collection,
            score=passage.score,
            text=passage.text,
        )
        for number, passage in enumerate(passages, start=1)
    ]


def cited(answer: str, sources: Sequence[Source]) -> list[Source]:
    """The sources to show under `answer`: those it cites with a valid [n], in their
    order; all of them when it cites none."""
    numbers = {int(match) for match in _CITATION.findall(answer)}
    chosen = [source for source in sources if source.number in numbers]
    return chosen or list(sources)


def sources_text(turn: Turn | None, texts: Texts) -> str:
    """/sources: the passages behind the thread's last answer, the cited ones marked."""
    if turn is None or not turn.sources:
        return texts.gettext(NO_SOURCES)
    shown = {source.number for source in cited(turn.answer, turn.sources)}
    lines = [texts.gettext("The document passages behind my last answer here:")]
    for source in turn.sources:
        where = " > ".join(part for part in (source.location, source.heading) if part)
        some = source.number in shown and len(shown) < len(turn.sources)
        mark = " " + texts.gettext("(cited)") if some else ""
        preview = " ".join(source.text.split())
        if len(preview) > SOURCE_PREVIEW_CHARS:
            preview = preview[:SOURCE_PREVIEW_CHARS].rstrip() + "…"
        link = f" — {source.url}" if source.url else ""
        lines.append(f"[{source.number}] {source.title} ({where}, {source.score:.3f}){mark}{link}")
        lines.append(f"> {preview}")
    return "\n".join(lines)


def kb_status_text(status: Any, texts: Texts) -> str:
    """/kb: how big the index is, when it last synced and what it could not read."""
    last = status.last_sync
    if isinstance(last, datetime):
        when = last.strftime("%Y-%m-%d %H:%M UTC")
    else:
        when = str(last) if last else texts.gettext("never")
    errors = list(status.errors)
    documents, chunks = f"{status.documents:,}", f"{status.chunks:,}"
    lines = [
        texts.gettext(
            "Knowledge base: %(documents)s documents · %(chunks)s chunks · last sync %(when)s "
            "· %(errors)d errors",
            documents=documents,
            chunks=chunks,
            when=when,
            errors=len(errors),
        )
    ]
    for location, reason in errors[:MAX_ERRORS_SHOWN]:
        lines.append(f"• {location}: {reason}")
    if len(errors) > MAX_ERRORS_SHOWN:
        more = len(errors) - MAX_ERRORS_SHOWN
        lines.append("• " + texts.gettext("… and %(more)d more", more=more))
    return "\n".join(lines)


def sync_text(report: Any, texts: Texts) -> str:
    """/kb sync: what the sync changed, from the report's numeric fields."""
    parts = []
    if dataclasses.is_dataclass(report):
        for item in dataclasses.fields(report):
            value = getattr(report, item.name)
            if isinstance(value, bool):
                continue
            if isinstance(value, int | float):
                parts.append(f"{item.name.replace('_', ' ')} {value:g}")
            elif isinstance(value, list | tuple):
                parts.append(f"{item.name.replace('_', ' ')} {len(value)}")
    if not parts:
        return texts.gettext("Sync done.")
    return texts.gettext("Sync done: %(changes)s", changes=" · ".join(parts))


# -- the commands ------------------------------------------------------------------------------


async def sources_reply(
    knowledge: Knowledge | None, repo: Repository, key: ConversationKey, texts: Texts
) -> str:
    """/sources in the thread `key`."""
    if knowledge is None:
        return texts.gettext(NO_KB)
    history = await repo.load_history(key, limit=1)
    return sources_text(history[-1] if history else None, texts)


async def kb_reply(knowledge: Knowledge | None, args: str, usage: str, texts: Texts) -> str:
    """/kb (status) and /kb sync (admins); `usage` is how the platform spells "/kb [sync]"."""
    if knowledge is None:
        return texts.gettext(NO_KB)
    action = args.strip().lower()
    if action not in ("", "status", "sync"):
        return texts.gettext(
            "Usage: %(usage)s (status, or sync: re-read the documents now).", usage=usage
        )
    if action == "sync":
        report = await knowledge.sync()
        status = await knowledge.status()
        return f"{sync_text(report, texts)}\n{kb_status_text(status, texts)}"
    return kb_status_text(await knowledge.status(), texts)


async def retrieval_line(knowledge: Knowledge | None, abstentions: int, texts: Texts) -> str:
    """/stats' line about the documents ("" without a knowledge base)."""
    if knowledge is None:
        return ""
    try:
        status = await knowledge.status()
        documents, chunks = f"{status.documents:,}", f"{status.chunks:,}"
    except Exception:  # the other figures still count
        documents = chunks = "?"
    count = int(knowledge.stats.searches)
    mean = knowledge.stats.seconds / count * 1000 if count else 0.0
    searches, abstained = f"{count:,}", f"{abstentions:,}"
    return texts.gettext(
        "Documents: %(documents)s · chunks: %(chunks)s · searches: %(searches)s "
        "(%(mean).0f ms on average) · not in the docs: %(abstained)s",
        documents=documents,
        chunks=chunks,
        searches=searches,
        mean=mean,
        abstained=abstained,
    )
