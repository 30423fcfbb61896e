"""What indexing costs: sync speed, and the speed of an answer written while a sync runs.

    .venv/bin/python bench/kb_sync.py --model CHAT.gguf --embedding-model EMBED.gguf
        [--handbook DIR] [--copies 6] [--rounds 3] [--tokens 96]

(a) a first sync of `copies` copies of the handbook, keyword only and with embeddings
    (files/s, chunks/s), and a second sync with nothing changed;
(b) one answer's decoding speed (tokens/s after its first token) alone, during a sync
    that yields to answers (the bot's setting), and during a sync that does not; rounds
    alternate so load from elsewhere on the machine hits all three alike. Figures are
    ratios against the answer alone in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bot.config import EngineSettings  # noqa: E402
from knowledge.base import KnowledgeBase  # noqa: E402
from knowledge.config import KnowledgeSettings, SourceSettings  # noqa: E402
from llm.base import ChatMessage, GenerationRequest  # noqa: E402
from llm.embeddings import load_embedder  # noqa: E402
from llm.llama_engine import LlamaCppEngine  # noqa: E402
from llm.tokens import chat_token_counter  # noqa: E402
from storage.sql import SqlRepository  # noqa: E402


def corpus(handbook: Path, copies: int, into: Path) -> Path:
    for i in range(copies):
        shutil.copytree(handbook, into / f"copy{i}")
        for path in (into / f"copy{i}").rglob("*.md"):  # distinct content, distinct hashes
            path.write_text(path.read_text(encoding="utf-8") + f"\n\nCopy {i}.\n")
    return into


async def answer_speed(engine: LlamaCppEngine, tokens: int, n: int) -> float:
    request = GenerationRequest(
        [ChatMessage("user", f"Write a long story about a lighthouse keeper, part {n}.")],
        conversation_id=f"bench-{n}",
        max_tokens=tokens,
        temperature=0.0,
    )
    stats = None
    async for chunk in engine.stream(request):
        if chunk.done:
            stats = chunk.stats
    assert stats is not None
    return stats.tokens_per_second


async def run(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    engine = LlamaCppEngine(EngineSettings(threads=args.threads), model=args.model)
    await engine.start()
    count = chat_token_counter(Path(args.model))
    embedder = load_embedder(args.embedding_model, "/tmp", threads=1)
    with tempfile.TemporaryDirectory() as tmp:
        docs = corpus(args.handbook, args.copies, Path(tmp) / "docs")
        files = sum(1 for p in docs.rglob("*") if p.is_file())

        async def fresh_kb(name: str, embed: bool, yielding: bool) -> tuple[Any, Any]:
            repo = SqlRepository(f"sqlite+aiosqlite:///{tmp}/{name}.db")
            await repo.start()
            settings = KnowledgeSettings(sources=[SourceSettings(path=str(docs))])
            kb = KnowledgeBase(
                settings,
                repo.db,
                count_tokens=count,
                load_embedder=(lambda: embedder) if embed else None,
                busy=(lambda: engine.stats().active > 0) if yielding else None,
            )
            return repo, kb

        for label, embed in (("keyword only", False), ("with embeddings", True)):
            repo, kb = await fresh_kb(label.replace(" ", "-"), embed, False)
            started = time.perf_counter()
            report = await kb.sync()
            first = time.perf_counter() - started
            started = time.perf_counter()
            await kb.sync()
            again = time.perf_counter() - started
            out[f"sync {label}"] = line = (
                f"{files} files, {report.chunks} chunks in {first:.1f}s "
                f"({files / first:.1f} files/s, {report.chunks / first:.1f} chunks/s); "
                f"unchanged re-sync {again:.2f}s"
            )
            print(f"sync {label}: {line}", flush=True)
            await repo.close()

        speeds: dict[str, list[float]] = {"alone": [], "yielding sync": [], "greedy sync": []}
        n = 0
        for _ in range(args.rounds):
            for label in speeds:
                n += 1
                if label == "alone":
                    speeds[label].append(await answer_speed(engine, args.tokens, n))
                    print(f"  {label}: {speeds[label][-1]:.1f} tok/s", flush=True)
                    continue
                repo, kb = await fresh_kb(f"r{n}", True, label == "yielding sync")
                syncing = asyncio.create_task(kb.sync())
                await asyncio.sleep(1.0)  # the sync is embedding by now
                speeds[label].append(await answer_speed(engine, args.tokens, n))
                print(f"  {label}: {speeds[label][-1]:.1f} tok/s", flush=True)
                syncing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await syncing
                await asyncio.sleep(1.0)  # the embedding batch in flight finishes
                await repo.close()
        base = statistics.median(speeds["alone"])
        for label, values in speeds.items():
            med = statistics.median(values)
            out[f"answer {label}"] = f"{med:.1f} tok/s ({med / base:.2f}x alone)"
    await engine.close()
    embedder.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--embedding-model", required=True)
    parser.add_argument("--handbook", type=Path, default=ROOT / "bench/data/handbook")
    parser.add_argument("--copies", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    result = asyncio.run(run(args))
    print("summary:")
    for key, value in result.items():
        print(f"  {key}: {value}")


if __name__ == "__main__":
    main()
