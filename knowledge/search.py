"""Scoring retrieval candidates: one relevance number that also says "nothing relevant".

Rank fusion (RRF) orders candidates well but its scores are ranks: the best chunk of an
unrelated index scores as high as the best chunk of a perfect one. So each candidate gets
two pieces of absolute evidence, each in [0, 1]:

- keyword coverage: the share of the question's words the chunk contains, each word
  weighted by its BM25 inverse document frequency in the index (a rare word such as
  "Singapore" counts for much more than "policy"; words the database ignores, such as
  English stop words on PostgreSQL, count for nothing). A Latin-script word no chunk
  contains counts against every chunk: a question about "Mars" is not covered by a
  document that only matches "office". A CJK bigram no chunk contains is ignored: most
  are pairs across word boundaries ("的地"), artefacts of segmenting the question.
- vector similarity: the cosine between question and chunk embeddings, rescaled so the
  embedding model's level for unrelated text maps to 0 (`SIM_FLOOR`).

The fused score is their mean (coverage alone without an embedding model), and
`knowledge.min_score` is a floor on it: a passage below it does not count, and a question
whose best passage is below it is not covered by the documents. Candidates are ordered by
the fused score too; bench/kb_fusion.py compares that with RRF (figures in the README).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from knowledge.segment import CJK_RUN

RRF_K = 60
SIM_FLOOR = 0.15
"""Cosine at or below which a chunk counts as unrelated (measured on MiniLM: unrelated
question/chunk pairs mostly fall between 0 and 0.2, answering ones above 0.4)."""


@dataclass(frozen=True, slots=True)
class Scored:
    chunk_id: int
    coverage: float
    similarity: float | None  # None without an embedding model
    score: float


def idf(total: int, df: int) -> float:
    """BM25's inverse document frequency (never negative)."""
    return math.log(1 + (total - df + 0.5) / (df + 0.5))


def coverage(
    terms: Sequence[str], total: int, df: Mapping[str, int], hits: Mapping[str, set[int]]
) -> dict[int, float]:
    """Each candidate's idf-weighted share of the question's words."""
    weights: dict[str, float] = {}
    for term in terms:
        if term not in df:
            continue  # the database ignores it
        if df[term] == 0 and CJK_RUN.fullmatch(term):
            continue  # a bigram across CJK words
        # A word no chunk has weighs like the rarest word there is (df 1), not more: in a
        # small index that would drown every word the chunk does have.
        weights[term] = idf(total, max(df[term], 1))
    whole = sum(weights.values())
    found: dict[int, float] = {}
    if whole <= 0:
        return found
    for term, weight in weights.items():
        for chunk in hits.get(term, ()):
            found[chunk] = found.get(chunk, 0.0) + weight / whole
    return found


def rescale_similarity(cosine: float) -> float:
    return max(0.0, min(1.0, (cosine - SIM_FLOOR) / (1 - SIM_FLOOR)))


def fuse(
    candidates: Sequence[int],
    covered: Mapping[int, float],
    cosines: Mapping[int, float] | None,
) -> list[Scored]:
    """Fused scores of `candidates`, best first."""
    scored = []
    for chunk in candidates:
        cov = covered.get(chunk, 0.0)
        if cosines is None:
            scored.append(Scored(chunk, cov, None, cov))
        else:
            cos = cosines.get(chunk, 0.0)
            scored.append(Scored(chunk, cov, cos, (cov + rescale_similarity(cos)) / 2))
    scored.sort(key=lambda s: (-s.score, s.chunk_id))
    return scored


def rrf(rankings: Sequence[Sequence[int]]) -> dict[int, float]:
    """Reciprocal rank fusion of several best-first rankings (for comparison in bench/)."""
    fused: dict[int, float] = {}
    for ranking in rankings:
        for rank, chunk in enumerate(ranking):
            fused[chunk] = fused.get(chunk, 0.0) + 1 / (RRF_K + rank + 1)
    return fused
