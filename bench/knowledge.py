"""Knowledge-base benchmark on the handbook the project ships (bench/data/): does it help?

    .venv/bin/python bench/knowledge.py [--model PATH] [--embedding PATH] [--max-tokens 64]
                                        [--patience 5] [--only sync,retrieval,answers]
                                        [--json PATH]

bench/data/handbook/ is a fictional company's handbook (15 documents: Markdown, plain
text, HTML, PDF, DOCX; three in Chinese) and bench/data/questions.toml asks 69 questions of
it: 59 with the fact the answer must contain and the document it comes from (10 in Chinese,
two follow-ups asked in the same thread), 10 the handbook does not answer.

Everything runs through the real code: the index is built and searched through
`knowledge.base.KnowledgeBase` (keyword only, vectors only and fused, asked of the code),
answers come from the bot itself (`python -m bot run`, the browser chat, the real llama.cpp
engine, greedy decoding) asked over its HTTP API like bench/load.py does, with the answer
and its sources read back from GET /api/history. It prints:

- sync: a full sync of the handbook into an empty index, then a sync with nothing changed;
- retrieval hit@1 / hit@3 (the expected document among the first 1 / 3 passages);
- answers that contain the expected fact, answers whose sources show the expected document
  (and those citing it with an explicit [n]), abstention on the unanswerable questions and
  false abstention on the answerable ones;
- time to first visible token of grounded answers beside plain answers (a second bot with no
  knowledge base, same model and settings) to the same questions, asked in alternation so
  both see the same machine; the ratio is taken per pair, then its median.

Machine noise: before each question pair it waits (up to --patience s) for a quiet second,
and it reports how much CPU other processes took while the pairs ran; the two bots never run
at once. The figures are ratios or counts, not absolute speeds, except the sync times.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.knowledge_answers import AnswerRun, measure_answers, paired_questions
from bench.knowledge_index import (
    RetrievalRun,
    SyncRun,
    bench_settings,
    measure_retrieval,
    measure_sync,
    same_prompts,
)
from bench.knowledge_questions import HANDBOOK, Question, load_questions

DEFAULT_MODEL = "/root/.cache/edgeqa-models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
DEFAULT_EMBEDDING = "/work/shared/models/all-minilm-l6-v2-q8_0.gguf"
COLLECTION = "handbook"


def config_toml(args: argparse.Namespace, *, knowledge: bool) -> str:
    """The bot's edgeqa.toml: greedy decoding; the handbook as the only source or none."""
    lines = ["[engine]", "temperature = 0.0", "seed = 1", ""]
    if knowledge:
        lines += [
            "[knowledge]",
            f"embedding_model = {json.dumps(str(args.embedding))}",
            "",
            "[[knowledge.sources]]",
            f"path = {json.dumps(str(HANDBOOK))}",
            f"collection = {json.dumps(COLLECTION)}",
            "",
        ]
    return "\n".join(lines)


def pct(part: int, whole: int) -> str:
    return f"{part}/{whole} = {100 * part / whole:.0f}%" if whole else "-"


