"""Slack end to end: fake Web API + Socket Mode servers <-HTTP/websocket-> slack-bolt and
slack-sdk <-> SlackAdapter <-> the real core (App: service, flusher, SQLite history) <->
llama.cpp on a tiny model.

The tiny model writes random-looking text, so the checks compare what the thread shows with
what the bot stored as the answer: the bot's messages, in order, must be exactly the answer
cut where the flusher cuts it, each piece rendered to mrkdwn — nothing lost, nothing twice.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from adapters.slack import SlackAdapter
from bot.types import ConversationKey
from llm.base import GenerationRequest
from tests.doubles import ScriptedEngine
from tests.fakes.slack_workspace import SlackWorkspace
from tests.harness import Start, answers, quiet, running_app, stored, test_settings
from tests.slack_support import (
    bot_starter,
    eventually,
    expected_messages,
    slack_env,
    workspace,
)

CHANNEL = "C0GENERAL"
DM = "D0ALICE"
ADMIN = "U0ADMIN"


@pytest.fixture
async def ws(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[SlackWorkspace]:
    async with workspace(monkeypatch) as started:
        yield started
    assert started.socket.bad_acks == []  # every ack named an envelope, once


@pytest.fixture
def bot(tmp_path: Path, tiny_model_path: Path, ws: SlackWorkspace) -> Start:
    """`async with bot(EDGEQA_...="...") as app:` runs the whole bot against the fakes."""
    return bot_starter(
        tmp_path,
        tiny_model_path,
        ws,
        EDGEQA_SLACK__ADMINS=ADMIN,
        EDGEQA_SLACK__WORKSPACE_EDITS_PER_MINUTE="600",
    )


def key(ws: SlackWorkspace, channel: str, thread: str) -> ConversationKey:
    return ConversationKey("slack", ws.team_id, channel, thread)


def thread_texts(ws: SlackWorkspace, channel: str, thread: str) -> list[str]:
    return [m.text for m in ws.api.bot_messages(channel, thread)]


async def test_a_mention_streams_into_its_thread(bot: Start, ws: SlackWorkspace) -> None:
    async with bot() as app:
        asked = await ws.say(CHANNEL, f"<@{ws.bot}> what is a llama?")
        thread = key(ws, CHANNEL, asked.ts)
        [answer] = await stored(app, thread)
        limit = app.settings.slack.max_message_len
        await eventually(
            lambda: thread_texts(ws, CHANNEL, asked.ts) == expected_messages(answer, limit)
        )
        # One reply, in the thread. (Whether it was edited on the way depends on how fast
        # the tiny model writes 48 tokens; streaming is shown in test_slack_adapter.)
        assert len(ws.api.bot_messages(CHANNEL, asked.ts)) == 1
        assert ws.api.main_line(CHANNEL) == [ws.api.find(CHANNEL, asked.ts)]
        turns = await app.repo.load_history(thread)
        assert turns[0].question == "what is a llama?" and turns[0].user_id == "U0ALICE"


async def test_a_direct_message_conversation(bot: Start, ws: SlackWorkspace) -> None:
    async with bot() as app:
        first = await ws.say(DM, "hello")
        main = key(ws, DM, "")
        await stored(app, main, 1)
        await ws.say(DM, "and again")
        both = await stored(app, main, 2)
        limit = app.settings.slack.max_message_len
        shown = [m.text for m in ws.api.main_line(DM) if m.is_bot]
        want = [text for answer in both for text in expected_messages(answer, limit)]
        await eventually(lambda: [m.text for m in ws.api.main_line(DM) if m.is_bot] == want)
        assert shown  # the DM's main line, not a thread
        await ws.say(DM, "in a thread", thread_ts=first.ts)
        [threaded] = await stored(app, key(ws, DM, first.ts))
        await eventually(
            lambda: thread_texts(ws, DM, first.ts) == expected_messages(threaded, limit)
        )
        assert len(await answers(app, main)) == 2


async def test_follow_ups_keep_context_and_reset_clears_it(bot: Start, ws: SlackWorkspace) -> None:
    async with bot() as app:
        asked = await ws.say(CHANNEL, f"<@{ws.bot}> first")
        thread = key(ws, CHANNEL, asked.ts)
        await stored(app, thread, 1)
        await ws.say(CHANNEL, "second, no mention", thread_ts=asked.ts, user="U0BOB")
        await stored(app, thread, 2)
        turns = await app.repo.load_history(thread)  # one conversation: the thread
        assert [t.question for t in turns] == ["first", "second, no mention"]
        # Chatter in the channel is not a question.
        await ws.say(CHANNEL, "unrelated", user="U0BOB")
        # "@edgeqa reset" in the thread forgets it, and says so in the thread.
        await ws.say(CHANNEL, f"<@{ws.bot}> reset", thread_ts=asked.ts)
        await eventually(lambda: any("forgotten" in t for t in thread_texts(ws, CHANNEL, asked.ts)))
        assert await answers(app, thread) == []
        await quiet(app)
        assert len(ws.api.main_line(CHANNEL)) == 2  # the two user messages, no bot posts
        # In a DM, /edgeqa reset clears the top-level conversation.
        await ws.say(DM, "remember me")
        await stored(app, key(ws, DM, ""))
        envelope_id, rid = await ws.slash("reset", channel=DM)
        await ws.socket.wait_ack(envelope_id, within=3.0)
        reply = await ws.ephemeral(rid)
        assert "forgotten" in reply["text"] and reply["response_type"] == "ephemeral"
        assert await answers(app, key(ws, DM, "")) == []


async def test_three_answers_at_once_stay_within_the_edit_budget(
    bot: Start, ws: SlackWorkspace
) -> None:
    budget = 30
    async with bot(EDGEQA_SLACK__WORKSPACE_EDITS_PER_MINUTE=str(budget)) as app:
        asked = [await ws.say(CHANNEL, f"<@{ws.bot}> question {i}") for i in range(3)]
        limit = app.settings.slack.max_message_len
        for message in asked:
            [answer] = await stored(app, key(ws, CHANNEL, message.ts))

            def delivered(m=message, a=answer):  # this loop's message and answer
                return thread_texts(ws, CHANNEL, m.ts) == expected_messages(a, limit)

            await eventually(delivered)
        assert ws.api.max_per_window("chat.update") <= budget


async def test_rate_limited_mid_stream(bot: Start, ws: SlackWorkspace) -> None:
    ws.api.fail("chat.update", status=429, retry_after=1, times=1)  # the first edit
    async with bot() as app:
        asked = await ws.say(CHANNEL, f"<@{ws.bot}> go")
        [answer] = await stored(app, key(ws, CHANNEL, asked.ts))
        await eventually(
            lambda: (
                thread_texts(ws, CHANNEL, asked.ts)
                == expected_messages(answer, app.settings.slack.max_message_len)
            )
        )
        refused, *later = [c.at for c in ws.api.calls if c.method == "chat.update"]
        assert later and all(t >= refused + 0.9 for t in later)  # waited out Retry-After


async def test_a_long_answer_is_split_with_nothing_lost(bot: Start, ws: SlackWorkspace) -> None:
    async with bot(EDGEQA_SLACK__MAX_MESSAGE_LEN="100", EDGEQA_ENGINE__MAX_TOKENS="320") as app:
        asked = await ws.say(CHANNEL, f"<@{ws.bot}> tell me a long story")
        [answer] = await stored(app, key(ws, CHANNEL, asked.ts))
        assert len(answer) > 100
        await eventually(
            lambda: thread_texts(ws, CHANNEL, asked.ts) == expected_messages(answer, 100)
        )
        assert len(ws.api.bot_messages(CHANNEL, asked.ts)) >= 3


async def test_slash_commands_and_refusals(bot: Start, ws: SlackWorkspace) -> None:
    async with bot() as app:
        asked = await ws.say(CHANNEL, f"<@{ws.bot}> something to count")
        thread = key(ws, CHANNEL, asked.ts)
        await stored(app, thread)
        envelope_id, rid = await ws.slash("stats", user=ADMIN)
        await ws.socket.wait_ack(envelope_id, within=3.0)
        stats = await ws.ephemeral(rid)
        assert "Conversations: 1" in stats["text"] and stats["response_type"] == "ephemeral"
        for command in ("stats", "reset-all", "forget <@U0ALICE|alice>"):
            envelope_id, rid = await ws.slash(command, user="U0MALLORY")
            await ws.socket.wait_ack(envelope_id, within=3.0)
            refusal = await ws.ephemeral(rid)
            assert "admins only" in refusal["text"]
            assert refusal["response_type"] == "ephemeral"
        assert len(await answers(app, thread)) == 1  # nothing changed
        _, rid = await ws.slash("forget <@U0ALICE|alice>", user=ADMIN)
        assert "deleted 1" in (await ws.ephemeral(rid))["text"]
        assert await answers(app, thread) == []


async def test_texts_name_commands_the_slack_way_and_count_right(
    bot: Start, ws: SlackWorkspace
) -> None:
    """Slack keeps "/help" and "/reset" for itself: help and refusals name "/edgeqa help"
    and, for what acts on a thread, "@edgeqa reset"; counts of one are singular."""
    async with bot() as app:
        _, rid = await ws.slash("help", user=ADMIN)
        lines = (await ws.ephemeral(rid))["text"].splitlines()
        usages = [line.split(" — ")[0] for line in lines[1:]]
        assert usages == [
            "/edgeqa help",
            "@edgeqa reset",
            "@edgeqa stop",
            "@edgeqa sources",
            "/edgeqa reset-all",
            "/edgeqa stats",
            "/edgeqa forget @user",
            "/edgeqa kb [sync]",
        ]
        assert "forget every conversation in this workspace (admins)" in lines[5]
        _, rid = await ws.slash("dance")
        assert (await ws.ephemeral(rid))["text"] == (
            "I don't know the command /edgeqa dance. Try /edgeqa help."
        )
        _, rid = await ws.slash("stats")
        assert (await ws.ephemeral(rid))["text"] == "Sorry, /edgeqa stats is for admins only."
        _, rid = await ws.slash("forget", user=ADMIN)
        assert (await ws.ephemeral(rid))["text"].startswith("Usage: /edgeqa forget @user")
        # In a thread, the help said by mention names the same commands.
        asked = await ws.say(CHANNEL, f"<@{ws.bot}> one question")
        thread = key(ws, CHANNEL, asked.ts)
        await stored(app, thread)
        await ws.say(CHANNEL, f"<@{ws.bot}> help", thread_ts=asked.ts)
        await eventually(lambda: len(thread_texts(ws, CHANNEL, asked.ts)) == 2)
        assert "@edgeqa reset — " in thread_texts(ws, CHANNEL, asked.ts)[1]
        assert "\n/reset" not in "\n" + thread_texts(ws, CHANNEL, asked.ts)[1]
        await ws.say(CHANNEL, f"<@{ws.bot}> reset", thread_ts=asked.ts)
        await eventually(lambda: len(thread_texts(ws, CHANNEL, asked.ts)) == 3)
        assert thread_texts(ws, CHANNEL, asked.ts)[2] == (
            "Done — I've forgotten this thread (1 earlier question)."
        )


async def test_bot_messages_are_ignored(bot: Start, ws: SlackWorkspace) -> None:
    async with bot() as app:
        asked = await ws.say(CHANNEL, f"<@{ws.bot}> hi")
        thread = key(ws, CHANNEL, asked.ts)
        await stored(app, thread)
        other = await ws.say(
            CHANNEL, f"<@{ws.bot}> I am a bot", user="U0OTHERBOT", bot_id="B0OTHER"
        )
        await ws.say(CHANNEL, "bot chatter", thread_ts=asked.ts, bot_id="B0OTHER")
        await quiet(app)
        assert ws.api.bot_messages(CHANNEL, other.ts) == []
        assert len(await answers(app, thread)) == 1
        # Its own posts and edits came back as events too, and were ignored.
        assert len(ws.api.bot_messages(CHANNEL, asked.ts)) == 1


async def test_outside_the_allow_list_is_ignored(bot: Start, ws: SlackWorkspace) -> None:
    allowed = {
        "EDGEQA_SLACK__ALLOWED_CHATS": f"{CHANNEL},{DM}",
        "EDGEQA_SLACK__ALLOWED_USERS": "U0ALICE",
    }
    async with bot(**allowed) as app:
        elsewhere = await ws.say("C0SECRET", f"<@{ws.bot}> hello?")
        stranger = await ws.say(CHANNEL, f"<@{ws.bot}> me too?", user="U0MALLORY")
        await ws.say("D0MALLORY", "", user="U0MALLORY", subtype="file_share", files=[{"id": "F1"}])
        asked = await ws.say(CHANNEL, f"<@{ws.bot}> and me?")
        await stored(app, key(ws, CHANNEL, asked.ts))
        await quiet(app)
        assert ws.api.bot_messages("C0SECRET") == []
        assert ws.api.bot_messages(CHANNEL, stranger.ts) == []
        assert ws.api.bot_messages("D0MALLORY") == []  # not even the note about files
        assert await answers(app, key(ws, "C0SECRET", elsewhere.ts)) == []
        # An allowed user's file without text gets a short note, not an answer.
        await ws.say(DM, "", subtype="file_share", files=[{"id": "F2"}])
        await eventually(
            lambda: any("in words" in m.text for m in ws.api.main_line(DM) if m.is_bot)
        )
        assert await answers(app, key(ws, DM, "")) == []


def answer_to_text(question: str) -> str:
    return f"Answer to {question}: one two three four five."


def answer_to(request: GenerationRequest) -> str:
    return answer_to_text(request.messages[-1].content)


async def test_each_placeholder_becomes_the_answer_to_its_own_question(
    tmp_path: Path, ws: SlackWorkspace
) -> None:
    """Two DMs in a row: the first one's "is thinking…" placeholder is its answer, the
    second (queued) one gets a message below it; a reset sent in a thread while a question
    waits there gets its own message too. The channel ends with the answers in order."""
    settings = test_settings(tmp_path, **slack_env(ws), EDGEQA_SLACK__ADMINS=ADMIN)
    engine = ScriptedEngine(answer_to, token_delay=0.15)  # the first words take a moment
    async with running_app(settings, [SlackAdapter(settings)], engine=engine) as app:
        await ws.socket.wait_connected()
        await ws.say(DM, "first")
        await eventually(lambda: [m for m in ws.api.main_line(DM) if m.is_bot])  # placeholder
        await ws.say(DM, "second")
        await stored(app, key(ws, DM, ""), 2)
        await eventually(
            lambda: (
                [m.text for m in ws.api.main_line(DM) if m.is_bot]
                == [answer_to_text("first"), answer_to_text("second")]
            )
        )
        # In a channel thread where the status is refused: a placeholder message, which a
        # reset sent while the question waits for its first words leaves alone.
        ws.api.status_error = "missing_scope"
        asked = await ws.say(CHANNEL, f"<@{ws.bot}> third")
        await eventually(lambda: ws.api.bot_messages(CHANNEL, asked.ts))
        await ws.say(CHANNEL, f"<@{ws.bot}> reset", thread_ts=asked.ts)
        reset = "Done — I've forgotten this thread (0 earlier questions)."
        await eventually(
            lambda: thread_texts(ws, CHANNEL, asked.ts) == [answer_to_text("third"), reset]
        )
