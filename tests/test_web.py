"""The browser chat's HTTP side through aiohttp's client: streaming events, history, commands,
bad input and the access token. The page itself is driven in test_web_browser.py."""

from __future__ import annotations

import asyncio
import contextlib
import itertools

import pytest
from pydantic import SecretStr

from adapters.web.adapter import FAILED
from adapters.web.routes import MAX_RUNNING_PER_THREAD
from bot.types import ConversationKey
from tests.web_support import (
    BROWSER,
    STEPS,
    ask,
    subscribed,
    web_server,
    web_settings,
)

FULL_ANSWER = "Answer to why?: " + "".join(STEPS)


async def history(client, thread: str, **headers: str):
    response = await client.get(
        "/api/history", params={"browser": BROWSER, "thread": thread}, headers=headers
    )
    assert response.status == 200, await response.text()
    return await response.json()


async def test_answer_streams_to_every_tab_of_its_thread_only() -> None:
    async with (
        web_server() as (_adapter, _core, client),
        subscribed(client, "thread-a") as tab1,
        subscribed(client, "thread-a") as tab2,
        subscribed(client, "thread-b") as other,
    ):
        response = await ask(client, "thread-a", "why?")
        assert response.status == 202
        question_id = (await response.json())["id"]

        for tab in (tab1, tab2):
            events = await tab.until(lambda e: e["type"] == "done")
            first = events[0]
            assert (first["type"], first["id"], first["text"]) == ("question", question_id, "why?")
            assert {e["thread"] for e in events} == {"thread-a"}
            replies = [e for e in events if e["type"] == "reply"]
            texts = [e["text"] for e in replies]
            assert len(set(texts)) == len(STEPS)  # grew in several steps
            assert all(b.startswith(a) for a, b in itertools.pairwise(texts))
            assert replies[-1]["final"] and texts[-1] == FULL_ANSWER
            assert not any(e["final"] for e in replies[:-1])
            assert {e["question"] for e in replies} == {question_id}
            progress = [e for e in events if e["type"] == "progress"]
            assert progress[0]["queue_position"] == 1
            assert progress[-1]["done"] and progress[-1]["tokens_per_second"] == 12.5
            assert any(e["type"] == "typing" for e in events)
            done = events[-1]
            assert (done["question"], done["command"]) == (question_id, False)

        # Nothing of thread-a reached thread-b: its first event is its own question.
        await ask(client, "thread-b", "and you?")
        first = await other.next()
        assert first["type"] == "question" and first["text"] == "and you?"


async def test_one_stream_per_browser_carries_all_its_threads_and_no_other_browser() -> None:
    async with (
        web_server() as (_adapter, _core, client),
        subscribed(client, None) as mine,
        subscribed(client, None, browser="browser-0002") as theirs,
    ):
        await ask(client, "thread-a", "one?")
        await mine.until(lambda e: e["type"] == "done")
        await ask(client, "thread-b", "two?")
        await mine.until(lambda e: e["type"] == "done")
        assert {(e["thread"], e["type"]) for e in mine.seen if e["type"] == "question"} == {
            ("thread-a", "question"),
            ("thread-b", "question"),
        }
        await client.post(
            "/api/ask", json={"browser": "browser-0002", "thread": "thread-a", "text": "x"}
        )
        first = await theirs.next()
        assert first["type"] == "question" and first["text"] == "x"


async def test_reload_mid_answer_shows_the_partial_answer_then_the_stored_turn() -> None:
    async with web_server() as (adapter, core, client):
        core.gate = asyncio.Event()
        async with subscribed(client, "thread-a") as tab:
            await ask(client, "thread-a", "why?")
            await tab.until(lambda e: e["type"] == "reply" and "grows" in e["text"])

            mid = await history(client, "thread-a")
            assert mid["turns"] == []
            [live] = mid["live"]
            assert live["question"] == "why?"
            assert live["replies"][0]["text"] == "Answer to why?: The answer grows "
            assert not live["replies"][0]["final"]
            assert live["progress"]["tokens"] == 2

            core.gate.set()
            await tab.until(lambda e: e["type"] == "done")

        after = await history(client, "thread-a")
        assert after["live"] == []
        assert after["turns"] == [
            {
                "question": "why?",
                "answer": FULL_ANSWER,
                "status": "complete",
                "tokens": 4,
                "sources": [],
            }
        ]
        # Finished and unwatched: the live buffer of the thread is gone.
        for _ in range(250):
            if not adapter.state.thread_count:
                break
            await asyncio.sleep(0.02)
        assert adapter.state.thread_count == 0


