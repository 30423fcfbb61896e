"""OpenAICompatEngine against a real llama-cpp-python server (and a fake one for failures)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from bot.config import EngineSettings
from llm.base import ChatMessage, EngineBusy, EngineError, GenerationRequest, ModelError
from llm.openai_engine import OpenAICompatEngine
from tests.fakes.common import serve
from tests.harness import free_port
from tests.model_server import llama_cpp_server


@pytest.fixture(scope="module")
def llama_server(tiny_script_model_path: Path) -> Iterator[str]:
    """`python -m llama_cpp.server` on loopback, serving the tiny scripted model."""
    with llama_cpp_server(tiny_script_model_path, n_ctx=512) as base:
        yield f"{base}/v1"


def _settings(base: str, **kw: Any) -> EngineSettings:
    return EngineSettings(kind="openai", openai_base_url=base, **kw)


async def _answer(engine: OpenAICompatEngine, request: GenerationRequest):
    chunks = [c async for c in engine.stream(request)]
    assert chunks[-1].done and chunks[-1].stats is not None
    return "".join(c.text for c in chunks), chunks[-1].stats


def _ask(text: str = "Say it", **kw: Any) -> GenerationRequest:
    return GenerationRequest([ChatMessage("user", text)], **kw)


async def test_streams_an_answer_from_a_real_llama_cpp_server(
    llama_server: str, tiny_script: str
) -> None:
    engine = OpenAICompatEngine(_settings(llama_server))
    await engine.start()
    try:
        assert engine.model != "default"  # taken from the server's /models
        text, stats = await _answer(engine, _ask())
        assert text == tiny_script
        assert stats.finish_reason == "stop" and stats.generated_tokens > 0
        text, stats = await _answer(engine, _ask(stop=["€"]))
        assert text == tiny_script.split("€")[0]
        assert engine.stats().requests == 2
        assert engine.stats().answer_tokens_per_second > 0
    finally:
        await engine.close()


async def test_closing_the_stream_frees_the_slot(llama_server: str, tiny_script: str) -> None:
    engine = OpenAICompatEngine(_settings(llama_server, slots=1, max_queue=0))
    await engine.start()
    try:
        stream = engine.stream(_ask())
        first = await anext(stream)
        assert first.text
        await stream.aclose()  # type: ignore[attr-defined]
        assert engine.stats().active == 0
        assert (await _answer(engine, _ask()))[0] == tiny_script
    finally:
        await engine.close()


async def test_an_unreachable_server_is_a_model_error_at_start() -> None:
    settings = _settings(f"http://127.0.0.1:{free_port()}/v1", openai_connect_retries=1)
    engine = OpenAICompatEngine(settings)
    with pytest.raises(ModelError, match="openai_base_url"):
        await engine.start()


class FakeServer:
    """Scripted OpenAI-compatible responses for the failure paths."""

    def __init__(self) -> None:
        self.plan: list[str] = []  # per request: "503", "400", "ok", "drop", "hold"
        self.requests: list[dict[str, Any]] = []
        self.release = asyncio.Event()

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": "fake-model"}]})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(await request.json())
        step = self.plan.pop(0) if self.plan else "ok"
        if step == "503":
            return web.Response(status=503, text="loading")
        if step == "400":
            return web.json_response({"error": {"message": "bad model name"}}, status=400)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for word in ["Hello", " there"]:
            event = {"choices": [{"delta": {"content": word}, "finish_reason": None}]}
            await response.write(f"data: {json.dumps(event)}\n\n".encode())
            if step == "drop":
                request.transport.close()  # type: ignore[union-attr]
                return response
            if step == "hold":
                await self.release.wait()
        done = {"choices": [{"delta": {}, "finish_reason": "length"}]}
        usage = {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 2}}
        for last in (done, usage):
            await response.write(f"data: {json.dumps(last)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        return response


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeServer, str]]:
    server = FakeServer()
    app = web.Application()
    app.router.add_get("/v1/models", server.models)
    app.router.add_post("/v1/chat/completions", server.chat)
    runner, port = await serve(app)
    yield server, f"http://127.0.0.1:{port}/v1"
    server.release.set()
    await runner.cleanup()


async def test_retries_before_the_first_token_then_streams(fake) -> None:
    server, base = fake
    engine = OpenAICompatEngine(_settings(base, openai_connect_retries=3), api_key="sk-x")
    await engine.start()
    server.plan = ["503", "503", "ok"]
    text, stats = await _answer(engine, _ask(max_tokens=2, seed=5))
    await engine.close()
    assert text == "Hello there"
    assert (stats.prompt_tokens, stats.generated_tokens, stats.finish_reason) == (7, 2, "length")
    assert len(server.requests) == 3
    body = server.requests[-1]
    assert body["model"] == "fake-model" and body["stream"] is True
    assert body["max_tokens"] == 2 and body["seed"] == 5


async def test_a_drop_after_the_first_token_is_an_error_not_a_retry(fake) -> None:
    server, base = fake
    engine = OpenAICompatEngine(_settings(base, openai_connect_retries=3))
    await engine.start()
    server.plan = ["drop"]
    received = []
    with pytest.raises(EngineError, match="stopped answering"):
        async for chunk in engine.stream(_ask()):
            received.append(chunk.text)
    await engine.close()
    assert received == ["Hello"]
    assert len(server.requests) == 1


async def test_a_refused_request_names_the_servers_reason(fake) -> None:
    server, base = fake
    engine = OpenAICompatEngine(_settings(base))
    await engine.start()
    server.plan = ["400"]
    with pytest.raises(EngineError, match="bad model name"):
        await _answer(engine, _ask())
    await engine.close()


async def test_waiting_positions_and_busy_past_the_queue_bound(fake) -> None:
    server, base = fake
    engine = OpenAICompatEngine(_settings(base, slots=1, max_queue=1))
    await engine.start()
    server.plan = ["hold"]
    running = engine.stream(_ask())
    assert (await anext(running)).text == "Hello"
    waiting = engine.stream(_ask())
    assert (await anext(waiting)).queue_position == 1
    with pytest.raises(EngineBusy):
        await anext(engine.stream(_ask()))
    server.release.set()
    rest = [c async for c in running]
    assert rest[-1].done
    assert "".join(c.text for c in [c async for c in waiting]) == "Hello there"
    await engine.close()
