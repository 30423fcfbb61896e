"""Building the prompt for one question under a token budget.

The budget covers the system prompt, the history and the question. Oldest turns go first;
the question is never dropped — if it alone is too long, its middle is cut and the user is
told, because the start usually says what it is and the end usually asks the question.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from llm.base import ChatMessage
from storage.base import Turn

CUT_MARKER = "\n[… part of this message was cut to fit the model's context …]\n"
USABLE_STATUSES = ("complete", "stopped")

TokenCounter = Callable[[Sequence[ChatMessage]], int]


@dataclass(frozen=True, slots=True)
class Prompt:
    messages: list[ChatMessage]
    tokens: int
    turns_used: int
    turns_dropped: int
    question_cut: bool


def build_prompt(
    system_prompt: str,
    history: Sequence[Turn],
    question: str,
    *,
    budget: int,
    count: TokenCounter,
) -> Prompt:
    system = [ChatMessage("system", system_prompt)] if system_prompt else []
    question_msg, cut = _fit_question(system, question, budget, count)
    fixed = count([*system, question_msg])

    turns = [t for t in history if t.status in USABLE_STATUSES and t.answer]
    # Templates may not accept an empty list (Qwen's reads messages[0]), so a pair's cost is
    # measured next to the system prompt; without one it includes the template's overhead.
    system_cost = count(system) if system else 0
    chosen: list[list[ChatMessage]] = []
    spent = fixed
    for turn in reversed(turns):
        pair = [ChatMessage("user", turn.question), ChatMessage("assistant", turn.answer)]
        cost = count([*system, *pair]) - system_cost
        if spent + cost > budget:
            break
        chosen.append(pair)
        spent += cost
    chosen.reverse()

    # Per-pair costs are estimates (templates join messages); confirm with one exact count.
    while True:
        messages = [*system, *(m for pair in chosen for m in pair), question_msg]
        tokens = count(messages)
        if tokens <= budget or not chosen:
            break
        chosen.pop(0)
    return Prompt(messages, tokens, len(chosen), len(turns) - len(chosen), cut)


def _fit_question(
    system: list[ChatMessage], question: str, budget: int, count: TokenCounter
) -> tuple[ChatMessage, bool]:
    whole = ChatMessage("user", question)
    if count([*system, whole]) <= budget:
        return whole, False
    # Binary search on how many characters to keep.
    low, high = 0, len(question)
    best = ChatMessage("user", CUT_MARKER.strip())
    while low <= high:
        keep = (low + high) // 2
        candidate = ChatMessage("user", cut_middle(question, keep))
        if count([*system, candidate]) <= budget:
            best, low = candidate, keep + 1
        else:
            high = keep - 1
    return best, True


def cut_middle(text: str, keep: int) -> str:
    """Keep `keep` characters of `text`: two thirds from the start, one third from the end,
    with CUT_MARKER between them. Text that fits is returned as it is."""
    if len(text) <= keep:
        return text
    head = keep * 2 // 3
    return text[:head] + CUT_MARKER + text[len(text) - (keep - head) :]
