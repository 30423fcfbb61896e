"""OpenAICompatEngine: stream answers from any OpenAI-compatible /v1/chat/completions server.

llama.cpp's llama-server, vLLM, Ollama and llama-cpp-python's server all speak it. Failing
to connect (or a 502/503/504 while the server loads) is retried with backoff until the first
token arrives; after that a dropped stream is an error, since the answer is half shown.
Token counts are estimates here (the API has no tokenizer endpoint), on the safe side.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any

import aiohttp

from bot.config import EngineSettings
from llm.base import (
    AnswerSpeed,
    ChatMessage,
    Chunk,
    EngineError,
    EngineStats,
    GenerationRequest,
    ModelError,
    RequestStats,
)
from llm.waitline import WaitLine

log = logging.getLogger(__name__)

RETRY_STATUSES = {502, 503, 504}


class _Retry(Exception):
    pass


class OpenAICompatEngine:
    name = "openai"

    def __init__(self, settings: EngineSettings, *, api_key: str | None = None) -> None:
        self.settings = settings
        self.context_size = settings.context_size
        self.base_url = settings.openai_base_url.rstrip("/")
        self.model = settings.openai_model
        self._api_key = api_key
        self._session: aiohttp.ClientSession | None = None
        self._line = WaitLine(settings.slots, settings.max_queue)
        self._totals: dict[str, float] = dict.fromkeys(
            ("requests", "prompt", "generated", "ttft", "first", "busy", "errors"), 0.0
        )
        self._answer_speed = AnswerSpeed()

    async def start(self) -> None:
        if self._session is not None:
            return
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        self._session = aiohttp.ClientSession(headers=headers)
        try:
            models = await self._with_retries(self._list_models)
        except EngineError as exc:
            await self.close()
            raise ModelError(
                f"cannot reach the model server at {self.base_url} ({exc}); "
                "check engine.openai_base_url"
            ) from None
        if self.model == "default" and models:
            self.model = models[0]
        log.info("model server %s ready, model %s", self.base_url, self.model)

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def count_tokens(self, messages: Sequence[ChatMessage]) -> int:
        """An upper-side estimate: ~3 UTF-8 bytes per token plus per-message overhead."""
        total = 3
        for message in messages:
            total += 4 + (len(message.content.encode("utf-8")) + 2) // 3
        return total

    def stats(self) -> EngineStats:
        t = self._totals
        return EngineStats(
            requests=int(t["requests"]),
            active=self._line.running,
            queued=self._line.queued,
            prompt_tokens=int(t["prompt"]),
            generated_tokens=int(t["generated"]),
            mean_time_to_first_token=t["ttft"] / t["first"] if t["first"] else 0.0,
            tokens_per_second=t["generated"] / t["busy"] if t["busy"] else 0.0,
            answer_tokens_per_second=self._answer_speed.tokens_per_second,
            extra={"errors": t["errors"], "slots": float(self._line.capacity)},
        )

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        if self._session is None:
            raise EngineError("the engine is not running")
        submitted = time.monotonic()
        ticket = self._line.join()
        try:
            while not ticket.admitted:
                yield Chunk(queue_position=ticket.position)
                await ticket.moved()
            self._totals["requests"] += 1
            started = time.monotonic()
            try:
                async with contextlib.aclosing(self._generate(request, submitted)) as chunks:
                    async for chunk in chunks:
                        yield chunk
            finally:
                self._totals["busy"] += time.monotonic() - started
        finally:
            self._line.leave(ticket)

    async def _generate(
        self, request: GenerationRequest, submitted: float
    ) -> AsyncGenerator[Chunk, None]:
        s = self.settings
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": request.max_tokens or s.max_tokens,
            "temperature": s.temperature if request.temperature is None else request.temperature,
            "top_p": s.top_p,
        }
        seed = s.seed if request.seed is None else request.seed
        if seed >= 0:
            body["seed"] = seed
        stop = [*s.stop, *request.stop]
        if stop:
            body["stop"] = stop[:4]  # the OpenAI API allows at most four
        response = await self._with_retries(lambda: self._open(body))
        first: float | None = None
        chunks, usage, reason = 0, None, ""
        complete = False
        try:
            async for event in _events(response):
                if "error" in event:
                    raise EngineError(f"the model server failed: {_error_text(event)}")
                usage = event.get("usage") or usage
                for choice in event.get("choices") or []:
                    text = (choice.get("delta") or {}).get("content") or ""
                    reason = choice.get("finish_reason") or reason
                    if text:
                        first = first or time.monotonic()
                        chunks += 1
                        yield Chunk(text=text, tokens=1)
            complete = True
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._totals["errors"] += 1
            raise EngineError(f"the model server stopped answering: {_describe(exc)}") from None
        finally:
            # Closing (not releasing) a half-read stream drops the connection, which tells
            # the server to stop generating.
            if complete:
                response.release()
            else:
                response.close()
        now = time.monotonic()
        prompt = int(usage["prompt_tokens"]) if usage else self.count_tokens(request.messages)
        generated = int(usage["completion_tokens"]) if usage else chunks
        self._totals["prompt"] += prompt
        self._totals["generated"] += generated
        if first is not None:
            self._totals["ttft"] += first - submitted
            self._totals["first"] += 1
        rate = (generated - 1) / (now - first) if first and generated > 1 and now > first else 0.0
        stats = RequestStats(
            prompt_tokens=prompt,
            generated_tokens=generated,
            time_to_first_token=first - submitted if first else 0.0,
            tokens_per_second=rate,
            finish_reason="length" if reason == "length" else "stop",
        )
        self._answer_speed.add(stats)
        yield Chunk(done=True, stats=stats)

    async def _open(self, body: dict[str, Any]) -> aiohttp.ClientResponse:
        assert self._session is not None
        response = await self._session.post(
            f"{self.base_url}/chat/completions", json=body, timeout=self._timeout()
        )
        if response.status in RETRY_STATUSES:
            response.release()
            raise _Retry(f"HTTP {response.status}")
        if response.status >= 400:
            detail = await response.text()
            response.release()
            raise EngineError(
                f"the model server refused the request (HTTP {response.status}): "
                f"{_error_text(_json_or_text(detail))}"
            )
        return response

    async def _list_models(self) -> list[str]:
        assert self._session is not None
        async with self._session.get(f"{self.base_url}/models", timeout=self._timeout()) as resp:
            if resp.status in RETRY_STATUSES:
                raise _Retry(f"HTTP {resp.status}")
            if resp.status >= 400:
                raise EngineError(f"HTTP {resp.status} from {self.base_url}/models")
            data = await resp.json(content_type=None)
        return [str(m["id"]) for m in data.get("data", []) if isinstance(m, dict) and "id" in m]

    async def _with_retries(self, attempt: Any) -> Any:
        retries = self.settings.openai_connect_retries
        for number in range(retries + 1):
            try:
                return await attempt()
            except (_Retry, aiohttp.ClientConnectionError, TimeoutError) as exc:
                if number == retries:
                    self._totals["errors"] += 1
                    raise EngineError(
                        f"cannot reach the model server at {self.base_url}: {_describe(exc)}"
                    ) from None
                delay = min(0.5 * 2**number, 8.0)
                log.warning("model server: %s; retrying in %.1f s", _describe(exc), delay)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    def _timeout(self) -> aiohttp.ClientTimeout:
        limit = self.settings.openai_timeout
        return aiohttp.ClientTimeout(total=None, connect=min(limit, 10.0), sock_read=limit)


async def _events(response: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any]]:
    """Server-sent events' JSON payloads, until [DONE]."""
    async for raw in response.content:
        line = raw.decode("utf-8", "replace").strip()
        if not line.startswith("data:"):
            continue
        payload = line[5:].strip()
        if payload == "[DONE]":
            return
        try:
            event = json.loads(payload)
        except json.JSONDecodeError:
            continue
        if isinstance(event, dict):
            yield event


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _error_text(data: Any) -> str:
    if isinstance(data, dict):
        error = data.get("error", data)
        if isinstance(error, dict):
            return str(error.get("message") or error)[:300]
        return str(error)[:300]
    return str(data)[:300]


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
