"""The engine on the real model (~470 MiB): optional, set EDGEQA_TEST_MODEL=/path/to/model.gguf."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest

from bot.config import EngineSettings
from llm.base import ChatMessage, GenerationRequest
from llm.llama_engine import LlamaCppEngine

MODEL = os.environ.get("EDGEQA_TEST_MODEL", "")
pytestmark = [
    pytest.mark.model,
    pytest.mark.skipif(not MODEL, reason="EDGEQA_TEST_MODEL is not set (path to a real GGUF)"),
]


@pytest.fixture
async def engine() -> AsyncIterator[LlamaCppEngine]:
    engine = LlamaCppEngine(EngineSettings(slots=2, context_size=1024, max_tokens=48), model=MODEL)
    await engine.start()
    yield engine
    await engine.close()


async def test_a_chinese_answer_streams_as_whole_characters(engine: LlamaCppEngine) -> None:
    request = GenerationRequest(
        [ChatMessage("user", "用中文写一句关于猫的短句，并加一个表情符号。")],
        conversation_id="zh",
        temperature=0.0,
    )
    chunks = [c async for c in engine.stream(request)]
    text = "".join(c.text for c in chunks)
    assert any("\u4e00" <= ch <= "\u9fff" for ch in text)
    assert "\ufffd" not in text
    stats = chunks[-1].stats
    assert stats is not None
    assert stats.prompt_tokens == engine.count_tokens(request.messages)


async def test_a_follow_up_reuses_the_thread(engine: LlamaCppEngine) -> None:
    first = [ChatMessage("system", "Be brief."), ChatMessage("user", "Name a primary colour.")]
    chunks = [c async for c in engine.stream(GenerationRequest(first, "t", temperature=0.0))]
    answer = "".join(c.text for c in chunks)
    follow = [*first, ChatMessage("assistant", answer), ChatMessage("user", "Another one?")]
    done = [c async for c in engine.stream(GenerationRequest(follow, "t", temperature=0.0))][-1]
    assert done.stats is not None
    assert done.stats.reused_tokens >= engine.count_tokens(first)
