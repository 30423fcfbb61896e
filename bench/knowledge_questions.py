"""The knowledge benchmark's questions and how an answer is judged against them.

Kept apart from bench/knowledge.py (which drives the bot) so the judging rules can be read
and checked on their own: what counts as "the answer contains the fact", as "abstained" and
as "cited the right source".
"""

from __future__ import annotations

import re
import tomllib
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parent / "data"
HANDBOOK = DATA / "handbook"
QUESTIONS = DATA / "questions.toml"

# Digits grouped by a comma, a (narrow) no-break space or a space: "1,850", "24 500".
_THOUSANDS = re.compile(r"(?<=\d)[,\u00a0\u202f ](?=\d{3}(?!\d))")
_DASHES = re.compile(r"[-\u2010\u2011\u2012\u2013\u2014_]")
_SPACE = re.compile(r"\s+")
_CITATION = re.compile(r"\[(\d{1,3})\]")

# How a model says the documents do not answer (English and Chinese); the bot's own
# "not in the docs" reply (retrieval found nothing) is matched by its text in knowledge.py.
ABSTAIN_PHRASES = (
    "do not contain",
    "does not contain",
    "don't contain",
    "doesn't contain",
    "do not mention",
    "does not mention",
    "don't mention",
    "doesn't mention",
    "not mentioned",
    "do not specify",
    "does not specify",
    "doesn't specify",
    "don't specify",
    "not specified",
    "do not provide",
    "does not provide",
    "doesn't provide",
    "don't provide",
    "not provided",
    "no information",
    "not covered",
    "don't cover",
    "do not cover",
    "doesn't cover",
    "does not cover",
    "not in the documents",
    "cannot find",
    "can't find",
    "could not find",
    "couldn't find",
    "i don't know",
    "unable to find",
    "not available in",
    "没有提到",
    "没有提及",
    "未提及",
    "未提到",
    "没有相关",
    "没有找到",
    "未找到",
    "没有包含",
    "不包含",
    "没有说明",
    "未说明",
    "无法回答",
    "无法找到",
    "没有关于",
    "没有涉及",
    "未涉及",
)


@dataclass(frozen=True, slots=True)
class Question:
    id: str
    text: str
    lang: str
    facts: tuple[str, ...]  # alternatives: any one in the answer counts
    source: str  # path under handbook/ ("" for an unanswerable question)
    follows: str = ""  # asked in the same thread right after this question
    standalone: str = ""  # a follow-up spelled out in full

    @property
    def answerable(self) -> bool:
        return bool(self.facts)


def load_questions(path: Path = QUESTIONS) -> list[Question]:
    """The questions in file order (a follow-up comes after the question it follows)."""
    raw: list[Mapping[str, Any]] = tomllib.loads(path.read_text(encoding="utf-8"))["question"]
    questions: list[Question] = []
    seen: set[str] = set()
    for item in raw:
        answerable = bool(item.get("answerable", True))
        question = Question(
            id=str(item["id"]),
            text=str(item["question"]),
            lang=str(item.get("lang", "en")),
            facts=tuple(str(f) for f in item.get("facts", ())) if answerable else (),
            source=str(item.get("source", "")) if answerable else "",
            follows=str(item.get("follows", "")),
            standalone=str(item.get("standalone", "")),
        )
        if question.id in seen:
            raise ValueError(f"{path}: question id {question.id} appears twice")
        if answerable and not (question.facts and question.source):
            raise ValueError(f"{path}: {question.id} needs facts and a source")
        if question.follows and question.follows not in seen:
            raise ValueError(f"{path}: {question.id} follows {question.follows}, not before it")
        if answerable and not (HANDBOOK / question.source).is_file():
            raise ValueError(f"{path}: {question.id}'s source {question.source} does not exist")
        seen.add(question.id)
        questions.append(question)
    return questions


def normalise(text: str) -> str:
    """Case, width, thousands separators, dashes and spacing do not matter."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = _THOUSANDS.sub("", text)
    text = _DASHES.sub("", text)
    return _SPACE.sub("", text)


def contains_fact(answer: str, facts: Iterable[str]) -> bool:
    flat = normalise(answer)
    return any(normalise(fact) in flat for fact in facts)


def abstains(answer: str, *, bot_reply: str = "") -> bool:
    """The answer says the documents do not answer the question (or the bot said so)."""
    if bot_reply and answer.strip() == bot_reply.strip():
        return True
    lowered = unicodedata.normalize("NFKC", answer).casefold().replace("’", "'")
    return any(phrase in lowered for phrase in ABSTAIN_PHRASES)


def shown_right_source(sources: Sequence[Mapping[str, Any]], expected: str) -> bool:
    """The sources shown under the answer include the expected document."""
    return any(str(s.get("location", "")) == expected for s in sources)


def cited_right_source(answer: str, sources: Sequence[Mapping[str, Any]], expected: str) -> bool:
    """The answer's own [n] marks point at a passage of the expected document."""
    numbers = {int(n) for n in _CITATION.findall(answer)}
    return any(
        int(s.get("number", 0)) in numbers and str(s.get("location", "")) == expected
        for s in sources
    )