@pytest.mark.parametrize("read_before_store", [True, False])
async def test_a_history_read_overlapping_the_end_of_an_answer_shows_it_once(
    read_before_store: bool,
) -> None:
    async with web_server() as (_adapter, core, client), subscribed(client, "thread-a") as tab:
        core.gate = asyncio.Event()
        await ask(client, "thread-a", "why?")
        await tab.until(lambda e: e["type"] == "reply" and "grows" in e["text"])

        stored = core.history
        answered = asyncio.Event()

        async def slow_history(key):
            before = await stored(key)
            await answered.wait()  # the answer ends and is stored while we read
            return before if read_before_store else await stored(key)

        core.history = slow_history  # type: ignore[method-assign]
        reading = asyncio.create_task(history(client, "thread-a"))
        await asyncio.sleep(0.05)
        core.gate.set()
        await tab.until(lambda e: e["type"] == "done")
        answered.set()
        seen = await reading

        shown = [t["answer"] for t in seen["turns"]]
        shown += [r["text"] for ex in seen["live"] for r in ex["replies"]]
        assert shown == [FULL_ANSWER]


async def test_typed_commands_reach_the_core_and_reset_clears_the_history() -> None:
    async with web_server() as (_adapter, _core, client), subscribed(client, "thread-a") as tab:
        await ask(client, "thread-a", "why?")
        await tab.until(lambda e: e["type"] == "done")
        assert len((await history(client, "thread-a"))["turns"]) == 1

        await ask(client, "thread-a", "/help")
        events = await tab.until(lambda e: e["type"] == "done")
        reply = next(e for e in events if e["type"] == "reply")
        assert reply["final"] and "/reset" in reply["text"]
        assert events[-1]["command"] is True

        await ask(client, "thread-a", "/reset")
        events = await tab.until(lambda e: e["type"] == "done")
        assert any(e["type"] == "reply" and "1 turns" in e["text"] for e in events)
        assert (await history(client, "thread-a"))["turns"] == []


async def test_a_failing_core_still_ends_the_answer_with_a_message() -> None:
    async with web_server() as (_adapter, core, client), subscribed(client, "thread-a") as tab:
        core.fail = True
        await ask(client, "thread-a", "why?")
        events = await tab.until(lambda e: e["type"] == "done")
        reply = next(e for e in events if e["type"] == "reply")
        assert reply["text"] == FAILED and reply["final"]
        assert [e.split(":")[0] for e in core.errors] == ["web"]
        assert core.errors[0].endswith(": boom")


async def test_too_many_waiting_questions_in_one_thread_are_refused() -> None:
    async with web_server() as (_adapter, core, client):
        core.gate = asyncio.Event()
        for _ in range(MAX_RUNNING_PER_THREAD):
            assert (await ask(client, "thread-a", "why?")).status == 202
        assert (await ask(client, "thread-a", "why?")).status == 429
        assert (await ask(client, "thread-b", "why?")).status == 202
        core.gate.set()


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"browser": BROWSER, "thread": "thread-a", "text": ""}, 400),
        ({"browser": BROWSER, "thread": "thread-a", "text": " \n\t "}, 400),
        ({"browser": BROWSER, "thread": "thread-a", "text": 42}, 400),
        ({"browser": BROWSER, "thread": "thread-a", "text": "x" * 100_000}, 413),
        ({"browser": BROWSER, "thread": "../../etc/passwd", "text": "hi"}, 400),
        ({"browser": BROWSER, "thread": "<script>x</script>", "text": "hi"}, 400),
        ({"browser": BROWSER, "thread": "t" * 65, "text": "hi"}, 400),
        ({"browser": BROWSER, "thread": "short", "text": "hi"}, 400),
        ({"browser": BROWSER, "text": "hi"}, 400),
        ({"browser": "bad browser id", "thread": "thread-a", "text": "hi"}, 400),
        (["not", "an", "object"], 400),
    ],
)
async def test_bad_questions_are_refused(body: object, status: int) -> None:
    async with web_server() as (adapter, _core, client):
        response = await client.post("/api/ask", json=body)
        assert response.status == status
        assert "error" in await response.json()
        assert adapter.state.thread_count == 0


