"""Which sources an answer shows, what a follow-up searches for, and the /sources and /kb
texts: the pure parts of grounded answering (end to end: test_grounded_answers.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from bot.grounding import NO_SOURCES, cited, kb_status_text, retrieval_query, sources_text
from bot.i18n import english
from bot.types import Source
from storage.base import Turn

EN = english()
SOURCES = [Source(n, f"Doc {n}", f"doc{n}.md", text=f"text {n}") for n in (1, 2, 3)]


def turn(question: str, answer: str = "a", sources: tuple[Source, ...] = ()) -> Turn:
    return Turn("u", question, answer, "complete", 0, 0, datetime.now(UTC), sources)


def test_an_answer_shows_what_it_cites_else_everything_it_was_given() -> None:
    assert cited("Hotels cost 180 EUR [2], trains [3].", SOURCES) == SOURCES[1:]
    assert cited("上海的酒店每晚九百元【1】，火车［3］。", SOURCES) == [SOURCES[0], SOURCES[2]]
    assert cited("No citation at all.", SOURCES) == SOURCES
    assert cited("Made up [7] and [0].", SOURCES) == SOURCES  # no valid number: all
    assert cited("anything [1]", []) == []


def test_a_follow_up_searches_with_the_previous_question() -> None:
    assert retrieval_query("and in Oslo?", []) == "and in Oslo?"
    history = [turn("first"), turn("What is the hotel limit?")]
    assert retrieval_query("and in Oslo?", history) == "What is the hotel limit?\nand in Oslo?"


def test_sources_text_lists_the_passages_and_marks_the_cited_ones() -> None:
    assert sources_text(None, EN) == NO_SOURCES
    assert sources_text(turn("q"), EN) == NO_SOURCES
    text = sources_text(turn("q", "see [2]", tuple(SOURCES)), EN)
    assert text.count("(cited)") == 1 and "[2] Doc 2 (doc2.md, 0.000) (cited)" in text
    assert "> text 3" in text


@dataclass
class Status:
    documents: int = 12
    chunks: int = 40
    last_sync: datetime | None = None
    errors: list[tuple[str, str]] = field(default_factory=list)


def test_kb_status_text_shows_size_last_sync_and_the_first_errors() -> None:
    assert kb_status_text(Status(), EN) == (
        "Knowledge base: 12 documents · 40 chunks · last sync never · 0 errors"
    )
    errors = [(f"bad{i}.pdf", "encrypted") for i in range(7)]
    text = kb_status_text(
        Status(last_sync=datetime(2026, 12, 1, 9, 30, tzinfo=UTC), errors=errors), EN
    )
    assert "last sync 2026-12-01 09:30 UTC · 7 errors" in text
    assert "• bad0.pdf: encrypted" in text and "… and 2 more" in text
