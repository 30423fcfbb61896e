"""Retrieval choices measured on a handbook and its questions (never part of the tests).

    .venv/bin/python bench/kb_retrieval.py [--handbook DIR] [--questions TOML]
        [--embedding-model GGUF] [--database-url URL]

For each configuration it indexes the handbook (default: bench/data/handbook with
bench/data/questions.toml, the corpus the knowledge benchmark uses) and reports, over the
answerable questions, how often the document holding the answer is ranked first (hit@1)
and among the first three (hit@3), for Chinese and English separately; then, for
thresholds on the top passage's score, how many answerable questions keep their right
passage and how many unanswerable ones are refused. Configurations:

- segmentation of CJK text for the keyword index: character bigrams vs jieba words;
- ranking: the fused absolute score (knowledge/search.py) vs reciprocal rank fusion of the
  keyword and vector rankings;
- keyword only vs keyword + vectors (when --embedding-model is given).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from knowledge import base as kb_base  # noqa: E402
from knowledge import index as kb_index  # noqa: E402
from knowledge import search as kb_search  # noqa: E402
from knowledge import segment as kb_segment  # noqa: E402
from knowledge.base import KnowledgeBase  # noqa: E402
from knowledge.config import KnowledgeSettings, SourceSettings  # noqa: E402
from storage.sql import SqlRepository  # noqa: E402


@dataclass
class Question:
    text: str
    lang: str
    source: str | None
    answerable: bool


def load_questions(path: Path) -> list[Question]:
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    return [
        Question(
            q.get("standalone", q["question"]),
            q.get("lang", "en"),
            q.get("source"),
            q.get("answerable", True),
        )
        for q in data["question"]
    ]


def use_jieba() -> None:
    """Swap the bigram segmentation for jieba's search-mode words, index and questions."""
    import jieba

    jieba.setLogLevel(60)

    def seg(text: str) -> str:
        return kb_segment.CJK_RUN.sub(
            lambda m: " " + " ".join(jieba.cut_for_search(m.group())) + " ", text
        )

    def terms(query: str) -> list[str]:
        out: dict[str, None] = {}
        for word in kb_segment._WORD.finditer(seg(query).lower()):
            w = word.group()
            if w not in kb_segment.STOP_WORDS:
                out.setdefault(w, None)
        return list(out)

    kb_index.segment = seg  # type: ignore[assignment]
    kb_base.query_terms = terms  # type: ignore[assignment]
    # jieba's words are words: one no chunk contains counts against the question, like an
    # unknown English word (bigrams across word boundaries are ignored instead).
    kb_search.CJK_RUN = re.compile("(?!)")  # type: ignore[assignment]


def use_rrf() -> None:
    """Order candidates by RRF of their keyword and vector ranks (scores kept for the cut)."""
    original = kb_search.fuse

    def fuse(candidates: Any, covered: Any, cosines: Any) -> list[kb_search.Scored]:
        scored = original(candidates, covered, cosines)
        keyword = sorted(candidates, key=lambda c: -covered.get(c, 0.0))
        rankings = [keyword]
        if cosines:
            rankings.append(sorted(cosines, key=lambda c: -cosines[c]))
        fused = kb_search.rrf(rankings)
        return sorted(scored, key=lambda s: -fused.get(s.chunk_id, 0.0))

    kb_base.fuse = fuse  # type: ignore[assignment]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    questions = load_questions(args.questions)
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite+aiosqlite:///{tmp}/bench.db"
        repo = SqlRepository(url)
        await repo.start()
        loader = None
        if args.embedding_model:
            from llm.embeddings import load_embedder

            model = args.embedding_model

            def loader() -> Any:
                return load_embedder(model, tmp, threads=args.threads)

        settings = KnowledgeSettings(
            sources=[SourceSettings(path=str(args.handbook))], embedding_model="", min_score=0.0
        )
        kb = KnowledgeBase(settings, repo.db, load_embedder=loader)
        started = time.perf_counter()
        report = await kb.sync()
        sync_seconds = time.perf_counter() - started
        rows = []
        started = time.perf_counter()
        for q in questions:
            hits = await kb.retrieve(q.text, limit=3)
            rows.append((q, [h.location for h in hits], hits[0].score if hits else 0.0))
        search_ms = (time.perf_counter() - started) / len(questions) * 1000
        await kb.close()
        await repo.close()
    result: dict[str, Any] = {
        "chunks": report.chunks,
        "sync_s": round(sync_seconds, 1),
        "search_ms": round(search_ms, 1),
    }
    for lang in ("en", "zh"):
        answerable = [r for r in rows if r[0].answerable and r[0].lang == lang]
        if answerable:
            hit1 = sum(r[1][:1] == [r[0].source] for r in answerable)
            hit3 = sum(r[0].source in r[1] for r in answerable)
            result[f"{lang}_hit1"] = f"{hit1}/{len(answerable)}"
            result[f"{lang}_hit3"] = f"{hit3}/{len(answerable)}"
    sweep: dict[str, dict[float, tuple[int, int]]] = {"en": {}, "zh": {}}
    for lang, by_t in sweep.items():
        for t in (0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55):
            mine = [r for r in rows if r[0].lang == lang]
            kept = sum(
                1 for q, locs, s in mine if q.answerable and s >= t and locs[:1] == [q.source]
            )
            refused = sum(1 for q, _, s in mine if not q.answerable and s < t)
            by_t[t] = (kept, refused)
    for lang in ("en", "zh"):
        result[f"{lang} answerable/unanswerable"] = (
            sum(q.answerable for q, _, _ in rows if q.lang == lang),
            sum(not q.answerable for q, _, _ in rows if q.lang == lang),
        )
    for lang, by_t in sweep.items():
        result[f"{lang} sweep (kept right, refused)"] = by_t
    result["scores"] = {
        "answerable": sorted(round(s, 2) for q, _, s in rows if q.answerable)[:8],
        "unanswerable": sorted(round(s, 2) for q, _, s in rows if not q.answerable),
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--handbook", type=Path, default=ROOT / "bench/data/handbook")
    parser.add_argument("--questions", type=Path, default=ROOT / "bench/data/questions.toml")
    parser.add_argument("--embedding-model", default="")
    parser.add_argument("--database-url", default="")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--segmentation", choices=["bigram", "jieba"], default="bigram")
    parser.add_argument("--ranking", choices=["fused", "rrf"], default="fused")
    args = parser.parse_args()
    if args.segmentation == "jieba":
        use_jieba()
    if args.ranking == "rrf":
        use_rrf()
    result = asyncio.run(run(args))
    label = f"{args.segmentation}, {args.ranking}, " + (
        Path(args.embedding_model).name if args.embedding_model else "keyword only"
    )
    print(label)
    for key, value in result.items():
        print(f"  {key}: {value}")


if __name__ == "__main__":
    main()
