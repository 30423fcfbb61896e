"""History under a token budget: oldest turns go first, the question never."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from bot.prompt import CUT_MARKER, build_prompt
from llm.base import ChatMessage
from storage.base import Turn


def count(messages: Sequence[ChatMessage]) -> int:
    """A deterministic stand-in tokenizer: one token per word plus 3 per message. Like some
    chat templates (Qwen's), it refuses an empty conversation."""
    if not messages:
        raise ValueError("the template reads messages[0]")
    return sum(3 + len(m.content.split()) for m in messages)


def turn(i: int, words: int = 10, status: str = "complete") -> Turn:
    return Turn(
        user_id="u",
        question=f"question{i} " + "q " * words,
        answer=f"answer{i} " + "a " * words,
        status=status,  # type: ignore[arg-type]
        prompt_tokens=0,
        completion_tokens=0,
        created_at=datetime.now(UTC),
    )


def test_everything_fits_under_a_large_budget() -> None:
    history = [turn(i) for i in range(3)]
    prompt = build_prompt("Be brief.", history, "new question", budget=10_000, count=count)
    assert [m.role for m in prompt.messages] == ["system"] + ["user", "assistant"] * 3 + ["user"]
    assert prompt.messages[-1].content == "new question"
    assert prompt.tokens == count(prompt.messages)
    assert (prompt.turns_used, prompt.turns_dropped, prompt.question_cut) == (3, 0, False)


def test_oldest_turns_are_dropped_first() -> None:
    history = [turn(i) for i in range(10)]  # each turn costs ~30 tokens
    prompt = build_prompt("Be brief.", history, "new question", budget=100, count=count)
    assert prompt.tokens <= 100
    kept = [m.content.split()[0] for m in prompt.messages if m.role == "user"][:-1]
    assert kept == [f"question{i}" for i in range(10 - len(kept), 10)]
    assert prompt.turns_dropped == 10 - len(kept) > 0


def test_unfinished_turns_are_not_context() -> None:
    history = [
        turn(0),
        turn(1, status="error"),
        turn(2, status="interrupted"),
        turn(3, status="stopped"),
    ]
    prompt = build_prompt("", history, "q", budget=10_000, count=count)
    users = [m.content.split()[0] for m in prompt.messages if m.role == "user"]
    assert users == ["question0", "question3", "q"]


def test_a_question_longer_than_the_window_is_cut_in_the_middle() -> None:
    question = "START " + "word " * 5000 + "END?"
    prompt = build_prompt("Be brief.", [turn(0)], question, budget=500, count=count)
    asked = prompt.messages[-1].content
    assert prompt.question_cut
    assert prompt.tokens <= 500
    assert asked.startswith("START") and asked.endswith("END?")
    assert CUT_MARKER in asked
    assert prompt.turns_used == 0  # no room left for history
