"""The index half of bench/knowledge.py: sync times and retrieval hit rates.

All through `knowledge.setup.build_knowledge`, the way the bot and `edgeqa kb` build the
knowledge base, on the database file the grounded bot is started on afterwards:

- fused: `KnowledgeBase.retrieve`, as configured (keyword coverage and vectors);
- keyword only: the same index through a knowledge base built with `embedding_model = ""`,
  which is what the code does without an embedding model;
- vectors only: the code has no switch for it, so the ranking is the knowledge base's own
  vector search (`KnowledgeBase._vector_search`, cosine over the stored vectors) with the
  chunks' documents looked up through `knowledge.index.load_hits`.

Every mode is asked with `min_score` 0, so the ranks show ordering alone; what the
configured `min_score` does is shown separately from the fused scores (how many answerable
questions it would leave without passages, how many unanswerable ones it would catch).
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.knowledge_questions import Question
from bot.config import Settings, load_settings
from bot.grounding import retrieval_query
from knowledge import index
from knowledge.base import KnowledgeBase
from knowledge.setup import build_knowledge
from storage.base import Turn
from storage.sql import SqlRepository

MODES = ("keyword only", "vectors only", "fused")
NO_CHANGE_SYNCS = 5


@dataclass
class SyncRun:
    embedder_load: float
    full: float
    again: list[float]
    documents: int
    chunks: int
    errors: list[tuple[str, str]]

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


@dataclass
class RetrievalRun:
    # mode -> question id -> rank of the first passage from the expected document (0: none
    # in the first 3)
    ranks: dict[str, dict[str, int]] = field(default_factory=dict)
    # mode -> question id -> the documents of the first 3 passages
    found: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    top_score: dict[str, float] = field(default_factory=dict)  # fused, per question id
    min_score: float = 0.0
    questions: list[Question] = field(default_factory=list)
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "ranks": self.ranks,
            "found": self.found,
            "top_score": self.top_score,
            "min_score": self.min_score,
        }

    def misses(self) -> list[str]:
        """Lines on what fused retrieval missed, and on the relevance threshold."""
        lines = []
        answerable = [q for q in self.questions if q.answerable]
        for q in answerable:
            if not 0 < self.ranks["fused"][q.id] <= 3:
                lines.append(
                    f"fused miss {q.id} ({q.source}): got {', '.join(self.found['fused'][q.id])}"
                )
        yes = sorted(self.top_score[q.id] for q in answerable)
        no = sorted(self.top_score[q.id] for q in self.questions if not q.answerable)
        if yes and no:
            lines.append(
                f"best fused score: answerable min {yes[0]:.3f} / median "
                f"{statistics.median(yes):.3f}; unanswerable median {statistics.median(no):.3f}"
                f" / max {no[-1]:.3f}"
            )
            lines.append(
                f"knowledge.min_score = {self.min_score}: leaves "
                f"{sum(s < self.min_score for s in yes)}/{len(yes)} answerable questions "
                f"without passages, catches {sum(s < self.min_score for s in no)}/{len(no)} "
                "unanswerable ones before the model"
            )
            for q in self.questions:
                if not q.answerable:
                    score = self.top_score[q.id]
                    lines.append(f"  unanswerable {q.id}: best fused score {score:.3f}")
        return lines


def bench_settings(config: Path, url: str, model: Path, max_tokens: int) -> Settings:
    """The grounded bot's settings, on the bench's database and model."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEQA_")}
    env |= {"EDGEQA_HISTORY__DATABASE_URL": url, "EDGEQA_MODEL": str(model)}
    env |= {"EDGEQA_ENGINE__MAX_TOKENS": str(max_tokens)}
    return load_settings(config, env=env)