async def test_non_json_asks_are_refused() -> None:
    async with web_server() as (_adapter, _core, client):
        form = await client.post("/api/ask", data={"thread": "thread-a", "text": "hi"})
        assert form.status == 415  # a cross-site form cannot ask
        broken = await client.post(
            "/api/ask", data=b"{not json", headers={"Content-Type": "application/json"}
        )
        assert broken.status == 400


@pytest.mark.parametrize("path", ["/api/history", "/api/events"])
@pytest.mark.parametrize("thread", ["", "a/b/c/d/e", "x" * 200, "thread a!"])
async def test_junk_thread_ids_are_refused(path: str, thread: str) -> None:
    async with web_server() as (_adapter, _core, client):
        response = await client.get(path, params={"browser": BROWSER, "thread": thread})
        assert response.status == 400


async def test_page_and_assets_are_served_with_a_strict_policy() -> None:
    async with web_server() as (_adapter, _core, client):
        page = await client.get("/")
        assert page.status == 200
        assert '<script src="/assets/app.js"></script>' in await page.text()
        assert "script-src 'self'" in page.headers["Content-Security-Policy"]
        script = await client.get("/assets/app.js")
        assert script.status == 200 and script.content_type == "text/javascript"
        assert (await client.get("/assets/app.css")).content_type == "text/css"
        assert (await client.get("/assets/nothing.js")).status == 404
        assert (await client.get("/assets/..%2Fadapter.py")).status == 404


async def test_a_foreign_host_name_is_refused_without_a_token() -> None:
    async with web_server() as (_adapter, _core, client):
        response = await client.get("/", headers={"Host": "attacker.example:8080"})
        assert response.status == 403


async def test_with_a_token_every_route_needs_it() -> None:
    settings = web_settings(web_token=SecretStr("s3cret-token"))
    params = {"browser": BROWSER, "thread": "thread-a"}
    async with web_server(settings) as (_adapter, _core, client):
        for path in ("/", "/assets/app.js", "/api/history", "/api/events"):
            assert (await client.get(path, params=params)).status == 401, path
            wrong = {"Authorization": "Bearer nope"}
            assert (await client.get(path, params=params, headers=wrong)).status == 401, path
        assert (await ask(client, "thread-a", "why?")).status == 401

        bearer = {"Authorization": "Bearer s3cret-token"}
        assert (await client.get("/", headers=bearer)).status == 200
        assert (await ask(client, "thread-a", "why?", **bearer)).status == 202
        async with subscribed(client, "thread-b", **bearer):
            pass

        assert (await client.get("/?token=nope", allow_redirects=False)).status == 401
        login = await client.get("/?token=s3cret-token", allow_redirects=False)
        assert login.status == 303 and login.headers["Location"] == "/"
        cookie = login.cookies["edgeqa_web"]
        assert "s3cret-token" not in cookie.value and cookie["httponly"]
        # The client's cookie jar now carries the session.
        assert (await client.get("/")).status == 200
        assert (await client.get("/api/history", params=params)).status == 200


async def test_stop_ends_open_event_streams() -> None:
    async with web_server() as (adapter, _core, client), subscribed(client, "thread-a") as tab:
        await adapter.stop()
        with pytest.raises(EOFError):
            await tab.next()


async def test_stopping_still_delivers_the_last_text_and_the_end_of_each_answer() -> None:
    """Shutdown cuts an answer, sends its final text and stops the adapter at once, with no
    chance for the stream to write in between (a slow page, a 20 KB answer): the page still
    gets that text and the answer's `done` before its stream ends."""
    async with web_server() as (adapter, core, client), subscribed(client, "thread-a") as tab:
        core.gate = asyncio.Event()  # the answer stays in flight after two steps
        question = (await (await ask(client, "thread-a", "why?")).json())["id"]
        await tab.until(lambda e: e["type"] == "reply" and e["text"].endswith(STEPS[1]))
        key = ConversationKey("web", "", BROWSER, "thread-a")
        cut = "Answer to why?: " + STEPS[0] + STEPS[1] + "(cut short)"
        await adapter.send(key, cut, reply_to=question, final=True)
        await adapter.stop()
        rest = []
        with contextlib.suppress(EOFError):
            while True:
                rest.append(await tab.next())
    replies = [e for e in rest if e["type"] == "reply" and e["question"] == question]
    assert [(e["text"], e["final"]) for e in replies] == [(cut, True)]
    assert rest[-1]["type"] == "done" and rest[-1]["question"] == question
