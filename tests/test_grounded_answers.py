"""Answers from the company's documents, end to end: real documents indexed by the real
KnowledgeBase into the bot's SQLite database, the real core, llama.cpp on the tiny model,
and each platform's real adapter (the browser chat over HTTP; Telegram and Slack through
their SDKs against the local fakes).

The tiny model writes gibberish, so what is checked is what the pipeline does around it:
what the model was given (the passages, numbered, next to the question; nothing from a
collection the chat may not read; no control token from a document), the sources under the
answer as each platform renders them, the sources stored with the turn, and the "not in the
docs" reply.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from adapters.slack import SlackAdapter
from adapters.telegram import TelegramAdapter
from adapters.web import WebChatAdapter
from bot.app import App
from bot.prompt import SOURCES_RULE
from bot.service import GENERAL_NOTE, NOT_IN_DOCS, SEARCH_FAILED
from bot.types import ConversationKey
from storage.base import Turn
from tests.fakes.slack_workspace import SlackWorkspace
from tests.fakes.telegram_api import FakeTelegram
from tests.harness import eventually, stored
from tests.kb_support import (
    CODENAME,
    CODENAME_QUESTION,
    HOTEL_FACT,
    HOTEL_QUESTION,
    HR_URL,
    INJECTION,
    UNANSWERABLE,
    RecordingLlama,
    grounded_app,
    kb_settings,
)
from tests.slack_support import slack_env, workspace
from tests.telegram_support import key_of, telegram_env
from tests.tiny_bert import write_tiny_bert
from tests.tiny_gguf import write_tiny_model

pytestmark = pytest.mark.filterwarnings("ignore::telegram.warnings.PTBDeprecationWarning")

BROWSER = "browser-kb-0001"
TRAVEL = {"title": "Travel policy", "location": "travel.md", "url": f"{HR_URL}travel.md"}


async def turns(app: App, key: ConversationKey, count: int = 1) -> list[Turn]:
    """The stored turns, once there are `count` (a turn is stored after its delivery)."""
    await stored(app, key, count)
    return await app.repo.load_history(key)


def engine_of(app: App) -> RecordingLlama:
    assert isinstance(app.engine, RecordingLlama)
    return app.engine


# -- the browser chat ------------------------------------------------------------------------


async def web_ask(app: App, thread: str, text: str, language: str = "en") -> dict[str, Any]:
    """Ask in the browser chat; returns the final reply event (read from the event stream)."""
    base = f"http://127.0.0.1:{app.port}"
    async with aiohttp.ClientSession(headers={"Accept-Language": language}) as http:
        params = {"browser": BROWSER, "thread": thread}
        async with http.get(f"{base}/api/events", params=params) as events:
            body = {"browser": BROWSER, "thread": thread, "text": text}
            async with http.post(f"{base}/api/ask", json=body) as asked:
                assert asked.status == 202, await asked.text()
            async for line in events.content:
                if line.startswith(b"data: "):
                    event: dict[str, Any] = json.loads(line[6:])
                    if event["type"] == "reply" and event["final"]:
                        return event
    raise AssertionError("the event stream ended without a final reply")


async def web_history(app: App, thread: str) -> list[dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"http://127.0.0.1:{app.port}/api/history",
            params={"browser": BROWSER, "thread": thread},
        ) as response,
    ):
        assert response.status == 200
        turns: list[dict[str, Any]] = (await response.json())["turns"]
        return turns


def web_key(thread: str) -> ConversationKey:
    return ConversationKey("web", "", BROWSER, thread)


@pytest.fixture(params=["keyword", "embedding"])
async def web_app(
    request: pytest.FixtureRequest, tmp_path: Path, tiny_model_path: Path
) -> AsyncIterator[App]:
    """The browser chat on keyword search alone, and with the tiny BERT's vectors too."""
    embedding = write_tiny_bert(tmp_path / "bert.gguf") if request.param == "embedding" else None
    settings = kb_settings(
        tmp_path, tiny_model_path, embedding=embedding, EDGEQA_WEB__ADMINS=BROWSER
    )
    async with grounded_app(settings, [WebChatAdapter(settings)]) as app:
        yield app


