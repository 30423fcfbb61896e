"""Engine benchmark: every figure is a ratio against a baseline measured in the same run.

    .venv/bin/python bench/engine.py --model PATH [--peer] [--tokens 128] [--threads N]

(a) single-stream decode speed of the engine vs. a plain low-level llama.cpp loop (greedy,
    one token per llama_decode, run in a child process so it never shares the CPU with the
    engine), alternating rounds to even out noise from other work on the machine;
(b) total tokens/s with 1, 4 and 8 concurrent conversations, and the worst first-token time,
    beside what the plain loop gains from decoding 4 and 8 sequences per llama_decode;
(c) first-token time of a follow-up in a ~1,500-token thread vs. the same prompt uncached;
(d) peak RSS of this process (the engine with 8 slots x 2,048 tokens) and load time;
--peer: the same concurrent load against llama-cpp-python's server (python -m llama_cpp.server).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import itertools
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.engine_prompts import (
    answers_while_reading,
    fair_sharing,
    grounded_alone,
    loop_read_seconds,
    run_loop_read,
)
from bench.noise import CpuWatch, wait_until_quiet
from bot.config import EngineSettings
from llm.base import ChatMessage, Engine, GenerationRequest
from llm.llama_engine import LlamaCppEngine, physical_cores
from llm.openai_engine import OpenAICompatEngine

SYSTEM = "You are a helpful assistant."
TOPICS = [
    "the history of the printing press",
    "how volcanoes form",
    "the life cycle of stars",
    "why the sky is blue",
    "how bees make honey",
    "the invention of the telephone",
    "how rivers shape valleys",
    "the migration of birds",
]
NOISY = 0.25  # cores used by other processes that make a measurement worth repeating
STORY = "Write a long, detailed story about a dragon who learns to program computers."


def baseline_loop(
    model_path: str, threads: int, tokens: int, flash: bool, streams: int = 1
) -> dict[str, float]:
    """A plain greedy decode loop on llama.cpp's low-level API: the speed to beat.

    Its sampler gives what the engine's greedy sampler gives (repeat penalty, then argmax),
    so the two differ only in what the engine adds around llama.cpp. With `streams` > 1 it
    decodes that many sequences per `llama_decode` (different prompts, pre-filled in one
    batch, not timed): what llama.cpp itself gains from batching on this machine.
    """
    import ctypes

    import llama_cpp as lc

    @lc.llama_log_callback  # type: ignore[untyped-decorator]
    def quiet(level: int, text: bytes, data: ctypes.c_void_p) -> None:
        pass

    lc.llama_log_set(quiet, ctypes.c_void_p(0))
    lc.llama_backend_init()
    model = lc.llama_model_load_from_file(model_path.encode(), lc.llama_model_default_params())
    vocab = lc.llama_model_get_vocab(model)
    params = lc.llama_context_default_params()
    params.n_ctx, params.n_batch, params.n_ubatch = 2048 * streams, 512, 512
    params.n_seq_max = streams
    params.n_threads = params.n_threads_batch = threads
    params.flash_attn_type = int(flash)  # the engine's setting: 1 enabled, 0 disabled
    ctx = lc.llama_init_from_model(model, params)
    batch = lc.llama_batch_init(512, 0, 1)
    n_vocab = lc.llama_vocab_n_tokens(vocab)
    penalty = EngineSettings().repeat_penalty

    def put(index: int, token: int, pos: int, seq: int, logits: bool) -> None:
        batch.token[index], batch.pos[index], batch.n_seq_id[index] = token, pos, 1
        batch.seq_id[index][0], batch.logits[index] = seq, logits

    samplers, heads, positions = [], [], []
    for seq in range(streams):
        question = STORY if streams == 1 else f"Write a long, detailed essay about {TOPICS[seq]}."
        text = (
            f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n"
            "<|im_start|>assistant\n"
        ).encode()
        buf = (lc.llama_token * (len(text) + 8))()
        n_prompt = lc.llama_tokenize(vocab, text, len(text), buf, len(buf), False, True)
        for pos in range(n_prompt):
            put(batch.n_tokens + pos, buf[pos], pos, seq, pos == n_prompt - 1)
        batch.n_tokens += n_prompt
        heads.append(batch.n_tokens - 1)
        positions.append(n_prompt)
        sampler = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        lc.llama_sampler_chain_add(
            sampler, lc.llama_sampler_init_penalties(n_vocab, 64, penalty, 0.0, 0.0)
        )
        lc.llama_sampler_chain_add(sampler, lc.llama_sampler_init_greedy())
        samplers.append(sampler)
    if lc.llama_decode(ctx, batch) != 0:
        raise RuntimeError("prompt decode failed")
    first = time.perf_counter()
    for _ in range(tokens - 1):
        batch.n_tokens = streams
        for seq in range(streams):
            put(
                seq,
                lc.llama_sampler_sample(samplers[seq], ctx, heads[seq]),
                positions[seq],
                seq,
                True,
            )
            heads[seq] = seq
            positions[seq] += 1
        if lc.llama_decode(ctx, batch) != 0:
            raise RuntimeError("decode failed")
    for seq in range(streams):
        lc.llama_sampler_sample(samplers[seq], ctx, heads[seq])
    elapsed = time.perf_counter() - first
    return {"tokens_per_second": streams * (tokens - 1) / elapsed}


def run_baseline(args: argparse.Namespace, streams: int = 1) -> float:
    command = [sys.executable, __file__, "--model", args.model, "--baseline-child", str(streams)]
    command += ["--threads", str(args.threads), "--tokens", str(args.tokens)]
    command += ["--flash-attention" if args.flash_attention else "--no-flash-attention"]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return float(json.loads(out.strip().splitlines()[-1])["tokens_per_second"])


@dataclass
class Load:
    streams: int
    tokens: int
    wall: float
    decode_wall: float
    worst_ttft: float
    shortest: int

    @property
    def total_tps(self) -> float:
        return self.tokens / self.wall

    @property
    def decode_tps(self) -> float:
        return self.tokens / self.decode_wall


async def one(engine: Engine, request: GenerationRequest) -> tuple[int, float, float, float, int]:
    """(tokens, submit time, first-token time, end time, reused tokens) of one answer."""
    submitted = time.perf_counter()
    first = 0.0
    tokens = reused = 0
    async for chunk in engine.stream(request):
        if chunk.text and not first:
            first = time.perf_counter()
        if chunk.done and chunk.stats is not None:
            tokens, reused = chunk.stats.generated_tokens, chunk.stats.reused_tokens
    return tokens, submitted, first or time.perf_counter(), time.perf_counter(), reused


_runs = itertools.count()


async def concurrent(engine: Engine, streams: int, tokens: int, name: str) -> Load:
    """`streams` conversations asking at once, with prompts the cache has never seen.

    Throughput is only comparable when every answer runs to `tokens`; if one ends early
    (the model's end of turn) the load is run again with other prompts.
    """
    for _ in range(8):
        load = await _concurrent_once(engine, streams, tokens, f"{name}#{next(_runs)}")
        if load.shortest >= tokens:
            return load
    return load


async def _concurrent_once(engine: Engine, streams: int, tokens: int, run_id: str) -> Load:
    requests = [
        GenerationRequest(
            [
                ChatMessage("system", f"[{run_id}] {SYSTEM}"),  # nothing cached to reuse
                ChatMessage("user", f"Write a long, detailed essay about {TOPICS[i]}."),
            ],
            conversation_id=f"{run_id}-{i}",
            max_tokens=tokens,
            seed=i + 1,
        )
        for i in range(streams)
    ]
    results = await asyncio.gather(*(one(engine, r) for r in requests))
    start = min(r[1] for r in results)
    end = max(r[3] for r in results)
    first = min(r[2] for r in results)
    return Load(
        streams=streams,
        tokens=sum(r[0] for r in results),
        wall=end - start,
        decode_wall=end - first,
        worst_ttft=max(r[2] - r[1] for r in results),
        shortest=min(r[0] for r in results),
    )


def thread_history(engine: LlamaCppEngine, target: int) -> list[ChatMessage]:
    """A made-up thread of about `target` tokens (system prompt and whole turns)."""
    paragraph = (
        "The deployment uses a small language model on a two-core machine. Each answer is "
        "streamed into the chat while it is written, and the thread history is kept in a "
        "database so that follow-up questions can refer to earlier answers. "
    )
    messages = [ChatMessage("system", SYSTEM)]
    turn = 0
    while engine.count_tokens(messages) < target:
        turn += 1
        messages.append(ChatMessage("user", f"Question {turn}: tell me more about part {turn}."))
        messages.append(ChatMessage("assistant", f"Part {turn}. " + paragraph * 4))
    return messages


async def follow_up(engine: LlamaCppEngine, target: int) -> dict[str, float]:
    history = thread_history(engine, target)
    q1 = ChatMessage("user", "Summarise the thread in one sentence.")
    first = [c async for c in engine.stream(GenerationRequest([*history, q1], "thread", 24))]
    answer = "".join(c.text for c in first)
    messages = [*history, q1, ChatMessage("assistant", answer), ChatMessage("user", "Why?")]
    _, submitted, ttft_at, _, reused = await one(engine, GenerationRequest(messages, "thread", 8))
    warm = ttft_at - submitted
    _, submitted, ttft_at, _, cold_reused = await one(
        engine, GenerationRequest(messages, "fresh-copy", 8)
    )
    cold = ttft_at - submitted
    return {
        "prompt_tokens": engine.count_tokens(messages),
        "reused": reused,
        "cold_reused": cold_reused,
        "warm": warm,
        "cold": cold,
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Peer:
    """llama-cpp-python's own server on loopback, driven through our OpenAI-compatible client."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.port = free_port()
        self.server: asyncio.subprocess.Process | None = None
        settings = EngineSettings(
            kind="openai",
            openai_base_url=f"http://127.0.0.1:{self.port}/v1",
            openai_connect_retries=10,
            slots=8,
            max_tokens=args.tokens,
        )
        self.client = OpenAICompatEngine(settings)

    async def start(self) -> None:
        a = self.args
        command = [sys.executable, "-m", "llama_cpp.server", "--model", a.model]
        command += ["--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", "2048"]
        command += ["--n_threads", str(a.threads), "--n_threads_batch", str(a.threads)]
        command += ["--interrupt_requests", "False", "--verbose", "False"]
        command += ["--flash_attn", str(a.flash_attention)]
        self.server = await asyncio.create_subprocess_exec(
            *command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        await self.client.start()
        await concurrent(self.client, 1, 8, "peer-warmup")

    async def close(self) -> None:
        await self.client.close()
        if self.server is not None:
            self.server.terminate()
            await asyncio.wait_for(self.server.wait(), 30)


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    peer = Peer(args) if args.peer else None
    settings = EngineSettings(
        slots=8,
        context_size=2048,
        threads=args.threads,
        max_tokens=args.tokens,
        flash_attention=args.flash_attention,
    )
    engine = LlamaCppEngine(settings, model=args.model, state_cache_mb=0)
    started = time.perf_counter()
    await engine.start()
    report: dict[str, Any] = {"load_seconds": time.perf_counter() - started}
    report["threads"] = args.threads
    report["flash_attention"] = args.flash_attention
    greedy = GenerationRequest(
        [ChatMessage("system", SYSTEM), ChatMessage("user", STORY)],
        max_tokens=args.tokens,
        temperature=0.0,
    )
    rounds: list[dict[str, Any]] = []
    try:
        if peer is not None:
            await peer.start()
        await concurrent(engine, 1, 8, "warmup")

        async def single() -> float:
            chunks = [c async for c in engine.stream(greedy)]
            assert chunks[-1].stats is not None
            return chunks[-1].stats.tokens_per_second

        noise: list[float] = []
        for number in range(args.rounds):
            plan: dict[Any, Callable[[], Awaitable[Any]]] = {
                "loop": lambda: asyncio.to_thread(run_baseline, args),
                "engine": single,
                "loop4": lambda: asyncio.to_thread(run_baseline, args, 4),
                "loop8": lambda: asyncio.to_thread(run_baseline, args, 8),
            }
            for n in (1, 4, 8):
                plan[n] = functools.partial(concurrent, engine, n, args.tokens, f"r{number}-{n}")
            if peer is not None:
                for n in (4, 8):
                    plan[f"peer{n}"] = functools.partial(
                        concurrent, peer.client, n, args.tokens, f"p{number}-{n}"
                    )
            grounded_tokens: list[int] = []

            async def grounded(number: int = number, into: list[int] = grounded_tokens) -> float:
                ttft, into[:] = await grounded_alone(engine, f"g{number}")
                return ttft

            plan["grounded"] = grounded
            plan["loopread"] = functools.partial(
                asyncio.to_thread, run_loop_read, __file__, args, grounded_tokens
            )
            plan["reading"] = functools.partial(answers_while_reading, engine, f"w{number}")
            row: dict[Any, Any] = {}
            for key, run in plan.items():
                row[key], others = await measured(run, args.retries, args.patience)
                noise.append(others)
                print(f"  round {number + 1}: {_brief(key, row[key])} (others {others:.2f} cores)")
            rounds.append(row)
        report["noise"] = noise
        report["follow_up"] = await follow_up(engine, args.thread_tokens)
        report["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    finally:
        await engine.close()
        if peer is not None:
            await peer.close()
    report["rounds"] = rounds
    if args.fair:
        report["fair"] = await fair_sharing(args)
    return report


async def measured(
    run: Callable[[], Awaitable[Any]], retries: int, patience: float
) -> tuple[Any, float]:
    """Run a measurement when the machine is quiet; redo it if others got busy meanwhile."""
    for attempt in range(retries + 1):
        await wait_until_quiet(limit=patience)
        with CpuWatch() as watch:
            result = await run()
        if watch.others < NOISY or attempt == retries:
            return result, watch.others
        print(f"    (others used {watch.others:.2f} cores meanwhile; measuring again)")
    raise AssertionError("unreachable")


def _brief(key: object, value: Any) -> str:
    if isinstance(value, dict):
        return f"{key}: " + ", ".join(f"{k} {v:.2f}" for k, v in value.items())
    if isinstance(value, Load):
        tps = f"{value.total_tps:.0f}/{value.decode_tps:.0f}"
        return f"{key}: {tps} t/s ttft {value.worst_ttft:.1f}"
    return f"{key} {value:.1f} t/s"


def _value(row: dict[str, Any], key: Any, attr: str) -> float:
    item = row[key]
    if isinstance(item, dict):
        return float(item[attr])
    return float(getattr(item, attr) if attr else item)


def med(rounds: list[dict[str, Any]], key: Any, attr: str = "") -> float:
    return float(statistics.median(_value(row, key, attr) for row in rounds))


def ratio(rounds: list[dict[str, Any]], top: Any, bottom: Any, attr: str = "") -> float:
    """Median over rounds of a ratio taken within each round (both sides measured together)."""
    return float(statistics.median(_value(r, top, attr) / _value(r, bottom, attr) for r in rounds))


def show(report: dict[str, Any]) -> None:
    rounds = report["rounds"]
    print(
        f"\nthreads {report['threads']}, flash attention {report['flash_attention']}, "
        f"model load to ready {report['load_seconds']:.2f} s"
    )
    print(f"medians over {len(rounds)} rounds; ratios are computed within each round")
    noise = report["noise"]
    print(
        f"other processes used {statistics.median(noise):.2f} cores (median), "
        f"{max(noise):.2f} at most, during the measurements"
    )
    print(
        f"(a) single stream: engine {med(rounds, 'engine'):.1f} tok/s, plain loop "
        f"{med(rounds, 'loop'):.1f} tok/s: {ratio(rounds, 'engine', 'loop'):.2f}x"
        "  (target >= 0.95)"
    )
    print("(b) streams  total tok/s  decode-phase tok/s  worst first token s")
    keys: list[Any] = [1, 4, 8] + (["peer4", "peer8"] if "peer4" in rounds[0] else [])
    for key in keys:
        print(
            f"    {key!s:>7}  {med(rounds, key, 'total_tps'):11.1f}  "
            f"{med(rounds, key, 'decode_tps'):18.1f}  {med(rounds, key, 'worst_ttft'):19.2f}"
        )
    for n, target in ((4, 2.0), (8, 2.5)):
        print(
            f"    {n} vs 1 stream: total {ratio(rounds, n, 1, 'total_tps'):.2f}x, decode-phase "
            f"{ratio(rounds, n, 1, 'decode_tps'):.2f}x  (target >= {target}); the plain loop "
            f"with {n} sequences per decode: {med(rounds, f'loop{n}'):.1f} tok/s = "
            f"{ratio(rounds, f'loop{n}', 'loop'):.2f}x its single stream"
        )
    if "peer4" in rounds[0]:
        for n in (4, 8):
            print(
                f"    {n} streams vs llama_cpp.server: total "
                f"{ratio(rounds, n, f'peer{n}', 'total_tps'):.2f}x (target >= 2.2 for 4), "
                f"worst first token {ratio(rounds, n, f'peer{n}', 'worst_ttft'):.2f}x "
                "(target <= 0.1 for 4)"
            )
    f = report["follow_up"]
    print(
        f"(c) follow-up in a {f['prompt_tokens']}-token thread: first token {f['warm']:.2f} s "
        f"({f['reused']} tokens reused) vs {f['cold']:.2f} s uncached "
        f"({f['cold_reused']} reused) = {f['warm'] / f['cold']:.3f}x  (target <= 0.15)"
    )
    print(f"(d) peak RSS {report['rss_mb']:.0f} MB with 8 slots x 2,048 tokens (target <= 1000)")
    print(
        f"(e) grounded question (~800 tokens of sources), first token: engine "
        f"{med(rounds, 'grounded'):.2f} s, plain loop reading it {med(rounds, 'loopread'):.2f} s"
        f" = {ratio(rounds, 'grounded', 'loopread'):.2f}x  (target <= 1.1)"
    )
    speeds = [r["reading"]["during"] / r["reading"]["before"] for r in rounds]
    print(
        f"(f) 3 answers while it is read: {med(rounds, 'reading', 'during'):.1f} tok/s vs "
        f"{med(rounds, 'reading', 'before'):.1f} before = {statistics.median(speeds):.2f}x "
        f"(target >= 0.7; window {med(rounds, 'reading', 'seconds'):.1f} s)"
    )
    fair = report.get("fair")
    if fair:
        print(
            f"(g) default settings ({fair['slots']} slots), two {fair['long_tokens']}-token "
            f"questions read together: {fair['count']} short questions' first token "
            f"{fair['median']:.2f}x (median), {fair['worst']:.2f}x (worst) their idle "
            f"{fair['unloaded']:.2f} s  (target <= 3)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=os.environ.get("EDGEQA_TEST_MODEL"), required=False)
    parser.add_argument("--threads", type=int, default=physical_cores())
    parser.add_argument("--tokens", type=int, default=128, help="tokens per answer")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of (a)")
    parser.add_argument("--thread-tokens", type=int, default=1500)
    parser.add_argument(
        "--flash-attention",
        action=argparse.BooleanOptionalAction,
        default=EngineSettings().flash_attention,
        help="engine.flash_attention (both sides; default: the engine's default)",
    )
    parser.add_argument(
        "--retries", type=int, default=2, help="re-measure when other processes were busy"
    )
    parser.add_argument(
        "--patience", type=float, default=120, help="seconds to wait for a quiet machine"
    )
    parser.add_argument("--peer", action="store_true", help="also load llama_cpp.server")
    parser.add_argument(
        "--fair", action=argparse.BooleanOptionalAction, default=True, help="figure (g)"
    )
    parser.add_argument("--baseline-child", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--prompt-child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.model:
        parser.error("--model PATH is required (or set EDGEQA_TEST_MODEL)")
    if args.prompt_child:
        tokens = json.loads(Path(args.prompt_child).read_text())
        Path(args.prompt_child).unlink()
        seconds = loop_read_seconds(args.model, args.threads, args.flash_attention, tokens)
        print(json.dumps({"seconds": seconds}))
        return
    if args.baseline_child:
        print(
            json.dumps(
                baseline_loop(
                    args.model, args.threads, args.tokens, args.flash_attention, args.baseline_child
                )
            )
        )
        return
    show(asyncio.run(bench(args)))


if __name__ == "__main__":
    main()
