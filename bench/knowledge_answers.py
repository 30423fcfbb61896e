"""The answer half of bench/knowledge.py: two bot processes asked over the browser chat.

The grounded bot answers from the handbook; the plain bot (same model, same settings, no
knowledge base) answers the same answerable questions, each right after the grounded one,
so the time-to-first-token ratio compares prompts with and without passages on the same
machine moment. Answers and their sources are read back from GET /api/history, the same
record a user's page shows.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.knowledge_questions import (
    Question,
    abstains,
    cited_right_source,
    contains_fact,
    shown_right_source,
)
from bench.load import Bot, Conversation, converse
from bench.noise import CpuWatch, wait_until_quiet
from bot.service import NOT_IN_DOCS  # the bot's reply when retrieval finds nothing

BROWSER = "kbbench-browser"
NOISY = 0.25  # cores other processes took during a pair that make its timing doubtful


@dataclass
class Answer:
    id: str
    answer: str = ""
    sources: list[dict[str, Any]] = field(default_factory=list)
    tokens: int = 0
    first_token: float | None = None  # seconds from the POST to the first visible text
    plain_answer: str = ""
    plain_tokens: int = 0
    plain_first_token: float | None = None
    # The plain bot asked the grounded bot's whole user message (passages pasted in).
    long_answer: str = ""
    long_first_token: float | None = None
    others_cpu: float = 0.0
    error: str = ""

    @property
    def bot_abstained(self) -> bool:
        """Retrieval found nothing: the bot said so without asking the model."""
        return self.answer.strip().startswith(NOT_IN_DOCS[:40])


@dataclass
class AnswerRun:
    answers: dict[str, Answer]
    max_tokens: int

    @property
    def errors(self) -> list[Answer]:
        return [a for a in self.answers.values() if a.error]

    def as_dict(self) -> dict[str, Any]:
        answers = [asdict(a) for a in self.answers.values()]
        return {"max_tokens": self.max_tokens, "answers": answers}

    def verdicts(self, q: Question) -> dict[str, bool]:
        a = self.answers[q.id]
        abstained = abstains(a.answer, bot_reply=NOT_IN_DOCS) or a.bot_abstained
        if not q.answerable:
            return {"abstained": abstained}
        fact = contains_fact(a.answer, q.facts)
        return {
            "fact": fact,
            "shown": shown_right_source(a.sources, q.source),
            "cited": cited_right_source(a.answer, a.sources, q.source),
            # An answer that hedges but still gives the fact is not a false abstention.
            "false_abstention": abstained and not fact,
        }

    def report(self, questions: list[Question]) -> None:
        answerable = [q for q in questions if q.answerable]
        unanswerable = [q for q in questions if not q.answerable]
        v = {q.id: self.verdicts(q) for q in questions}

        def count(qs: list[Question], key: str) -> str:
            hits = sum(v[q.id][key] for q in qs)
            return f"{hits}/{len(qs)} = {100 * hits / len(qs):.0f}%" if qs else "-"

        zh = [q for q in answerable if q.lang == "zh"]
        print(f"answers (greedy, max_tokens {self.max_tokens}):")
        print(
            f"  contain the expected fact        {count(answerable, 'fact'):>14}"
            f"   zh {count(zh, 'fact'):>12}   (target >= 75%)"
        )
        print(
            f"  show the right source            {count(answerable, 'shown'):>14}"
            f"   zh {count(zh, 'shown'):>12}   (target >= 85%)"
        )
        print(f"  cite it with an explicit [n]     {count(answerable, 'cited'):>14}")
        print(
            f"  abstain when the docs don't say  {count(unanswerable, 'abstained'):>14}"
            "                     (target >= 80%)"
        )
        print(
            f"  false abstention (answerable)    {count(answerable, 'false_abstention'):>14}"
            "                     (target <= 10%)"
        )
        bot_said = sum(self.answers[q.id].bot_abstained for q in questions)
        print(f"  (the bot's own 'not in the docs', retrieval found nothing: {bot_said})")
        self._report_timing(answerable)
        print("failures:")
        for q in questions:
            a, verdict = self.answers[q.id], v[q.id]
            wrong: list[str] = [k for k in ("fact", "shown") if k in verdict and not verdict[k]]
            if not q.answerable and not verdict["abstained"]:
                wrong = ["answered"]
            if wrong or a.error:
                where = ", ".join(sorted({str(s.get("location")) for s in a.sources})) or "-"
                text = " ".join(a.answer.split())[:160]
                print(f"  {q.id} [{' '.join(wrong) or a.error}] sources: {where}")
                print(f"      {text!r}")

    def _report_timing(self, answerable: list[Question]) -> None:
        paired = [
            a
            for q in answerable
            if (a := self.answers[q.id]).first_token is not None
            and a.plain_first_token is not None
            and a.long_first_token is not None
            and not a.bot_abstained
        ]
        if not paired:
            print("time to first token: no pairs measured")
            return

        def median(values: list[float]) -> float:
            return statistics.median(values)

        grounded = median([a.first_token or 0 for a in paired])
        print(f"time to first token, {len(paired)} questions: grounded median {grounded:.2f} s")
        for label, attr in (
            ("plain, same prompt length (the grounded message pasted in)", "long_first_token"),
            ("plain, same question (no passages)", "plain_first_token"),
        ):
            plain = median([getattr(a, attr) for a in paired])
            ratio = median([(a.first_token or 0) / getattr(a, attr) for a in paired])
            quiet = [a for a in paired if a.others_cpu <= NOISY]
            quiet_note = ""
            if quiet and len(quiet) < len(paired):
                calm = median([(a.first_token or 0) / getattr(a, attr) for a in quiet])
                quiet_note = f"; {len(quiet)} on a quiet machine: {calm:.2f}x"
            print(
                f"  {label}: median {plain:.2f} s; grounded/plain per question, median "
                f"{ratio:.2f}x{quiet_note}"
            )
        tokens = median([a.tokens for a in paired])
        plain_tokens = median([a.plain_tokens for a in paired])
        others = median([a.others_cpu for a in paired])
        print(
            f"  (target: grounded <= 2x plain); answer lengths, median tokens: grounded "
            f"{tokens:.0f}, plain {plain_tokens:.0f}; other processes used {others:.2f} cores"
        )


def paired_questions(questions: list[Question], pairs: int) -> list[Question]:
    """The questions also asked of the plain bot (--pairs of them, spread over the file)."""
    candidates = [q for q in questions if q.answerable and not q.follows]
    step = max(1.0, len(candidates) / max(1, pairs))
    return [candidates[int(i * step)] for i in range(min(pairs, len(candidates)))]


async def ask(
    session: aiohttp.ClientSession, bot: Bot, thread: str, text: str
) -> tuple[Conversation, dict[str, Any]]:
    """One question in `thread`, read to its end; then its stored turn from /api/history."""
    base = f"http://127.0.0.1:{bot.port}"
    conv = Conversation(browser=BROWSER, thread=thread, question=text)
    opened, go = asyncio.Event(), asyncio.Event()
    go.set()
    await converse(session, base, conv, opened, go)
    turn: dict[str, Any] = {}
    if not conv.error:
        params = {"browser": BROWSER, "thread": thread}
        async with session.get(f"{base}/api/history", params=params) as response:
            turns = (await response.json())["turns"]
        turn = turns[-1] if turns else {}
    return conv, turn


async def ask_plain(
    session: aiohttp.ClientSession, bot: Bot, number: int, short: str, long: str, a: Answer
) -> None:
    """The plain bot: the bare question, then the grounded bot's whole message."""
    conv, turn = await ask(session, bot, f"kbplain-{number:03d}", short)
    a.plain_answer, a.plain_first_token = conv.final, conv.first_visible
    a.plain_tokens = int(turn.get("tokens") or 0)
    a.error = a.error or conv.error
    conv, _ = await ask(session, bot, f"kblong-{number:03d}", long)
    a.long_answer, a.long_first_token = conv.final, conv.first_visible
    a.error = a.error or conv.error


