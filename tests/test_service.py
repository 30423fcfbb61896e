"""ConversationService: whole conversations through the real App wiring and real SQLite,
with a recording adapter and a scripted engine so queueing, commands and bookkeeping can be
checked exactly. (End-to-end runs on the real engine live in the adapter tests.)"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text

from bot.app import App
from bot.service import LENGTH_MARK, RESTARTING, STOPPED_MARK
from bot.types import ConversationKey, IncomingMessage
from tests.doubles import RecordingAdapter, ScriptedEngine
from tests.harness import eventually, running_app, test_settings

KEY = ConversationKey("web", "", "browser-1", "thread-1")
ANSWER = "Paris is the capital of France, and it has been for a long time."


def ask(text: str, user: str = "alice", key: ConversationKey = KEY) -> IncomingMessage:
    return IncomingMessage(key, user, text, is_direct=True, message_id=f"m-{text[:40]}")


@pytest.fixture
def chat() -> RecordingAdapter:
    return RecordingAdapter(name="web")


@pytest.fixture
async def app(tmp_path: Path, chat: RecordingAdapter) -> AsyncIterator[App]:
    settings = test_settings(tmp_path, EDGEQA_WEB__ADMINS="root")
    engine = ScriptedEngine(ANSWER, token_delay=0.005)
    async with running_app(settings, [chat], engine=engine) as running:
        yield running


async def turns(app: App, key: ConversationKey = KEY) -> list[tuple[str, str, str]]:
    return [(t.question, t.answer, t.status) for t in await app.repo.load_history(key)]


async def test_a_question_is_answered_streamed_and_stored(app: App, chat: RecordingAdapter) -> None:
    await app.service.handle(ask("What is the capital of France?"))
    assert chat.messages() == [ANSWER]
    assert len(chat.writes()) >= 2  # streamed: a first text, then edits
    assert chat.writes()[-1].final
    assert await turns(app) == [("What is the capital of France?", ANSWER, "complete")]
    assert app.metrics.get("edgeqa_questions_total", platform="web") == 1


async def test_progress_never_shows_more_speed_than_the_engine_has(
    app: App, chat: RecordingAdapter
) -> None:
    """The page showed "1 token · 16120.7 tokens/s": the first token over a near-zero time.
    The scripted engine waits at least `token_delay` between tokens, so no honest figure
    can exceed 1 / token_delay (the old one did from the first update on)."""
    engine = app.engine
    assert isinstance(engine, ScriptedEngine)
    await app.service.handle(ask("What is the capital of France?"))
    counting = [p for p in chat.progress_seen if p.tokens and not p.done]
    assert counting
    assert all(p.tokens_per_second <= 1.01 / engine.token_delay for p in counting)


async def test_follow_up_sees_the_thread_history(app: App) -> None:
    engine = app.engine
    assert isinstance(engine, ScriptedEngine)
    await app.service.handle(ask("first question"))
    await app.service.handle(ask("second question"))
    roles = [(m.role, m.content) for m in engine.requests[-1].messages]
    assert roles[1:] == [
        ("user", "first question"),
        ("assistant", ANSWER),
        ("user", "second question"),
    ]
    assert roles[0][0] == "system"


async def test_questions_in_one_thread_are_answered_in_order_never_interleaved(
    app: App, chat: RecordingAdapter
) -> None:
    questions = [f"question number {i}" for i in range(3)]
    tasks = []
    for q in questions:
        tasks.append(asyncio.create_task(app.service.handle(ask(q))))
        await asyncio.sleep(0.01)
    await asyncio.gather(*tasks)

    engine = app.engine
    assert isinstance(engine, ScriptedEngine)
    assert [r.messages[-1].content for r in engine.requests] == questions
    assert [q for q, _, _ in await turns(app)] == questions
    # Each question got its own message; the later ones first showed their queue position.
    assert chat.messages() == [ANSWER] * 3
    first, second, third = ([op.text for op in chat.reply_to(ask(q).message_id)] for q in questions)
    assert not first[0].startswith("⏳")
    assert second[0].startswith("⏳ Queued (position 1)")
    assert third[0].startswith("⏳ Queued (position 2)")
    assert any(t.startswith("⏳ Queued (position 1)") for t in third[1:])  # moved up
    assert first[-1] == second[-1] == third[-1] == ANSWER
    # Never interleaved: each message only ever showed a prefix of the one answer.
    for op in chat.writes():
        assert op.text.startswith(("⏳", "💭")) or ANSWER.startswith(op.text)


async def test_other_threads_do_not_wait_for_each_other(tmp_path: Path) -> None:
    chat = RecordingAdapter(name="web")
    engine = ScriptedEngine(ANSWER, token_delay=0.01, slots=2)
    async with running_app(test_settings(tmp_path), [chat], engine=engine) as app:
        other = ConversationKey("web", "", "browser-2", "t")
        await asyncio.gather(
            app.service.handle(ask("one")), app.service.handle(ask("two", key=other))
        )
    assert not any(op.text.startswith("⏳") for op in chat.writes())


async def test_stop_keeps_the_partial_answer_marked(tmp_path: Path) -> None:
    chat = RecordingAdapter(name="web")
    engine = ScriptedEngine(ANSWER, token_delay=0.05)
    async with running_app(test_settings(tmp_path), [chat], engine=engine) as app:
        answering = asyncio.create_task(app.service.handle(ask("tell me")))
        await eventually(lambda: chat.writes("send"))
        await app.service.handle(ask("/stop"))
        await answering
        history = await turns(app)
    shown = chat.messages()
    assert shown[-1] == "Stopped."
    assert shown[0].endswith("\n\n" + STOPPED_MARK)
    partial = shown[0].removesuffix("\n\n" + STOPPED_MARK)
    assert partial and ANSWER.startswith(partial) and partial != ANSWER
    assert history == [("tell me", partial, "stopped")]
    assert engine.cancelled == 1


async def test_reset_forgets_only_this_thread(app: App, chat: RecordingAdapter) -> None:
    other = ConversationKey("web", "", "browser-1", "thread-2")
    await app.service.handle(ask("here"))
    await app.service.handle(ask("there", key=other))
    await app.service.handle(ask("/reset"))
    assert "forgotten this thread (1 earlier" in chat.messages()[-1]
    assert await turns(app) == []
    assert len(await turns(app, other)) == 1


async def test_admin_commands_are_refused_to_others_and_change_nothing(
    app: App, chat: RecordingAdapter
) -> None:
    await app.service.handle(ask("remember this", user="bob"))
    for command in ("/reset-all", "/forget bob", "/stats"):
        await app.service.handle(ask(command, user="mallory"))
        assert chat.messages()[-1] == f"Sorry, {command.split()[0]} is for admins only."
    assert len(await turns(app)) == 1


async def test_admin_commands_work_for_admins(app: App, chat: RecordingAdapter) -> None:
    other = ConversationKey("web", "", "browser-1", "thread-2")
    elsewhere = ConversationKey("web", "", "browser-9", "t")
    await app.service.handle(ask("from bob", user="bob"))
    await app.service.handle(ask("also bob", user="bob", key=other))
    await app.service.handle(ask("from carol", user="carol", key=elsewhere))

    await app.service.handle(ask("/stats", user="root"))
    stats = chat.messages()[-1]
    assert "Conversations: 3 · turns: 3" in stats and "tokens/s" in stats

    await app.service.handle(ask("/forget @bob", user="root"))
    assert chat.messages()[-1] == "Done — I've deleted 2 questions from bob."
    assert await turns(app) == [] and await turns(app, other) == []
    assert len(await turns(app, elsewhere)) == 1

    await app.service.handle(ask("/reset-all", user="root", key=elsewhere))
    assert chat.messages()[-1] == "Done — I've forgotten the 1 conversation in this chat."
    assert await turns(app, elsewhere) == []
    async with app.repo.db.connect() as conn:  # type: ignore[attr-defined]
        assert (await conn.execute(text("select count(*) from turns"))).scalar() == 0


async def test_help_unknown_and_malformed_commands(app: App, chat: RecordingAdapter) -> None:
    await app.service.handle(ask("/help"))
    assert "/reset" in chat.messages()[-1] and "/stats" not in chat.messages()[-1]
    await app.service.handle(ask("/help", user="root"))
    assert "/stats" in chat.messages()[-1]
    await app.service.handle(ask("/frobnicate"))
    assert chat.messages()[-1] == "I don't know the command /frobnicate. Try /help."
    await app.service.handle(ask("/forget", user="root"))
    assert chat.messages()[-1].startswith("Usage: /forget")
    await app.service.handle(ask("/stop"))
    assert chat.messages()[-1].startswith("Nothing to stop")
    assert await turns(app) == []


async def test_rate_limit_answers_politely(tmp_path: Path) -> None:
    chat = RecordingAdapter(name="web")
    settings = test_settings(tmp_path, EDGEQA_BOT__RATE_LIMIT_PER_MINUTE="2")
    async with running_app(settings, [chat], engine=ScriptedEngine(ANSWER)) as app:
        for i in range(3):
            await app.service.handle(ask(f"q{i}"))
        await app.service.handle(ask("q-other", user="bob"))
        stored = await turns(app)
    assert chat.messages()[2].startswith("You're asking faster than I can answer")
    assert "limit: 2 questions a minute" in chat.messages()[2]
    assert [q for q, _, _ in stored] == ["q0", "q1", "q-other"]
    assert app.metrics.get("edgeqa_rate_limited_total", platform="web") == 1


async def test_users_outside_the_allow_list_are_ignored(tmp_path: Path) -> None:
    chat = RecordingAdapter(name="web")
    settings = test_settings(tmp_path, EDGEQA_WEB__ALLOWED_USERS="alice")
    async with running_app(settings, [chat], engine=ScriptedEngine(ANSWER)) as app:
        await app.service.handle(ask("hello", user="eve"))
        await app.service.handle(ask("/reset-all", user="eve"))
        assert chat.ops == []
        assert await app.service.command(ask("/stats", user="eve")) == (
            "Sorry, you can't use this bot here."
        )
        await app.service.handle(ask("hello", user="alice"))
        assert chat.messages() == [ANSWER]


@pytest.mark.parametrize("junk", ["", "   \n\t ", "\x00\x01\x02", "\u200b\u200d\u202e \ufeff"])
async def test_empty_questions_get_a_hint(app: App, chat: RecordingAdapter, junk: str) -> None:
    await app.service.handle(ask(junk))
    assert chat.messages() == ["Ask me a question in words and I'll answer here."]
    assert await turns(app) == []


async def test_odd_text_is_answered_and_stored_cleanly(app: App) -> None:
    weird = "nul\x00 surrogate\ud800 zero\u200bwidth rtl\u202e emoji 😀 <script>x</script> `"
    await app.service.handle(ask(weird))
    [(question, answer, status)] = await turns(app)
    assert "\x00" not in question and "\ud800" not in question
    assert "😀" in question and "\u200b" in question and "<script>" in question
    assert (answer, status) == (ANSWER, "complete")


async def test_a_huge_question_is_cut_with_a_note(app: App, chat: RecordingAdapter) -> None:
    engine = app.engine
    assert isinstance(engine, ScriptedEngine)
    await app.service.handle(ask("BEGIN " + "lorem ipsum " * 9000 + " END?"))
    assert chat.messages()[0].startswith("_(Your message was too long for me")
    asked = engine.requests[-1].messages[-1].content
    assert asked.startswith("BEGIN") and asked.endswith("END?")
    assert engine.count_tokens(engine.requests[-1].messages) <= 768


async def test_a_full_engine_queue_says_busy(tmp_path: Path) -> None:
    chat = RecordingAdapter(name="web")
    engine = ScriptedEngine(ANSWER, token_delay=0.02, slots=1, max_queue=1)
    async with running_app(test_settings(tmp_path), [chat], engine=engine) as app:
        keys = [ConversationKey("web", "", f"b{i}", "t") for i in range(3)]
        await asyncio.gather(*(app.service.handle(ask(f"q{i}", key=k)) for i, k in enumerate(keys)))
        busy = [m for m in chat.messages() if m.startswith("I'm busy right now")]
        answered = [m for m in chat.messages() if m == ANSWER]
    assert len(busy) == 1 and len(answered) == 2
    assert any(op.text.startswith("⏳ Queued (position 1)") for op in chat.writes())


async def test_shutdown_cuts_answers_after_the_grace_period(tmp_path: Path) -> None:
    chat = RecordingAdapter(name="web")
    engine = ScriptedEngine(ANSWER * 5, token_delay=0.05)
    app = App(test_settings(tmp_path), engine=engine, adapters=[chat])
    await app.start()
    answering = asyncio.create_task(app.service.handle(ask("long one")))
    await eventually(lambda: chat.writes("send"))
    await app.service.shutdown(grace=0.2)
    await answering
    await app.service.handle(ask("too late"))
    history = await turns(app)
    await app.stop(grace=0)
    assert "cut short: the bot is restarting" in chat.messages()[0]
    assert history[0][2] == "interrupted" and history[0][1]
    assert chat.messages()[-1].startswith("I'm restarting")
    assert len(history) == 1


async def test_a_platform_down_past_the_bound_loses_nothing_stored(tmp_path: Path) -> None:
    chat = RecordingAdapter(name="web")
    settings = test_settings(tmp_path, EDGEQA_BOT__DELIVERY_TIMEOUT="0.3s")
    async with running_app(settings, [chat], engine=ScriptedEngine(ANSWER)) as app:
        chat.down = True
        await app.service.handle(ask("anyone there?"))
        assert chat.messages() == []
        assert app.metrics.get("edgeqa_delivery_failures_total") == 1
        assert await turns(app) == [("anyone there?", ANSWER, "complete")]
        chat.down = False  # back: the thread goes on, with its history
        await app.service.handle(ask("and now?"))
        assert chat.messages() == [ANSWER]
        engine = app.engine
        assert isinstance(engine, ScriptedEngine)
        assert [m.content for m in engine.requests[-1].messages][1:] == [
            "anyone there?",
            ANSWER,
            "and now?",
        ]


async def test_the_reply_to_stop_comes_after_the_answer_it_stopped(tmp_path: Path) -> None:
    """Where an answer becomes a message only when final (a Telegram draft), "Stopped." sent
    at once would sit above it: it is sent once the stopped answer's final text is out."""
    chat = RecordingAdapter(name="web")
    engine = ScriptedEngine(ANSWER, token_delay=0.05)
    async with running_app(test_settings(tmp_path), [chat], engine=engine) as app:
        answering = asyncio.create_task(app.service.handle(ask("tell me")))
        await eventually(lambda: chat.writes("send"))
        await app.service.handle(ask("/stop"))
        await answering
    writes = chat.writes()
    stopped = next(i for i, op in enumerate(writes) if op.text == "Stopped.")
    answer_final = next(i for i, op in enumerate(writes) if op.text.endswith("\n\n" + STOPPED_MARK))
    assert answer_final < stopped


