"""Load benchmark: many browser-chat conversations ask at once; what do people see?

    .venv/bin/python bench/load.py [--model PATH] [--conversations 50] [--rounds 3]
                                   [--max-tokens 64] [--slots N] [--max-queue N] [--threads N]

The bot runs as its own process (`python -m bot run`: the browser chat only, the real
llama.cpp engine, SQLite in a temporary directory), so the memory and CPU measured are the
bot's alone; this process plays the browsers. Each round, every conversation (its own
browser id and a new thread) opens its event stream, then all POST a question at the same
moment and read their streams to the end. Per round it prints: answered / busy (and the
words the busy ones were told) / errors, time to first visible token (from the POST to the
first reply that is not a "⏳ queued" or "💭 thinking" placeholder) at p50 and p99, total
generated tokens per second (/metrics edgeqa_tokens_generated_total over the round's wall
time), the bot's peak RSS, and how much CPU other processes took meanwhile: on two cores one
busy neighbour slows llama.cpp several times over, so such a round is flagged and repeated.
Memory: the engine parks the KV state of conversations evicted from their slot in a RAM
cache bounded at 128 MiB, which fills over the first rounds; after that identical rounds
must not need more memory (the last lines compare consecutive rounds).
Exit status 1 if any question ended in an error or never ended.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import re
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.noise import CpuWatch, wait_until_quiet

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = "/root/.cache/edgeqa-models/smollm2-135m-instruct-q4_1.gguf"
PLACEHOLDERS = ("⏳", "💭")
BUSY = "I'm busy right now"
FAILURES = ("something went wrong", "couldn't deliver")
TOPICS = [
    "how tides work",
    "why leaves change colour",
    "what a compiler does",
    "how vaccines train the immune system",
    "why the sea is salty",
    "how a refrigerator cools",
    "what causes thunder",
    "how bread rises",
    "why cats purr",
    "how GPS finds a position",
]
MIB = 1024 * 1024
NOISY = 0.25  # cores taken by other processes that make a round's figures doubtful


@dataclass
class Conversation:
    browser: str
    thread: str
    question: str
    asked_at: float = 0.0
    first_visible: float | None = None
    finished: float | None = None
    final: str = ""
    queue_positions: list[int] = field(default_factory=list)
    error: str = ""

    @property
    def outcome(self) -> str:
        if self.error or self.finished is None:
            return "error"
        if self.final.startswith(BUSY):
            return "busy"
        if not self.final or any(f in self.final for f in FAILURES):
            return "error"
        return "answered"


@dataclass
class Round:
    conversations: list[Conversation]
    wall: float
    tokens: float
    peak_rss: int
    others_cpu: float
    settled_rss: int = 0

    @property
    def noisy(self) -> bool:
        return self.others_cpu > NOISY


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


class Bot:
    """The bot process: started with the browser chat only, its log kept for the report."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args, self.workdir = args, workdir
        self.log: list[str] = []
        self.port = 0
        self.process: asyncio.subprocess.Process | None = None
        self._ready = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        a = self.args
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEQA_")}
        env |= {
            "PYTHONPATH": str(ROOT),
            "EDGEQA_MODEL": str(a.model),
            "EDGEQA_WEB__ENABLED": "true",
            "EDGEQA_WEB__PORT": "0",
            "EDGEQA_HISTORY__DATABASE_URL": f"sqlite+aiosqlite:///{self.workdir / 'load.db'}",
            "EDGEQA_ENGINE__MAX_TOKENS": str(a.max_tokens),
            "EDGEQA_BOT__RATE_LIMIT_PER_MINUTE": "0",  # one user per browser; rounds repeat
            "EDGEQA_LOG__LEVEL": "INFO",
        }
        for name in ("slots", "max_queue", "threads"):
            if getattr(a, name) is not None:
                env[f"EDGEQA_ENGINE__{name.upper()}"] = str(getattr(a, name))
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bot",
            "run",
            cwd=self.workdir,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        self._reader = asyncio.create_task(self._read())
        waiter = asyncio.create_task(self._ready.wait())
        exited = asyncio.create_task(self.process.wait())
        await asyncio.wait({waiter, exited}, timeout=300, return_when=asyncio.FIRST_COMPLETED)
        if not self._ready.is_set():
            sys.exit("the bot did not start:\n" + "\n".join(self.log[-20:]))

    async def _read(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        async for raw in self.process.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            self.log.append(line)
            if match := re.search(r"HTTP server on http://127\.0\.0\.1:(\d+)", line):
                self.port = int(match.group(1))
            if "edgeqa ready" in line:
                self._ready.set()

    @property
    def rss(self) -> int:
        assert self.process is not None
        return int(psutil.Process(self.process.pid).memory_info().rss)

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            await asyncio.wait_for(self.process.wait(), 60)

    def errors(self) -> list[str]:
        return [line for line in self.log if re.search(r" (ERROR|CRITICAL) |Traceback", line)]


async def metric(session: aiohttp.ClientSession, base: str, name: str) -> float:
    async with session.get(f"{base}/metrics") as response:
        for line in (await response.text()).splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
    return 0.0


async def converse(
    session: aiohttp.ClientSession,
    base: str,
    conv: Conversation,
    opened: asyncio.Event,
    go: asyncio.Event,
) -> None:
    """Open the thread's event stream, ask when told to, read until the question is done."""
    params = {"browser": conv.browser, "thread": conv.thread}
    try:
        async with session.get(f"{base}/api/events", params=params) as stream:
            await stream.content.readline()  # "retry:" then the hello event: subscribed
            opened.set()
            await go.wait()
            conv.asked_at = time.monotonic()
            body = {**params, "text": conv.question}
            async with session.post(f"{base}/api/ask", json=body) as response:
                if response.status != 202:
                    conv.error = f"ask: HTTP {response.status} {await response.text()}"
                    return
                question = (await response.json())["id"]
            async for raw in stream.content:
                line = raw.decode("utf-8").strip()
                if not line.startswith("data:"):
                    continue
                event: dict[str, Any] = json.loads(line[5:])
                kind = event.get("type")
                if kind == "reply" and event.get("question") == question:
                    text = str(event.get("text") or "")
                    if text and not text.startswith(PLACEHOLDERS) and conv.first_visible is None:
                        conv.first_visible = time.monotonic() - conv.asked_at
                    conv.final = text
                elif kind == "progress" and event.get("question") == question:
                    if event.get("queue_position"):
                        conv.queue_positions.append(int(event["queue_position"]))
                elif kind == "done" and event.get("question") == question:
                    conv.finished = time.monotonic() - conv.asked_at
                    return
            conv.error = "the event stream ended before the answer did"
    except (aiohttp.ClientError, ValueError, KeyError) as exc:
        conv.error = f"{type(exc).__name__}: {exc}"
    finally:
        opened.set()


async def one_round(session: aiohttp.ClientSession, bot: Bot, number: int, count: int) -> Round:
    base = f"http://127.0.0.1:{bot.port}"
    conversations = [
        Conversation(
            browser=f"load-browser-{i:03d}",
            thread=f"load-r{number}-t{i:03d}",
            question=f"In a few sentences, explain {TOPICS[i % len(TOPICS)]}. (#{i})",
        )
        for i in range(count)
    ]
    go = asyncio.Event()
    opened = [asyncio.Event() for _ in conversations]
    tasks = [
        asyncio.create_task(converse(session, base, conv, flag, go))
        for conv, flag in zip(conversations, opened, strict=True)
    ]
    await asyncio.gather(*(flag.wait() for flag in opened))
    tokens_before = await metric(session, base, "edgeqa_tokens_generated_total")
    peak = bot.rss
    with CpuWatch() as watch:
        started = time.monotonic()
        go.set()
        pending = set(tasks)
        while pending:
            _, pending = await asyncio.wait(pending, timeout=0.05)
            peak = max(peak, bot.rss)
        wall = time.monotonic() - started
    tokens = await metric(session, base, "edgeqa_tokens_generated_total") - tokens_before
    await asyncio.sleep(1.0)  # the last stores and frees finish
    return Round(conversations, wall, tokens, peak, watch.others, settled_rss=bot.rss)


def report(number: int, result: Round) -> None:
    convs = result.conversations
    by: dict[str, list[Conversation]] = {}
    for conv in convs:
        by.setdefault(conv.outcome, []).append(conv)
    answered, busy, errors = by.get("answered", []), by.get("busy", []), by.get("error", [])
    waited = [c for c in answered if c.queue_positions]
    ttft = [c.first_visible for c in answered if c.first_visible is not None]
    told = sorted({c.final.split(")")[0] + ")" for c in busy})
    print(f"round {number}: {len(convs)} conversations asked at once")
    line = max((max(c.queue_positions) for c in waited), default=0)
    print(
        f"  answered {len(answered)} ({len(answered) - len(waited)} at once, {len(waited)} "
        f"after waiting in line, shown positions up to {line})"
    )
    print(f"  busy     {len(busy)} (told: {'; '.join(told) or '-'})")
    print(f"  errors   {len(errors)}")
    for conv in errors[:5]:
        print(f"    {conv.thread}: {conv.error or conv.final[:120]!r}")
    at_once = [c.first_visible for c in answered if c.first_visible and not c.queue_positions]
    print(
        f"  time to first visible token: p50 {percentile(ttft, 50):.2f} s, "
        f"p99 {percentile(ttft, 99):.2f} s (answered questions; those that did not wait: "
        f"p50 {percentile(at_once, 50):.2f} s)"
    )
    print(
        f"  tokens: {result.tokens:.0f} in {result.wall:.1f} s = "
        f"{result.tokens / result.wall:.1f} tokens/s in total"
    )
    noisy = " (noisy: not counted, repeated if allowed)" if result.noisy else ""
    print(
        f"  bot RSS: peak {result.peak_rss / MIB:.0f} MiB, "
        f"{result.settled_rss / MIB:.0f} MiB a second after; other processes used "
        f"{result.others_cpu:.2f} cores meanwhile{noisy}"
    )


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path(DEFAULT_MODEL))
    parser.add_argument("--conversations", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3, help="quiet rounds to run")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--slots", type=int, help="engine.slots (default: the bot's, 4)")
    parser.add_argument("--max-queue", type=int, help="engine.max_queue (default: 32)")
    parser.add_argument("--threads", type=int, help="engine.threads (default: auto)")
    parser.add_argument(
        "--repeat-noisy",
        type=int,
        default=3,
        metavar="N",
        help="repeat up to N rounds during which other processes used > 0.25 cores",
    )
    args = parser.parse_args()
    if not args.model.is_file():
        sys.exit(f"no model at {args.model} (use --model PATH)")
    print(
        f"machine: {os.cpu_count()} cores; model {args.model.name}; max_tokens "
        f"{args.max_tokens}; slots {args.slots or 'default'}; max_queue "
        f"{args.max_queue if args.max_queue is not None else 'default'}"
    )
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)  # stop the bot
    with tempfile.TemporaryDirectory(prefix="edgeqa-load-") as workdir:
        bot = Bot(args, Path(workdir))
        await bot.start()
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=None, sock_read=600)
        failed = False
        try:
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
                idle = bot.rss
                print(f"bot RSS after start (model loaded, idle): {idle / MIB:.0f} MiB")
                rounds: list[Round] = []
                repeats = args.repeat_noisy
                while len([r for r in rounds if not r.noisy]) < args.rounds:
                    await wait_until_quiet()  # other work on the machine skews every figure
                    result = await one_round(session, bot, len(rounds) + 1, args.conversations)
                    report(len(rounds) + 1, result)
                    rounds.append(result)
                    failed |= any(c.outcome == "error" for c in result.conversations)
                    if result.noisy:
                        if repeats == 0:
                            break
                        repeats -= 1
                for number, (before, after) in enumerate(itertools.pairwise(rounds), 2):
                    peak = (after.peak_rss - before.peak_rss) / MIB
                    settled = (after.settled_rss - before.settled_rss) / MIB
                    print(
                        f"RSS growth in round {number}: peak {peak:+.1f} MiB, "
                        f"a second after {settled:+.1f} MiB"
                    )
        finally:
            await bot.stop()
        errors = bot.errors()
        print(f"errors in the bot's log: {len(errors)}")
        for line in errors[:10]:
            print("  " + line)
    return 1 if failed or errors else 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):
        sys.exit(asyncio.run(main()))