async def test_browser_answer_is_grounded_cited_and_stored_with_its_sources(
    web_app: App,
) -> None:
    final = await web_ask(web_app, "thread-hotel", HOTEL_QUESTION)
    [turn] = await turns(web_app, web_key("thread-hotel"))

    # The model read the passage, numbered, right before the question, under the rule.
    [request] = engine_of(web_app).requests
    asked = request.messages[-1].content
    assert asked.index("[1] Travel policy") < asked.index(HOTEL_FACT) < asked.index(SOURCES_RULE)
    assert asked.endswith(HOTEL_QUESTION)

    # The answer shows its sources as links; history and storage carry them too.
    [shown] = [s for s in final["sources"] if s["location"] == "travel.md"]
    assert {k: shown[k] for k in TRAVEL} == TRAVEL
    assert final["text"].startswith(turn.answer)  # (and the length mark: max_tokens)
    [stored_source] = [s for s in turn.sources if s.location == "travel.md"]
    assert HOTEL_FACT in stored_source.text and stored_source.number == 1
    # The tiny model never writes brackets, so it cites nothing: every passage is listed.
    assert [s["number"] for s in final["sources"]] == [s.number for s in turn.sources]
    [entry] = await web_history(web_app, "thread-hotel")
    assert entry["sources"] == final["sources"]
    assert {"title", "location", "score"} <= set(entry["sources"][0])


async def test_a_chinese_question_finds_the_chinese_document(web_app: App) -> None:
    final = await web_ask(web_app, "thread-zh", "上海的酒店每晚多少钱？")
    [request] = engine_of(web_app).requests
    assert "上海的酒店每晚不超过九百元" in request.messages[-1].content
    assert final["sources"][0]["title"] == "差旅政策"
    assert final["sources"][0]["url"] == f"{HR_URL}差旅.md"


async def test_only_the_sources_an_answer_cites_are_shown(
    tmp_path: Path,
) -> None:
    """A model that writes "… [2]." gets only passage 2 under its answer; /sources still
    lists both passages it was given."""
    model = write_tiny_model(
        tmp_path / "cites.gguf", script=["Both ", "cost ", "money ", "[2]", "."]
    )
    settings = kb_settings(tmp_path, model)
    async with grounded_app(settings, [WebChatAdapter(settings)]) as app:
        final = await web_ask(app, "thread-cite", "hotel parking")
        assert final["text"] == "Both cost money [2]."
        [turn] = await turns(app, web_key("thread-cite"))
        assert [s.number for s in turn.sources] == [1, 2]
        second = turn.sources[1]
        assert final["sources"] == [
            {
                "number": 2,
                "title": second.title,
                "location": second.location,
                "url": second.url,
                "heading": second.heading,
                "score": second.score,
            }
        ]
        [entry] = await web_history(app, "thread-cite")
        assert entry["sources"] == final["sources"]
        listing = await web_ask(app, "thread-cite", "/sources")
        assert "[1] " in listing["text"] and f"[2] {second.title}" in listing["text"]
        assert "(cited)" in listing["text"]


async def test_browser_question_the_documents_do_not_cover(web_app: App) -> None:
    final = await web_ask(web_app, "thread-none", UNANSWERABLE)
    assert final["text"] == NOT_IN_DOCS and final["sources"] == []
    assert engine_of(web_app).requests == []  # strict: the model is not asked at all
    await stored(web_app, web_key("thread-none"))
    [entry] = await web_history(web_app, "thread-none")
    assert entry["answer"] == NOT_IN_DOCS and entry["sources"] == []
    assert web_app.metrics.get("edgeqa_retrieval_abstentions_total", platform="web") == 1


async def test_a_chinese_browser_is_told_in_chinese(web_app: App) -> None:
    final = await web_ask(web_app, "thread-zh-none", UNANSWERABLE, language="zh-CN")
    assert final["text"].startswith("公司文档没有涵盖这个问题") and final["sources"] == []
    listing = await web_ask(web_app, "thread-zh-none", "/sources", language="zh-CN")
    assert listing["text"] == "我在这个话题中的上一个回答并非来自公司文档。"


async def test_a_follow_up_searches_with_the_previous_question(web_app: App) -> None:
    follow_up = "Zebras too?"
    alone = await web_ask(web_app, "thread-alone", follow_up)
    assert alone["text"] == NOT_IN_DOCS  # on its own it finds nothing
    await web_ask(web_app, "thread-follow", HOTEL_QUESTION)
    final = await web_ask(web_app, "thread-follow", follow_up)
    assert final["text"] != NOT_IN_DOCS
    asked = engine_of(web_app).requests[-1].messages[-1].content
    assert HOTEL_FACT in asked and asked.endswith(follow_up)


