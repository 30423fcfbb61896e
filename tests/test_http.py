"""/healthz and /metrics on the bot's HTTP server, as an operator's probe sees them."""

from __future__ import annotations

import re
from pathlib import Path

import aiohttp
from sqlalchemy import text

from bot.types import ConversationKey, IncomingMessage
from tests.doubles import RecordingAdapter, ScriptedEngine
from tests.harness import eventually, running_app, test_settings


async def get(port: int, path: str) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}{path}") as response,
    ):
        return response.status, await response.text()


async def test_health_and_metrics(tmp_path: Path) -> None:
    chat = RecordingAdapter(name="web")
    settings = test_settings(tmp_path, EDGEQA_HISTORY__PRUNE_INTERVAL="0.2s")
    async with running_app(settings, [chat], engine=ScriptedEngine("one two three")) as app:
        status, body = await get(app.port, "/healthz")
        assert status == 200
        assert '"model_loaded": true' in body and '"database": true' in body

        key = ConversationKey("web", "", "b", "t")
        await app.service.handle(IncomingMessage(key, "u", "hello"))
        status, metrics = await get(app.port, "/metrics")
        assert status == 200
        assert 'edgeqa_questions_total{platform="web"} 1' in metrics
        assert "edgeqa_tokens_generated_total 3" in metrics
        assert 'edgeqa_answers_total{platform="web",status="complete"} 1' in metrics
        assert re.search(r'edgeqa_edits_sent_total\{platform="web"\} [1-9]', metrics)
        assert 'edgeqa_time_to_first_token_seconds_bucket{le="+Inf"} 1' in metrics
        assert "edgeqa_queue_length 0" in metrics
        # Every sample line is "name{labels} value": the format Prometheus parses.
        for line in metrics.splitlines():
            if not line.startswith("#"):
                assert re.fullmatch(r'[a-z_]+(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? \S+', line)

        # The pruning job runs on its interval and its count shows up here.
        await app.repo.touch(ConversationKey("web", "", "old", "t"))
        async with app.repo.db.begin() as conn:  # type: ignore[attr-defined]
            await conn.execute(
                text("update conversations set last_active_at = '2000-01-01 00:00:00'")
            )

        async def pruned() -> bool:
            _, page = await get(app.port, "/metrics")
            return "edgeqa_pruned_conversations_total 2" in page

        await eventually(lambda: app.metrics.get("edgeqa_pruned_conversations_total") == 2)
        assert await pruned()


async def test_health_fails_when_the_database_is_gone(tmp_path: Path) -> None:
    chat = RecordingAdapter(name="web")
    async with running_app(test_settings(tmp_path), [chat], engine=ScriptedEngine()) as app:
        await app.repo.close()
        status, body = await get(app.port, "/healthz")
        assert status == 503 and '"database": false' in body
        await app.repo.start()