async def test_shutdown_before_the_first_words_says_to_ask_again(tmp_path: Path) -> None:
    chat = RecordingAdapter(name="web")
    engine = ScriptedEngine(ANSWER, token_delay=60)  # no word before the shutdown
    app = App(test_settings(tmp_path), engine=engine, adapters=[chat])
    await app.start()
    answering = asyncio.create_task(app.service.handle(ask("slow one")))
    await eventually(lambda: engine.requests)
    await app.service.shutdown(grace=0.1)
    await answering
    await app.stop(grace=0)
    assert chat.messages() == [RESTARTING]


async def test_an_answer_cut_at_max_tokens_is_marked(
    tmp_path: Path, tiny_model_path: Path, tiny_script_model_path: Path, tiny_script: str
) -> None:
    """The tiny model always writes max_tokens tokens; the scripted one ends its turn."""
    for model, cut in ((tiny_model_path, True), (tiny_script_model_path, False)):
        chat = RecordingAdapter(name="web")
        (tmp_path / model.stem).mkdir()
        settings = test_settings(tmp_path / model.stem, model, EDGEQA_ENGINE__MAX_TOKENS="40")
        async with running_app(settings, [chat]) as app:
            await app.service.handle(ask("go on"))
            [(_, answer, status)] = await turns(app)
        [shown] = chat.messages()
        assert status == "complete"
        if cut:
            assert shown == answer + "\n\n" + LENGTH_MARK
        else:
            assert answer == tiny_script and shown == answer
