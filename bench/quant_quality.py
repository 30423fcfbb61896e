"""What a quantization costs in answers: the same plain questions, greedy, on two GGUFs.

    .venv/bin/python bench/quant_quality.py MODEL_A.gguf MODEL_B.gguf [--max-tokens 48]

Each question has short expected answers (any one counts, case-insensitive); a model scores
the questions whose greedy answer contains one. The figure to compare is the two scores and
how many answers are word for word the same: a smaller quantization that drops a few points
is visible here, while speed is bench/engine.py's business.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.config import EngineSettings
from llm.base import ChatMessage, GenerationRequest
from llm.llama_engine import LlamaCppEngine

SYSTEM = "You are a helpful assistant. Answer in one short sentence."
QUESTIONS: list[tuple[str, tuple[str, ...]]] = [
    ("What is the capital of France?", ("paris",)),
    ("What is the capital of Japan?", ("tokyo",)),
    ("What is the capital of Australia?", ("canberra",)),
    ("What is the capital of Canada?", ("ottawa",)),
    ("What is the largest planet in the solar system?", ("jupiter",)),
    ("Which planet is known as the Red Planet?", ("mars",)),
    ("What is the chemical symbol for gold?", ("au",)),
    ("What is the chemical formula of water?", ("h2o", "h₂o")),
    ("How many days are there in a leap year?", ("366",)),
    ("How many continents are there on Earth?", ("seven", "7")),
    ("What is 12 times 12?", ("144",)),
    ("What is the square root of 81?", ("9", "nine")),
    ("What is 15 plus 27?", ("42",)),
    ("Who wrote 'Romeo and Juliet'?", ("shakespeare",)),
    ("Who painted the Mona Lisa?", ("leonardo", "da vinci")),
    ("Who developed the theory of relativity?", ("einstein",)),
    ("What gas do plants absorb from the air for photosynthesis?", ("carbon dioxide", "co2")),
    ("At what temperature in Celsius does water boil at sea level?", ("100",)),
    ("What is the longest river in Africa?", ("nile",)),
    ("Which ocean is the largest?", ("pacific",)),
    ("What language is mainly spoken in Brazil?", ("portuguese",)),
    ("What is the currency of the United Kingdom?", ("pound",)),
    ("How many sides does a hexagon have?", ("six", "6")),
    ("What is the freezing point of water in Fahrenheit?", ("32",)),
    ("Which programming language uses indentation to define blocks?", ("python",)),
    ("What does HTTP stand for?", ("hypertext transfer protocol",)),
    ("What does CPU stand for?", ("central processing unit",)),
    ("In which country are the pyramids of Giza?", ("egypt",)),
    ("What is the hardest natural substance?", ("diamond",)),
    ("How many minutes are in an hour?", ("60", "sixty")),
    ("中国的首都是哪里？", ("北京",)),
    ("日本的首都是哪里？", ("东京", "東京")),
    ("一年有几个月？", ("12", "十二")),
    ("水的化学式是什么？", ("h2o", "h₂o")),
    ("太阳系中最大的行星是哪一颗？", ("木星",)),
    ("《红楼梦》的作者是谁？", ("曹雪芹",)),
]


async def answers(model: str, max_tokens: int) -> list[str]:
    settings = EngineSettings(slots=8, context_size=512, max_tokens=max_tokens)
    engine = LlamaCppEngine(settings, model=model, state_cache_mb=0)
    await engine.start()
    try:

        async def ask(question: str) -> str:
            request = GenerationRequest(
                [ChatMessage("system", SYSTEM), ChatMessage("user", question)],
                temperature=0.0,
            )
            return "".join([c.text async for c in engine.stream(request)])

        return list(await asyncio.gather(*(ask(q) for q, _ in QUESTIONS)))
    finally:
        await engine.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs=2)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--show", action="store_true", help="print every answer")
    args = parser.parse_args()
    results = [asyncio.run(answers(m, args.max_tokens)) for m in args.models]
    scores = [0, 0]
    for index, (question, expected) in enumerate(QUESTIONS):
        marks = []
        for side in (0, 1):
            right = any(e in results[side][index].lower() for e in expected)
            scores[side] += right
            marks.append("+" if right else "-")
        if args.show or marks[0] != marks[1]:
            print(f"{''.join(marks)} {question}")
            for side in (0, 1):
                print(f"     {side}: {results[side][index].strip()[:150]!r}")
    same = sum(a.strip() == b.strip() for a, b in zip(*results, strict=True))
    for side, model in enumerate(args.models):
        print(f"{Path(model).name}: {scores[side]}/{len(QUESTIONS)} right")
    print(f"word-for-word the same answer: {same}/{len(QUESTIONS)}")


if __name__ == "__main__":
    main()
