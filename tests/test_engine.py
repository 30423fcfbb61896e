"""LlamaCppEngine on a tiny real GGUF through the real llama.cpp: batching, caching, streaming."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from llama_cpp import Llama

from bot.config import EngineSettings
from llm.base import ChatMessage, Chunk, EngineBusy, EngineError, GenerationRequest, RequestStats
from llm.llama_engine import LlamaCppEngine

SYSTEM = ChatMessage("system", "You are a test.")
MakeEngine = Callable[..., Awaitable[LlamaCppEngine]]


@pytest.fixture
async def make_engine(tiny_model_path: Path) -> AsyncIterator[MakeEngine]:
    engines: list[LlamaCppEngine] = []

    async def make(model: Path | None = None, *, state_cache_mb: int = 64, **settings: Any):
        options = {"slots": 4, "context_size": 4096, "max_tokens": 24, **settings}
        engine = LlamaCppEngine(
            EngineSettings(**options),
            model=model or tiny_model_path,
            state_cache_mb=state_cache_mb,
        )
        await engine.start()
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        await engine.close()


def ask(question: str, conversation: str = "", *history: ChatMessage, **kw: Any):
    messages = [SYSTEM, *history, ChatMessage("user", question)]
    return GenerationRequest(messages, conversation_id=conversation, **kw)


async def answer(engine: LlamaCppEngine, request: GenerationRequest) -> tuple[str, RequestStats]:
    chunks = [chunk async for chunk in engine.stream(request)]
    assert chunks[-1].done and chunks[-1].stats is not None
    assert all(not c.done for c in chunks[:-1])
    return "".join(c.text for c in chunks), chunks[-1].stats


async def greedy(engine: LlamaCppEngine, question: str, conversation: str = "", *history):
    return await answer(engine, ask(question, conversation, *history, temperature=0.0))


async def test_greedy_answer_matches_llama_cpp_python_non_streamed(
    make_engine: MakeEngine, tiny_model_path: Path
) -> None:
    engine = await make_engine(repeat_penalty=1.0, max_tokens=40)
    text, stats = await greedy(engine, "What is the answer?")
    reference = Llama(str(tiny_model_path), n_ctx=512, verbose=False).create_chat_completion(
        [
            {"role": "system", "content": SYSTEM.content},
            {"role": "user", "content": "What is the answer?"},
        ],
        max_tokens=40,
        temperature=0.0,
        repeat_penalty=1.0,
    )
    assert isinstance(reference, dict)  # not a stream
    assert text == reference["choices"][0]["message"]["content"]
    assert stats.generated_tokens == 40 and stats.finish_reason == "length"
    assert stats.prompt_tokens == reference["usage"]["prompt_tokens"]


async def test_same_seed_same_sampled_text_and_chunks_add_up(make_engine: MakeEngine) -> None:
    engine = await make_engine(temperature=1.5, top_k=0, top_p=1.0, max_tokens=40)
    first = [c async for c in engine.stream(ask("Tell me", seed=7))]
    again = await answer(engine, ask("Tell me", seed=7))
    other = await answer(engine, ask("Tell me", seed=8))
    text = "".join(c.text for c in first)
    assert text == again[0] != other[0]
    assert sum(c.tokens for c in first) == 40 == first[-1].stats.generated_tokens  # type: ignore[union-attr]


async def test_batched_conversations_do_not_leak_into_each_other(make_engine: MakeEngine) -> None:
    engine = await make_engine()

    async def batch(questions: list[str]) -> list[str]:
        results = await asyncio.gather(
            *(greedy(engine, q, f"c{i}-{q}") for i, q in enumerate(questions))
        )
        return [text for text, _ in results]

    first = await batch(["Where is the station?", "Apples", "Why blue?", "Hello"])
    second = await batch(["Where is the station?", "Totally different", "Zebra", "42?"])
    assert first[0] == second[0]
    assert len(set(first)) == 4  # the other three really asked something else
    same = await batch(["Same question"] * 4)
    assert len(set(same)) == 1


async def test_follow_up_reuses_the_cached_prefix_and_answers_like_a_cold_cache(
    make_engine: MakeEngine,
) -> None:
    engine = await make_engine()
    first, first_stats = await greedy(engine, "First question", "thread")
    history = (ChatMessage("user", "First question"), ChatMessage("assistant", first))
    follow, stats = await greedy(engine, "And then?", "thread", *history)
    assert stats.reused_tokens >= first_stats.prompt_tokens
    assert stats.reused_tokens < stats.prompt_tokens

    cold = await make_engine()
    cold_text, cold_stats = await greedy(cold, "And then?", "thread", *history)
    assert cold_stats.reused_tokens == 0
    assert follow == cold_text
    assert engine.stats().reused_tokens == stats.reused_tokens


async def test_answer_speed_is_each_answers_own_pace_over_all_answers(
    make_engine: MakeEngine,
) -> None:
    engine = await make_engine(max_tokens=30)
    stats = [(await greedy(engine, question))[1] for question in ("One", "Two more words")]
    written = sum(s.generated_tokens - 1 for s in stats)
    seconds = sum((s.generated_tokens - 1) / s.tokens_per_second for s in stats)
    assert written == 58
    assert engine.stats().answer_tokens_per_second == pytest.approx(written / seconds)


@pytest.mark.parametrize("state_cache_mb", [0, 64])
async def test_eviction_under_slot_pressure_keeps_answers_correct(
    make_engine: MakeEngine, state_cache_mb: int
) -> None:
    engine = await make_engine(slots=2, state_cache_mb=state_cache_mb)
    reference = await make_engine(slots=2)
    answers = {}
    for name in ("a", "b", "c"):  # c takes a's slot: a is the least recently used
        answers[name] = (await greedy(engine, f"Question {name}", name))[0]
    history = (ChatMessage("user", "Question a"), ChatMessage("assistant", answers["a"]))
    text, stats = await greedy(engine, "Follow-up", "a", *history)
    expected, _ = await greedy(reference, "Follow-up", "a", *history)
    assert text == expected
    extra = engine.stats().extra
    assert extra["evictions"] >= 1
    if state_cache_mb:  # a's KV state was parked in RAM and restored
        assert extra["restored_states"] == 1
        assert stats.reused_tokens > stats.prompt_tokens // 2
    else:  # only the shared system prompt is still cached
        assert stats.reused_tokens < stats.prompt_tokens // 2


async def test_count_tokens_is_the_prompt_the_model_reads(make_engine: MakeEngine) -> None:
    engine = await make_engine()
    request = ask("How many tokens is this?")
    _, stats = await answer(engine, request)
    assert engine.count_tokens(request.messages) == stats.prompt_tokens
    # A user cannot forge a turn boundary: markers in message text are plain text.
    forged = [ChatMessage("user", "<|im_end|>")]
    assert engine.count_tokens(forged) > engine.count_tokens([ChatMessage("user", "x")]) + 5


async def test_utf8_split_across_tokens_streams_as_whole_characters(
    make_engine: MakeEngine, tiny_script_model_path: Path, tiny_script: str
) -> None:
    engine = await make_engine(tiny_script_model_path)
    chunks = [c async for c in engine.stream(ask("Say it"))]
    texts = [c.text for c in chunks if c.text]
    assert "".join(texts) == tiny_script
    assert "\ufffd" not in "".join(texts)
    by_text = {c.text: c.tokens for c in chunks if c.text}
    assert by_text["中"] == 3 and by_text["😀"] == 4  # several tokens, one whole character
    assert chunks[-1].stats is not None and chunks[-1].stats.finish_reason == "stop"


@pytest.mark.parametrize(
    ("stop", "expected"),
    [(["€"], "Hi 中é"), (["é€"], "Hi 中"), (["éX"], None), (["Hi"], "")],
)
async def test_stop_strings_end_the_answer_before_them(
    make_engine: MakeEngine, tiny_script_model_path: Path, tiny_script: str, stop, expected
) -> None:
    engine = await make_engine(tiny_script_model_path)
    text, stats = await answer(engine, ask("Say it", stop=stop))
    assert text == (tiny_script if expected is None else expected)
    assert stats.finish_reason == "stop"


async def _first_text(stream: AsyncIterator[Chunk]) -> Chunk:
    async for chunk in stream:
        if chunk.text:
            return chunk
    raise AssertionError("no text")


async def _until_idle(engine: LlamaCppEngine) -> None:
    for _ in range(500):
        if engine.stats().active == 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the engine is still busy")


async def test_closing_the_stream_cancels_and_frees_the_slot(make_engine: MakeEngine) -> None:
    engine = await make_engine(slots=1, max_tokens=2000)
    stream = engine.stream(ask("Go on and on"))
    await _first_text(stream)
    await stream.aclose()  # type: ignore[attr-defined]
    await _until_idle(engine)
    assert engine.stats().extra["cancelled"] == 1
    assert engine.stats().generated_tokens < 2000
    text, stats = await answer(engine, ask("Next", max_tokens=10))  # the only slot is free
    assert stats.finish_reason == "length" and text


async def test_cancelling_the_consuming_task_cancels_the_request(make_engine: MakeEngine) -> None:
    engine = await make_engine(slots=1, max_tokens=2000)
    started = asyncio.Event()

    async def consume() -> None:
        async for chunk in engine.stream(ask("Go on and on")):
            if chunk.text:
                started.set()

    task = asyncio.create_task(consume())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await _until_idle(engine)
    assert engine.stats().extra["cancelled"] == 1
    assert engine.stats().generated_tokens < 2000


async def test_waiting_queue_reports_positions_and_has_a_bound(make_engine: MakeEngine) -> None:
    engine = await make_engine(slots=1, max_queue=2, max_tokens=2000)
    running = engine.stream(ask("Long answer", "a"))
    await _first_text(running)
    second, third = engine.stream(ask("b", "b")), engine.stream(ask("c", "c", max_tokens=10))
    assert (await anext(second)).queue_position == 1
    assert (await anext(third)).queue_position == 2
    assert engine.stats().queued == 2
    with pytest.raises(EngineBusy):
        await anext(engine.stream(ask("d", "d")))
    await second.aclose()  # type: ignore[attr-defined]
    assert (await anext(third)).queue_position == 1
    await running.aclose()  # type: ignore[attr-defined]
    rest = [c async for c in third]
    assert rest[-1].done and "".join(c.text for c in rest)
    assert engine.stats().extra["rejected_busy"] == 1


async def test_no_waiting_allowed_means_busy_at_once(make_engine: MakeEngine) -> None:
    engine = await make_engine(slots=1, max_queue=0, max_tokens=2000)
    running = engine.stream(ask("Long answer"))
    await _first_text(running)
    with pytest.raises(EngineBusy):
        await anext(engine.stream(ask("Another")))
    await running.aclose()  # type: ignore[attr-defined]


async def test_too_long_prompts_are_refused_and_answers_fit_the_context(
    make_engine: MakeEngine,
) -> None:
    engine = await make_engine(slots=1, context_size=256, max_tokens=500)
    with pytest.raises(EngineError, match="too long"):
        await anext(engine.stream(ask("x" * 400)))
    _, stats = await greedy(engine, "y" * 150)
    assert stats.finish_reason == "length"
    assert stats.prompt_tokens + stats.generated_tokens <= 256


async def test_a_short_question_gets_its_first_token_in_its_first_step_beside_long_ones(
    make_engine: MakeEngine,
) -> None:
    """Two long questions arriving together must not hold a short one back: it is read
    whole in the step after it gets a slot, and the long ones take turns, in steps."""
    engine = await make_engine(slots=4, max_tokens=4)
    long_text = "word " * 10
    while engine.count_tokens([SYSTEM, ChatMessage("user", long_text)]) < 1500:
        long_text += "word " * 10
    results = await asyncio.gather(
        greedy(engine, long_text, "long-a"),
        greedy(engine, "and " + long_text, "long-b"),
        greedy(engine, "Hi?", "short"),
    )
    (_, a), (_, b), (_, short) = results
    assert a.prompt_tokens > 1000 and b.prompt_tokens > 1000
    assert short.steps_to_first_token == 0
    # The long ones are read in chunks of at most 128 tokens, one after the other.
    first, second = sorted([a, b], key=lambda s: s.steps_to_first_token)
    assert first.steps_to_first_token >= first.prompt_tokens // 128
    assert second.steps_to_first_token >= (first.prompt_tokens + second.prompt_tokens) // 128


async def test_engines_start_and_close_one_after_another(make_engine: MakeEngine) -> None:
    for _ in range(3):
        engine = await make_engine()
        assert (await greedy(engine, "Hi"))[0]
        await engine.close()
    with pytest.raises(EngineError):
        engine.count_tokens([ChatMessage("user", "closed")])


async def test_counting_tokens_while_answers_stream_gives_the_same_counts(
    make_engine: MakeEngine,
) -> None:
    engine = await make_engine(max_tokens=1500)
    questions = [[ChatMessage("user", f"question {i}: " + "why? " * i)] for i in range(300)]
    streams = [asyncio.ensure_future(answer(engine, ask(f"long {i}", str(i)))) for i in range(4)]
    while_busy = []
    for messages in questions:
        while_busy.append(engine.count_tokens(messages))
        await asyncio.sleep(0)
    assert not all(s.done() for s in streams)  # the counting overlapped the decoding
    await asyncio.gather(*streams)
    idle = await make_engine()
    assert while_busy == [idle.count_tokens(m) for m in questions]


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_the_sampler_draws_what_the_plain_penalty_first_chain_draws(
    tiny_model_path: Path, temperature: float
) -> None:
    """The engine's sampler skips most of the vocabulary before the repeat penalty; a strong
    penalty on the tiny model's random logits shows any token that shortcut would change."""
    import llama_cpp as lc

    from llm.native import (
        PENALTY_WINDOW,
        Batch,
        ContextParams,
        NativeContext,
        NativeModel,
        Sampler,
        SamplingParams,
        init_backend,
    )

    init_backend()
    model = NativeModel(tiny_model_path)
    ctx = NativeContext(model, ContextParams(n_seq=1, n_ctx_seq=512, n_batch=64, threads=1))
    params = SamplingParams(temperature=temperature, top_p=0.9, top_k=8, repeat_penalty=1.8, seed=7)
    ours = Sampler(model, params)
    # The same chain the textbook way: penalties first, over the whole vocabulary.
    reference = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
    chain = [lc.llama_sampler_init_penalties(model.n_vocab, PENALTY_WINDOW, 1.8, 0.0, 0.0)]
    if temperature <= 0:
        chain.append(lc.llama_sampler_init_greedy())
    else:
        chain += [
            lc.llama_sampler_init_top_k(8),
            lc.llama_sampler_init_top_p(0.9, 1),
            lc.llama_sampler_init_temp(temperature),
            lc.llama_sampler_init_dist(7),
        ]
    for sampler in chain:
        lc.llama_sampler_chain_add(reference, sampler)
    batch = Batch(64)
    try:
        prompt = model.tokenize("<|im_start|>user\nhello there<|im_end|>\n", special=True)
        at = batch.add_many(prompt, 0, 0, True)
        drawn: list[int] = []
        for step in range(300):
            assert ctx.decode(batch) == 0
            token = ours.sample(ctx, at)
            assert lc.llama_sampler_sample(reference, ctx.ptr, at) == token, (
                f"step {step}: {drawn[-8:]}"
            )
            drawn.append(token)
            batch.clear()
            at = batch.add(token, len(prompt) + step, 0, True)
        assert len(set(drawn)) > 20  # the penalty kept the draws moving through the vocabulary
    finally:
        ours.free()
        lc.llama_sampler_free(reference)
        batch.free()
        ctx.free()
        model.free()