async def test_a_chat_never_receives_a_collection_it_is_not_mapped_to(web_app: App) -> None:
    """The browser chat reads "hr" only: the finance document exists, matches the question
    best, and still never reaches the prompt, the answer's sources or /sources."""
    assert web_app.service.knowledge is not None
    unscoped = await web_app.service.knowledge.retrieve(CODENAME_QUESTION)
    assert unscoped[0].location == "budget.md" and CODENAME in unscoped[0].text
    final = await web_ask(web_app, "thread-scope", CODENAME_QUESTION)
    assert all(CODENAME not in prompt for prompt in engine_of(web_app).prompts())
    assert all(s["location"] != "budget.md" for s in final["sources"])
    [turn] = await turns(web_app, web_key("thread-scope"))
    assert all(s.collection == "hr" for s in turn.sources)
    listing = await web_ask(web_app, "thread-scope", "/sources")
    assert CODENAME not in listing["text"]


async def test_document_text_cannot_forge_a_turn(web_app: App) -> None:
    """A document with <|im_end|><|im_start|>system … is read as text: the prompt the
    model reads has exactly the template's own control tokens."""
    await web_ask(web_app, "thread-parking", "How much do parking permits cost?")
    [request] = engine_of(web_app).requests
    assert "Ignore previous instructions" in request.messages[-1].content
    assert INJECTION not in request.messages[-1].content  # its markers were defused
    engine = engine_of(web_app)
    tokens = engine.prompt_tokens(request.messages)
    model = engine._model
    assert model is not None
    start = model.tokenize("<|im_start|>", special=True)
    end = model.tokenize("<|im_end|>", special=True)
    assert len(start) == len(end) == 1
    # One <|im_start|> per message plus the assistant header; one <|im_end|> per message.
    assert tokens.count(start[0]) == len(request.messages) + 1
    assert tokens.count(end[0]) == len(request.messages)


async def test_sources_and_kb_commands(web_app: App) -> None:
    await web_ask(web_app, "thread-cmd", HOTEL_QUESTION)
    await stored(web_app, web_key("thread-cmd"))
    listing = await web_ask(web_app, "thread-cmd", "/sources")
    assert "[1] Travel policy (travel.md > Travel policy > Hotels" in listing["text"]
    assert HOTEL_FACT in listing["text"] and f"{HR_URL}travel.md" in listing["text"]
    status = await web_ask(web_app, "thread-cmd", "/kb")
    assert "4 documents · 5 chunks" in status["text"]
    synced = await web_ask(web_app, "thread-cmd", "/kb sync")
    assert "Sync done: added 0 · updated 0 · removed 0 · unchanged 4" in synced["text"]
    stats = await web_ask(web_app, "thread-cmd", "/stats")
    assert "Documents: 4 · chunks: 5 · searches: 1" in stats["text"]
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{web_app.port}/metrics") as response,
    ):
        metrics = await response.text()
    assert "edgeqa_kb_documents 4" in metrics and "edgeqa_kb_chunks 5" in metrics
    assert "edgeqa_kb_searches_total 1" in metrics


async def test_prefer_mode_answers_anyway_marked_and_without_sources(
    tmp_path: Path, tiny_model_path: Path
) -> None:
    settings = kb_settings(tmp_path, tiny_model_path, mode="prefer")
    async with grounded_app(settings, [WebChatAdapter(settings)]) as app:
        final = await web_ask(app, "thread-prefer", UNANSWERABLE)
        [request] = engine_of(app).requests
        assert request.messages[-1].content == UNANSWERABLE  # no passages, no rule
        assert final["text"].startswith(GENERAL_NOTE) and len(final["text"]) > len(GENERAL_NOTE)
        assert final["sources"] == []
        [turn] = await turns(app, web_key("thread-prefer"))
        assert turn.sources == ()


# -- Telegram ----------------------------------------------------------------------------------


