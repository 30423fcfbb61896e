"""bench/engine.py's prompt-reading figures: grounded questions and fair sharing of steps.

(e) first token of a question carrying ~800 tokens of retrieved text, against the time the
    plain llama.cpp loop (child process, 512-token batches) needs to read the same tokens
    and draw the first one;
(f) the answer speed of 3 other conversations while such a prompt is read, against their
    speed just before it arrived (same answers, same round);
(g) with the default [engine] settings, two questions of the bot's longest prompt arriving
    together, and short questions sent one after another while those are read: each short
    one's first token against the same question's on an idle engine.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from bot.config import BotSettings, EngineSettings
from llm.base import ChatMessage, GenerationRequest
from llm.llama_engine import LlamaCppEngine

SYSTEM = "You are a helpful assistant. Answer from the numbered sources and cite them."
FACTS = [
    "The VPN gateway for the Berlin office is vpn-ber.example.com; it needs the company "
    "certificate installed through the self-service portal.",
    "Travel to Oslo is booked through the travel desk at least ten days ahead; economy class "
    "applies to flights under six hours.",
    "The cafeteria in Shanghai serves lunch from 11:30 to 13:30; on Fridays the menu is "
    "vegetarian.",
    "Expense reports are due by the fifth working day of the following month, with receipts "
    "attached as PDF or photos.",
    "New laptops are ordered by the team lead in the asset portal; delivery takes about two "
    "weeks, longer for keyboards with a non-US layout.",
    "The on-call rotation changes every Monday at 09:00 local time; handover notes go in the "
    "operations channel.",
    "Parking permits for the Munich garage are renewed each January; the facility team sends "
    "a reminder in December.",
    "Security incidents are reported to the security desk by phone first, then in the ticket "
    "system within one hour.",
]


def grounded_messages(engine: LlamaCppEngine, run_id: str, target: int = 800) -> list[ChatMessage]:
    """System prompt, ~`target` tokens of numbered passages, and a question (nothing cached)."""
    passages: list[str] = []
    while True:
        number = len(passages) + 1
        passages.append(f"[{number}] {FACTS[number % len(FACTS)]} (section {number}, {run_id})")
        user = "Sources:\n" + "\n".join(passages) + "\n\nQuestion: how do I get a new laptop?"
        messages = [ChatMessage("system", f"[{run_id}] {SYSTEM}"), ChatMessage("user", user)]
        if engine.count_tokens(messages) >= target:
            return messages


def loop_read_seconds(model_path: str, threads: int, flash: bool, tokens: list[int]) -> float:
    """The plain loop: read `tokens` in 512-token llama_decode calls, draw the first token."""
    import ctypes

    import llama_cpp as lc

    @lc.llama_log_callback  # type: ignore[untyped-decorator]
    def quiet(level: int, text: bytes, data: ctypes.c_void_p) -> None:
        pass

    lc.llama_log_set(quiet, ctypes.c_void_p(0))
    lc.llama_backend_init()
    model = lc.llama_model_load_from_file(model_path.encode(), lc.llama_model_default_params())
    params = lc.llama_context_default_params()
    params.n_ctx, params.n_batch, params.n_ubatch = 2048, 512, 512
    params.n_threads = params.n_threads_batch = threads
    params.flash_attn_type = int(flash)
    ctx = lc.llama_init_from_model(model, params)
    batch = lc.llama_batch_init(512, 0, 1)
    sampler = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
    lc.llama_sampler_chain_add(sampler, lc.llama_sampler_init_greedy())
    warm = [tokens[0]] * 8  # first-use costs (buffers, repacked weights paged in) untimed
    for run, seq_tokens in enumerate((warm, tokens)):
        lc.llama_memory_seq_rm(lc.llama_get_memory(ctx), 0, 0, -1)
        started = time.perf_counter()
        for start in range(0, len(seq_tokens), 512):
            part = seq_tokens[start : start + 512]
            batch.n_tokens = len(part)
            for i, token in enumerate(part):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, start + i, 1
                batch.seq_id[i][0], batch.logits[i] = 0, i == len(part) - 1
            if lc.llama_decode(ctx, batch) != 0:
                raise RuntimeError("prompt decode failed")
        lc.llama_sampler_sample(sampler, ctx, batch.n_tokens - 1)
        elapsed = time.perf_counter() - started
        if run:
            return elapsed
    raise AssertionError("unreachable")


def run_loop_read(script: str, args: Any, tokens: list[int]) -> float:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as file:
        json.dump(tokens, file)
    command = [sys.executable, script, "--model", args.model, "--prompt-child", file.name]
    command += ["--threads", str(args.threads)]
    command += ["--flash-attention" if args.flash_attention else "--no-flash-attention"]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return float(json.loads(out.strip().splitlines()[-1])["seconds"])


async def first_token(engine: LlamaCppEngine, request: GenerationRequest) -> float:
    submitted = time.perf_counter()
    first = 0.0
    async for chunk in engine.stream(request):
        if chunk.text and not first:
            first = time.perf_counter()
    return (first or time.perf_counter()) - submitted


async def grounded_alone(engine: LlamaCppEngine, run_id: str) -> tuple[float, list[int]]:
    messages = grounded_messages(engine, run_id)
    ttft = await first_token(engine, GenerationRequest(messages, f"g-{run_id}", 2, 0.0))
    return ttft, engine.prompt_tokens(messages)


async def answers_while_reading(
    engine: LlamaCppEngine, run_id: str, before: int = 16, tokens: int = 120
) -> dict[str, float]:
    """Tokens/s of 3 answers before a grounded question arrives and while it is read."""
    stamps: list[list[float]] = [[], [], []]
    topics = ["how glaciers move", "the history of paper", "how tides work"]

    async def talk(i: int) -> None:
        request = GenerationRequest(
            [
                ChatMessage("system", f"[{run_id}-{i}] You are a helpful assistant."),
                ChatMessage("user", f"Write a long, detailed essay about {topics[i]}."),
            ],
            conversation_id=f"{run_id}-talk-{i}",
            max_tokens=tokens,
            seed=i + 1,
        )
        try:
            async for chunk in engine.stream(request):
                if chunk.text:
                    stamps[i].extend([time.perf_counter()] * chunk.tokens)
                    moved.set()
        finally:
            moved.set()

    async def until(count: int) -> None:
        while min(len(s) for s in stamps) < count and not all(t.done() for t in talks):
            moved.clear()
            await moved.wait()

    moved = asyncio.Event()
    talks = [asyncio.create_task(talk(i)) for i in range(3)]
    await until(4)
    window = time.perf_counter()
    await until(before)
    arrived = time.perf_counter()
    messages = grounded_messages(engine, run_id)
    reading = asyncio.create_task(
        first_token(engine, GenerationRequest(messages, f"{run_id}-grounded", 2, 0.0))
    )
    done, _ = await asyncio.wait([reading, *talks], return_when=asyncio.FIRST_COMPLETED)
    ended = time.perf_counter()
    await asyncio.gather(reading, *talks)

    def rate(start: float, end: float) -> float:
        count = sum(start <= t < end for s in stamps for t in s)
        return count / max(end - start, 1e-6)

    return {
        "before": rate(window, arrived),
        "during": rate(arrived, ended),
        "seconds": ended - arrived,
        "read_first": float(reading in done),
    }


async def fair_sharing(args: Any, rounds: int = 1) -> dict[str, Any]:
    """Short questions while two of the longest prompts are read (default [engine] settings)."""
    settings = EngineSettings(threads=args.threads, flash_attention=args.flash_attention)
    engine = LlamaCppEngine(settings, model=args.model, state_cache_mb=0)
    await engine.start()
    system = BotSettings().system_prompt
    longest = BotSettings().context_tokens  # the bot never sends a longer prompt
    counter = iter(range(10**6))

    def short() -> GenerationRequest:
        tag = next(counter)
        messages = [
            ChatMessage("system", f"[{tag}] {system}"),
            ChatMessage("user", "Where do I find the VPN settings?"),
        ]
        return GenerationRequest(messages, f"short-{tag}", 2, 0.0)

    def long(name: str) -> GenerationRequest:
        text = " ".join(FACTS)
        body = text
        messages = [ChatMessage("system", f"[{name}] {system}"), ChatMessage("user", body)]
        while engine.count_tokens(messages) < longest - 40:
            body += " " + text
            messages[1] = ChatMessage("user", body)
        return GenerationRequest(messages, name, 2, 0.0)

    try:
        await first_token(engine, short())  # warm-up
        idle = [await first_token(engine, short()) for _ in range(rounds)]
        loaded: list[float] = []
        long_tokens = 0
        for number in range(rounds):
            pair = [long(f"long-{number}-a"), long(f"long-{number}-b")]
            long_tokens = engine.count_tokens(pair[0].messages)
            reads = [asyncio.create_task(first_token(engine, r)) for r in pair]
            await asyncio.sleep(0.3)
            while not all(t.done() for t in reads):
                loaded.append(await first_token(engine, short()))
                await asyncio.sleep(0.5)
            await asyncio.gather(*reads)
    finally:
        await engine.close()
    unloaded = statistics.median(idle)
    return {
        "slots": settings.slots,
        "long_tokens": long_tokens,
        "unloaded": unloaded,
        "median": statistics.median(loaded) / unloaded if loaded else 0.0,
        "worst": max(loaded) / unloaded if loaded else 0.0,
        "count": len(loaded),
    }
