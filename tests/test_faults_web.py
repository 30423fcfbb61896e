"""The browser chat when its event stream drops: the whole bot (the real core, SQLite,
llama.cpp on the tiny model) serving the page's HTTP API, read with aiohttp's client the
way the page does (static/events.js): an EventSource on /api/events that, once cut,
reconnects by itself (the server asks for `retry: 1500`) and, on the new stream's
"hello", resyncs from /api/history. Whatever the stream missed, the answer must then be
there in full, once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from adapters.web import WebChatAdapter
from bot.app import App
from bot.types import ConversationKey
from tests.harness import as_shown, eventually, running_app, test_settings
from tests.web_support import EventStream

BROWSER = "browser-faults-1"
THREAD = "thread-faults-1"
KEY = ConversationKey("web", "", BROWSER, THREAD)


@pytest.fixture
async def chat(tmp_path: Path, tiny_model_path: Path) -> AsyncIterator[tuple[App, WebChatAdapter]]:
    settings = test_settings(
        tmp_path,
        tiny_model_path,
        # Long enough (over a second on the tiny model) to cut the stream mid-answer.
        EDGEQA_ENGINE__MAX_TOKENS="3000",
        EDGEQA_ENGINE__CONTEXT_SIZE="3400",
    )
    adapter = WebChatAdapter(settings)
    async with running_app(settings, [adapter]) as app:
        yield app, adapter


@asynccontextmanager
async def stream(http: aiohttp.ClientSession, base: str) -> AsyncIterator[EventStream]:
    """One EventSource connection: its `data:` events, in order (`seen`)."""
    async with http.get(f"{base}/api/events", params={"browser": BROWSER}) as response:
        assert response.status == 200
        assert await response.content.readline() == b"retry: 1500\n"  # "reconnect, please"
        events = EventStream(response, wait=20)
        assert (await events.next())["type"] == "hello"
        yield events


async def first_of(events: EventStream, kind: str) -> dict[str, Any]:
    """The next event of type `kind` (those before it are skipped, still in `seen`)."""
    return (await events.until(lambda event: event["type"] == kind))[-1]


async def history(http: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    params = {"browser": BROWSER, "thread": THREAD}
    async with http.get(f"{base}/api/history", params=params) as response:
        assert response.status == 200
        data: dict[str, Any] = await response.json()
        return data


async def ask(http: aiohttp.ClientSession, base: str, text: str) -> str:
    body = {"browser": BROWSER, "thread": THREAD, "text": text}
    async with http.post(f"{base}/api/ask", json=body) as response:
        assert response.status == 202
        return str((await response.json())["id"])


def replies(events: list[dict[str, Any]], question: str) -> list[str]:
    return [e["text"] for e in events if e["type"] == "reply" and e["question"] == question]


async def test_a_stream_cut_mid_answer_resyncs_to_the_whole_answer_once(chat) -> None:
    app, adapter = chat
    base = f"http://127.0.0.1:{app.port}"
    async with aiohttp.ClientSession() as http:
        async with stream(http, base) as first:
            question = await ask(http, base, "tell me a long story")
            await first_of(first, "reply")  # the answer has begun...
        # ...and the connection is gone (a network blip, a proxy timeout, a laptop lid).
        async with stream(http, base) as second:  # the EventSource is back
            resync = await history(http, base)
            if not resync["turns"]:  # still being written: it shows live, then finishes
                [live] = resync["live"]
                assert live["id"] == question and live["question"] == "tell me a long story"
                while (await first_of(second, "done"))["question"] != question:
                    pass
            await eventually(lambda: adapter.state.subscriber_count == 1)  # the cut one left
        after = await history(http, base)
    [turn] = after["turns"]
    assert after["live"] == []
    [stored] = await app.repo.load_history(KEY)
    assert turn["answer"] == stored.answer and turn["question"] == "tell me a long story"
    # Every text either stream showed was a step of that same answer; the last one whole.
    shown = replies(first.seen, question) + replies(second.seen, question)
    assert shown and all(as_shown(stored.answer).startswith(text) for text in shown)
    if replies(second.seen, question):
        assert replies(second.seen, question)[-1] == as_shown(stored.answer)


async def test_an_answer_written_while_no_stream_was_open_is_there_after_reconnecting(
    chat,
) -> None:
    app, adapter = chat
    base = f"http://127.0.0.1:{app.port}"
    async with aiohttp.ClientSession() as http:
        async with stream(http, base):
            pass  # cut before anything happened
        await ask(http, base, "anyone?")
        await eventually(lambda: adapter.state.running(KEY) == 0, within=30)
        async with stream(http, base):
            resync = await history(http, base)
    [stored] = await app.repo.load_history(KEY)
    assert resync["live"] == []
    assert [(t["question"], t["answer"]) for t in resync["turns"]] == [("anyone?", stored.answer)]