def report(
    questions: list[Question],
    sync: SyncRun | None,
    retrieval: RetrievalRun | None,
    answers: AnswerRun | None,
) -> None:
    answerable = [q for q in questions if q.answerable]
    chinese = [q for q in answerable if q.lang == "zh"]
    print()
    print(
        f"questions: {len(questions)} ({len(answerable)} answerable, {len(chinese)} of them "
        f"Chinese; {len(questions) - len(answerable)} the handbook does not answer)"
    )
    if sync is not None:
        print(
            f"sync: full {sync.full:.2f} s ({sync.documents} documents, {sync.chunks} chunks, "
            f"{len(sync.errors)} unreadable; embedding model loaded first, in "
            f"{sync.embedder_load:.2f} s); no change: median {statistics.median(sync.again):.3f}"
            f" s of {len(sync.again)} (target < 1 s)"
        )
        for location, reason in sync.errors:
            print(f"  unreadable: {location}: {reason}")
    if retrieval is not None:
        print("retrieval (expected document among the first passages; answerable questions):")
        print(f"  {'mode':<14}{'hit@1':>16}{'hit@3':>16}{'zh hit@3':>16}")
        for mode, ranks in retrieval.ranks.items():
            zh = [ranks[q.id] for q in chinese]
            all_ranks = [ranks[q.id] for q in answerable]
            print(
                f"  {mode:<14}{pct(sum(r == 1 for r in all_ranks), len(all_ranks)):>16}"
                f"{pct(sum(0 < r <= 3 for r in all_ranks), len(all_ranks)):>16}"
                f"{pct(sum(0 < r <= 3 for r in zh), len(zh)):>16}"
            )
        print(f"  (target: fused hit@3 >= 90%) {retrieval.note}")
        for line in retrieval.misses():
            print("  " + line)
    if answers is not None:
        answers.report(questions)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path(DEFAULT_MODEL))
    parser.add_argument("--embedding", type=Path, default=Path(DEFAULT_EMBEDDING))
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument(
        "--patience",
        type=float,
        default=5.0,
        help="seconds to wait for a quiet machine before each question pair",
    )
    parser.add_argument(
        "--pairs",
        type=int,
        default=1000,
        help="at most this many questions also asked of the plain bot (the TTFT ratio)",
    )
    parser.add_argument("--threads", type=int, help="engine.threads (default: auto)")
    parser.add_argument("--only", default="sync,retrieval,answers")
    parser.add_argument("--json", type=Path, help="write every answer and figure here")
    parser.add_argument("--ids", help="only these question ids, comma separated (smoke runs)")
    args = parser.parse_args()
    args.slots, args.max_queue = None, None  # bench.load.Bot's other knobs: the defaults
    for path in (args.model, args.embedding):
        if not path.is_file():
            sys.exit(f"no model at {path}")
    parts = set(args.only.split(","))
    questions = load_questions()
    if args.ids:
        wanted = set(args.ids.split(","))
        wanted |= {q.follows for q in questions if q.id in wanted and q.follows}
        questions = [q for q in questions if q.id in wanted]
    print(
        f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; model "
        f"{args.model.name}; embeddings {args.embedding.name}; max_tokens {args.max_tokens}"
    )
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    with tempfile.TemporaryDirectory(prefix="edgeqa-kb-bench-") as tmp:
        grounded_dir, plain_dir = Path(tmp, "grounded"), Path(tmp, "plain")
        for folder, knowledge in ((grounded_dir, True), (plain_dir, False)):
            folder.mkdir()
            (folder / "edgeqa.toml").write_text(config_toml(args, knowledge=knowledge))
        # The bench.load.Bot keeps its database in <workdir>/load.db: the index built here
        # is the one the grounded bot answers from (its own start-up sync finds no change).
        url = f"sqlite+aiosqlite:///{grounded_dir / 'load.db'}"
        settings = bench_settings(grounded_dir / "edgeqa.toml", url, args.model, args.max_tokens)
        sync: SyncRun | None = None
        retrieval: RetrievalRun | None = None
        answers: AnswerRun | None = None
        sync = await measure_sync(settings)  # always: the other parts need the index
        if "retrieval" in parts:
            retrieval = await measure_retrieval(settings, questions)
        if "answers" in parts:
            paired = paired_questions(questions, args.pairs)
            args.same_prompts = await same_prompts(settings, paired)
            timeout = aiohttp.ClientTimeout(total=None, sock_read=900)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                answers = await measure_answers(args, session, questions, grounded_dir, plain_dir)
        report(questions, sync if "sync" in parts else None, retrieval, answers)
        if args.json:
            payload: dict[str, Any] = {
                "sync": sync.as_dict() if sync else None,
                "retrieval": retrieval.as_dict() if retrieval else None,
                "answers": answers.as_dict() if answers else None,
            }
            args.json.write_text(json.dumps(payload, ensure_ascii=False, indent=1))
    return 1 if answers is not None and answers.errors else 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):
        started = time.monotonic()
        code = asyncio.run(main())
        print(f"(bench took {time.monotonic() - started:.0f} s)")
        sys.exit(code)