async def measure_answers(
    args: argparse.Namespace,
    session: aiohttp.ClientSession,
    questions: list[Question],
    grounded_dir: Path,
    plain_dir: Path,
) -> AnswerRun:
    grounded, plain = Bot(args, grounded_dir), Bot(args, plain_dir)
    run = AnswerRun({}, args.max_tokens)
    threads: dict[str, str] = {}
    # The plain answers only serve the time-to-first-token ratios.
    long_questions: dict[str, str] = args.same_prompts
    try:
        await grounded.start()
        await plain.start()
        for bot in (grounded, plain):  # the first answer of a process pays for warming up
            await ask(session, bot, "kbbench-warmup", "What is the travel policy?")
        for number, q in enumerate(questions, 1):
            threads[q.id] = threads[q.follows] if q.follows else f"kbbench-{number:03d}"
            await wait_until_quiet(limit=args.patience)
            with CpuWatch() as watch:
                a = Answer(q.id)
                plain_too = q.id in long_questions
                if plain_too and number % 2:  # alternate who goes first: no order bias
                    await ask_plain(session, plain, number, q.text, long_questions[q.id], a)
                conv, turn = await ask(session, grounded, threads[q.id], q.text)
                # The stored answer: what the model wrote (or the bot's "not in the docs").
                a.answer, a.error = str(turn.get("answer") or conv.final), a.error or conv.error
                a.sources = list(turn.get("sources") or [])
                a.tokens = int(turn.get("tokens") or 0)
                a.first_token = conv.first_visible
                if plain_too and not number % 2:
                    await ask_plain(session, plain, number, q.text, long_questions[q.id], a)
            a.others_cpu = watch.others
            run.answers[q.id] = a
            print(
                f"  {number:>2}/{len(questions)} {q.id}: {' '.join(a.answer.split())[:70]!r}",
                flush=True,
            )
    finally:
        await grounded.stop()
        await plain.stop()
    for bot, name in ((grounded, "grounded"), (plain, "plain")):
        for line in bot.errors()[:5]:
            print(f"  {name} bot log: {line}")
    return run