async def same_prompts(settings: Settings, questions: Sequence[Question]) -> dict[str, str]:
    """Each question as the grounded bot's last user message: passages, rule, question.

    Asked of a bot without a knowledge base, it gives the grounded prompt's length with no
    search: the baseline for the grounded first-token time "of the same length". Passages
    are chosen by the bot's own `build_prompt` with the chat model's tokenizer (the chat
    template's few tokens per message estimated).
    """
    from bot.prompt import build_prompt
    from llm.base import ChatMessage
    from llm.tokens import chat_token_counter

    text_count = chat_token_counter(Path(settings.model_ref))

    def count(messages: Sequence[ChatMessage]) -> int:
        return sum(text_count(m.content) + 4 for m in messages)

    engine = settings.engine
    budget = max(64, min(settings.bot.context_tokens, engine.context_size - engine.max_tokens))
    prompts: dict[str, str] = {}
    async with opened(settings) as (kb, _):
        await kb.embedder()
        for q in questions:
            passages = await kb.retrieve(q.text, limit=settings.knowledge.top_k)
            if not passages:
                continue  # the grounded bot says "not in the docs": no pair
            prompt = build_prompt(
                settings.bot.system_prompt,
                [],
                q.text,
                budget=budget,
                count=count,
                passages=passages,
                passage_budget=settings.knowledge.passage_tokens,
            )
            prompts[q.id] = prompt.messages[-1].content
    return prompts


@contextlib.asynccontextmanager
async def opened(settings: Settings) -> AsyncIterator[tuple[KnowledgeBase, SqlRepository]]:
    repo = SqlRepository(settings.history.database_url)
    await repo.start()  # creates or upgrades the schema, index tables included
    kb = build_knowledge(settings, repo.db, download=False)
    assert kb is not None, "the bench config has a knowledge source"
    try:
        yield kb, repo
    finally:
        await kb.close()
        await repo.close()


async def measure_sync(settings: Settings) -> SyncRun:
    """A full sync into the empty index, then syncs that find nothing changed."""
    async with opened(settings) as (kb, _):
        started = time.perf_counter()
        await kb.embedder()  # loaded on first use; timed apart from the sync itself
        loaded = time.perf_counter() - started
        started = time.perf_counter()
        await kb.sync()
        full = time.perf_counter() - started
        again = []
        for _ in range(NO_CHANGE_SYNCS):
            started = time.perf_counter()
            report = await kb.sync()
            again.append(time.perf_counter() - started)
            assert report.added == report.updated == report.removed == 0, report
        status = await kb.status()
    return SyncRun(loaded, full, again, status.documents, status.chunks, list(status.errors))


def search_query(q: Question, by_id: dict[str, Question]) -> str:
    """What the bot searches for: a follow-up carries the question before it."""
    if not q.follows:
        return q.text
    previous = by_id[q.follows].text
    turn = Turn("bench", previous, "", "complete", 0, 0, datetime.now(UTC))
    return retrieval_query(q.text, [turn])


async def measure_retrieval(settings: Settings, questions: Sequence[Question]) -> RetrievalRun:
    configured = settings.knowledge.min_score
    knowledge = settings.knowledge.model_copy(update={"min_score": 0.0})
    fused_settings = settings.model_copy(update={"knowledge": knowledge})
    keyword_settings = settings.model_copy(
        update={"knowledge": knowledge.model_copy(update={"embedding_model": ""})}
    )
    run = RetrievalRun(min_score=configured, questions=list(questions))
    run.note = "(vectors only: the knowledge base's own vector search, no switch in its API)"
    by_id = {q.id: q for q in questions}
    for mode in MODES:
        run.ranks[mode], run.found[mode] = {}, {}
    async with opened(fused_settings) as (kb, _), opened(keyword_settings) as (keyword_kb, _):
        embedder = await kb.embedder()
        assert embedder is not None, "the embedding model did not load"
        for q in questions:
            query = search_query(q, by_id)
            fused = await kb.retrieve(query, limit=3)
            run.top_score[q.id] = fused[0].score if fused else 0.0
            keyword = await keyword_kb.retrieve(query, limit=3)
            cosines = await kb._vector_search(embedder, query, None)
            best = sorted(cosines, key=lambda c: -cosines[c])[:3]
            hits = await index.load_hits(kb.db, best)
            vectors = [hits[c].location for c in best if c in hits]
            for mode, locations in (
                ("fused", [p.location for p in fused]),
                ("keyword only", [p.location for p in keyword]),
                ("vectors only", vectors),
            ):
                run.found[mode][q.id] = locations
                rank = next((i for i, loc in enumerate(locations, 1) if loc == q.source), 0)
                run.ranks[mode][q.id] = rank
    return run