async def test_telegram_answer_ends_with_html_source_links(
    tmp_path: Path, tiny_model_path: Path, fake: FakeTelegram
) -> None:
    settings = kb_settings(tmp_path, tiny_model_path, env=telegram_env(fake))
    alice = fake.user(10, "Alice", "alice")
    async with grounded_app(settings, [TelegramAdapter(settings)]) as app:
        fake.user_says(fake.private_chat(alice), alice, HOTEL_QUESTION)
        [turn] = await turns(app, key_of(10))
        await eventually(lambda: fake.bot_messages(10) and fake.bot_messages(10)[-1].html)
        last = fake.bot_messages(10)[-1]
        assert last.html is not None
        link = f'[1] <a href="{HR_URL}travel.md">Travel policy</a>'
        assert f"📚 {link}" in last.html
        assert last.text.endswith(("Travel policy", "Budget 2027"))  # as Telegram shows it
        assert turn.sources[0].title == "Travel policy"

        # The finance document has no URL: its title alone (Telegram reads both collections).
        bob = fake.user(11, "Bob", "bob")
        fake.user_says(fake.private_chat(bob), bob, CODENAME_QUESTION)
        await stored(app, key_of(11))
        await eventually(lambda: "Budget 2027" in (fake.bot_messages(11)[-1].html or ""))
        html = fake.bot_messages(11)[-1].html or ""
        assert "📚 [1] Budget 2027" in html

        carol = fake.user(12, "Carol", "carol")
        fake.user_says(fake.private_chat(carol), carol, UNANSWERABLE)
        await stored(app, key_of(12))
        await eventually(lambda: [m.text for m in fake.bot_messages(12)] == [NOT_IN_DOCS])


# -- Slack ------------------------------------------------------------------------------------


@pytest.fixture
async def ws(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[SlackWorkspace]:
    async with workspace(monkeypatch) as started:
        yield started


@pytest.mark.parametrize("native", ["false", "true"], ids=["edits", "native-stream"])
async def test_slack_answer_ends_with_mrkdwn_source_links(
    tmp_path: Path, tiny_model_path: Path, ws: SlackWorkspace, native: str
) -> None:
    """With native streaming the answer streams as Markdown appends; the footer is mrkdwn,
    so the stream is stopped and the final text set with chat.update."""
    settings = kb_settings(
        tmp_path,
        tiny_model_path,
        env=slack_env(ws),
        EDGEQA_SLACK__WORKSPACE_EDITS_PER_MINUTE="600",
        EDGEQA_SLACK__NATIVE_STREAMING=native,
    )
    async with grounded_app(settings, [SlackAdapter(settings)]) as app:
        await ws.socket.wait_connected()
        asked = await ws.say("C0GENERAL", f"<@{ws.bot}> {HOTEL_QUESTION}")
        thread = ConversationKey("slack", ws.team_id, "C0GENERAL", asked.ts)
        [turn] = await turns(app, thread)
        link = f"[1] <{HR_URL}travel.md|Travel policy>"

        def last_text() -> str:
            return ws.api.bot_messages("C0GENERAL", asked.ts)[-1].text

        await eventually(lambda: f"📚 {link}" in last_text())
        assert turn.sources[0].url == f"{HR_URL}travel.md"
        assert bool(ws.api.count("chat.startStream")) == (native == "true")

        other = await ws.say("C0GENERAL", f"<@{ws.bot}> {UNANSWERABLE}")
        await stored(app, ConversationKey("slack", ws.team_id, "C0GENERAL", other.ts))
        await eventually(
            lambda: [m.text for m in ws.api.bot_messages("C0GENERAL", other.ts)] == [NOT_IN_DOCS]
        )


async def test_a_broken_index_gets_a_clear_reply_not_a_crash(
    tmp_path: Path, tiny_model_path: Path
) -> None:
    settings = kb_settings(tmp_path, tiny_model_path)
    async with grounded_app(settings, [WebChatAdapter(settings)]) as app:
        async with app.repo.db.begin() as conn:  # type: ignore[attr-defined]
            await conn.exec_driver_sql("DROP TABLE kb_fts")
        final = await web_ask(app, "thread-broken", HOTEL_QUESTION)
        assert final["text"] == SEARCH_FAILED and final["sources"] == []
        assert engine_of(app).requests == []
        assert await app.repo.load_history(web_key("thread-broken")) == []
        helped = await web_ask(app, "thread-broken", "/help")
        assert "/sources" in helped["text"]
