"""The Slack adapter through the real Bolt app and slack-sdk client, against local fakes of
Slack's Web API and Socket Mode: what gets answered where, what is ignored, streaming,
errors, limits and slash commands. The core is a scripted stand-in (slack_support.py);
test_slack_e2e.py runs the same kind of scenarios through the real core and engine."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from adapters.slack.render import to_mrkdwn
from adapters.slack.sender import THINKING
from tests.fakes.slack_workspace import SlackWorkspace
from tests.harness import quiet
from tests.slack_support import eventually, running, workspace

CHANNEL = "C0GENERAL"
DM = "D0ALICE"


@pytest.fixture
async def ws(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[SlackWorkspace]:
    async with workspace(monkeypatch) as started:
        yield started


def final_texts(ws: SlackWorkspace, channel: str, thread: str | None) -> list[str]:
    messages = (
        ws.api.bot_messages(channel, thread)
        if thread is not None
        else [m for m in ws.api.main_line(channel) if m.is_bot]
    )
    return [m.text for m in messages]


async def test_mention_streams_the_answer_into_its_thread(ws: SlackWorkspace) -> None:
    async with running(ws) as (_, core):
        asked = await ws.say(CHANNEL, f"<@{ws.bot}> what is   edgeqa?")
        await eventually(lambda: core.answered)
        msg = core.handled[0]
        assert msg.text == "what is   edgeqa?"
        assert (msg.key.workspace, msg.key.channel, msg.key.thread) == (
            ws.team_id,
            CHANNEL,
            asked.ts,
        )
        assert not msg.is_direct and msg.user_id == "U0ALICE"
        answer = core.stored[msg.key][0]
        [reply] = ws.api.bot_messages(CHANNEL, asked.ts)
        assert reply.text == to_mrkdwn(answer)
        assert "*the answer*" in reply.text and "<https://example.com|link>" in reply.text
        assert len(reply.texts) > 2  # it streamed: first text, edits, the final rendering
        assert all(answer.startswith(t) for t in reply.texts[:-1])  # growing plain text
        assert not ws.api.main_line(CHANNEL)[1:]  # nothing outside the thread
        await quiet(core)
        assert len(core.handled) == 1  # app_mention + message event, and the bot's echoes
        assert ws.socket.unacked() == [] and ws.socket.bad_acks == []


async def test_a_mention_inside_a_thread_answers_in_that_thread(ws: SlackWorkspace) -> None:
    async with running(ws) as (_, core):
        root = ws.api.user_message(CHANNEL, "we deploy on fridays", user="U0BOB")
        asked = await ws.say(CHANNEL, f"<@{ws.bot}> is that wise?", thread_ts=root.ts)
        await eventually(lambda: core.answered)
        assert core.handled[0].key.thread == root.ts
        assert len(ws.api.bot_messages(CHANNEL, root.ts)) == 1
        assert ws.api.find(CHANNEL, asked.ts) is not None


async def test_direct_messages(ws: SlackWorkspace) -> None:
    async with running(ws) as (_, core):
        first = await ws.say(DM, "hello there")
        await eventually(lambda: len(core.answered) == 1)
        second = await ws.say(DM, "and again")
        await eventually(lambda: len(core.answered) == 2)
        # Top-level DMs share one conversation and are answered in the DM itself.
        assert core.handled[0].key == core.handled[1].key
        assert core.handled[0].key.thread == "" and core.handled[0].is_direct
        assert final_texts(ws, DM, None) == [to_mrkdwn(a) for a in core.stored[core.handled[0].key]]
        # A thread in the DM is its own conversation, answered in the thread.
        await ws.say(DM, "about the first one", thread_ts=first.ts)
        await eventually(lambda: len(core.answered) == 3)
        threaded = core.handled[2]
        assert threaded.key.thread == first.ts and threaded.key != core.handled[0].key
        assert len(ws.api.bot_messages(DM, first.ts)) == 1
        assert second.ts  # (the second question was top-level)


async def test_thread_follow_ups_without_a_mention(ws: SlackWorkspace) -> None:
    async with running(ws) as (_, core):
        asked = await ws.say(CHANNEL, f"<@{ws.bot}> first question")
        await eventually(lambda: len(core.answered) == 1)
        await ws.say(CHANNEL, "a follow-up", thread_ts=asked.ts, user="U0BOB")
        await eventually(lambda: len(core.answered) == 2)
        follow_up = core.handled[1]
        assert follow_up.key == core.handled[0].key
        assert follow_up.text == "a follow-up" and follow_up.user_id == "U0BOB"
        # Chatter elsewhere is not for the bot: top level, or a thread it is not part of.
        other = await ws.say(CHANNEL, "lunch?", user="U0BOB")
        await ws.say(CHANNEL, "yes", thread_ts=other.ts)
        await quiet(core)
        assert len(core.handled) == 2


async def test_follow_ups_can_be_switched_off(ws: SlackWorkspace) -> None:
    async with running(ws, answer_thread_followups=False) as (_, core):
        asked = await ws.say(CHANNEL, f"<@{ws.bot}> first question")
        await eventually(lambda: core.answered)
        await ws.say(CHANNEL, "a follow-up", thread_ts=asked.ts)
        await quiet(core)
        assert len(core.handled) == 1


async def test_a_restarted_bot_still_follows_threads_it_has_history_in(
    ws: SlackWorkspace,
) -> None:
    async with running(ws) as (_, core):
        asked = await ws.say(CHANNEL, f"<@{ws.bot}> remember this")
        await eventually(lambda: core.answered)
        stored = dict(core.stored)
    async with running(ws) as (_, fresh):
        fresh.stored.update(stored)  # what the database would still hold
        await ws.say(CHANNEL, "and now?", thread_ts=asked.ts)
        await eventually(lambda: fresh.answered)
        assert fresh.handled[0].key.thread == asked.ts


async def test_bots_edits_deletions_and_files_are_not_questions(ws: SlackWorkspace) -> None:
    async with running(ws) as (_, core):
        asked = await ws.say(CHANNEL, f"<@{ws.bot}> start a thread")
        await eventually(lambda: core.answered)
        other_bot = {"bot_id": "B0OTHER", "subtype": "bot_message"}
        await ws.say(CHANNEL, f"<@{ws.bot}> hi from a bot", user="U0OTHERBOT", **other_bot)
        await ws.say(CHANNEL, "bot reply in thread", thread_ts=asked.ts, bot_id="B0OTHER")
        await ws.say(DM, "edited", subtype="message_changed")
        await ws.say(DM, "gone", subtype="message_deleted")
        await ws.say(CHANNEL, "joined", subtype="channel_join", thread_ts=asked.ts)
        await ws.say(DM, f"<@{ws.bot}> from myself", user=ws.bot)
        await quiet(core)
        assert len(core.handled) == 1
        # A file alone reaches the core as an empty question (the core answers with a note).
        await ws.say(DM, "", subtype="file_share", files=[{"id": "F1", "name": "x.png"}])
        await eventually(lambda: len(core.handled) == 2)
        assert core.handled[1].text == "" and core.handled[1].is_direct
        # The bot's own posts and edits came back as events (as in Slack) and were ignored.
        echoed = [
            e
            for e in ws.socket.sent.values()
            if e["payload"]["event"].get("bot_id")
            or e["payload"]["event"].get("subtype") == "message_changed"
        ]
        assert echoed


async def test_word_commands_in_threads_become_commands(ws: SlackWorkspace) -> None:
    async with running(ws) as (_, core):
        asked = await ws.say(CHANNEL, f"<@{ws.bot}> a question")
        await eventually(lambda: core.answered)
        await ws.say(CHANNEL, f"<@{ws.bot}> Reset", thread_ts=asked.ts)
        await ws.say(DM, "stop")
        await eventually(lambda: len(core.handled) == 3)
        assert [m.text for m in core.handled[1:]] == ["/reset", "/stop"]
        assert core.handled[1].key == core.handled[0].key


async def test_thinking_status_until_the_first_text(ws: SlackWorkspace) -> None:
    async with running(ws, core_options={"first_token_after": 1.0}) as (_, core):
        asked = await ws.say(CHANNEL, f"<@{ws.bot}> think first")
        await eventually(lambda: ws.api.statuses.get((CHANNEL, asked.ts)) == THINKING)
        assert not ws.api.bot_messages(CHANNEL, asked.ts)
        await eventually(lambda: core.answered)
        assert (CHANNEL, asked.ts) not in ws.api.statuses  # cleared by the reply


async def test_placeholder_where_there_is_no_status(ws: SlackWorkspace) -> None:
    ws.api.status_error = "not_allowed_token_type"
    async with running(ws, core_options={"first_token_after": 1.0}) as (_, core):
        asked = await ws.say(CHANNEL, f"<@{ws.bot}> think first")
        placeholder = await eventually(lambda: ws.api.bot_messages(CHANNEL, asked.ts))
        assert THINKING in placeholder[0].text
        await eventually(lambda: core.answered)
        [reply] = ws.api.bot_messages(CHANNEL, asked.ts)  # the placeholder became the answer
        assert reply.text == to_mrkdwn(core.stored[core.handled[0].key][0])
        # The main line of a DM has no thread for a status: a placeholder there too.
        await ws.say(DM, "hello")
        await eventually(lambda: len(core.answered) == 2)
        assert [THINKING in t for t in final_texts(ws, DM, None)] == [False]


async def test_rate_limited_mid_stream_pauses_and_still_delivers(ws: SlackWorkspace) -> None:
    ws.api.fail("chat.update", status=429, retry_after=1, skip=2, times=1)
    async with running(ws, core_options={"step": 0.05}) as (_, core):
        asked = await ws.say(CHANNEL, f"<@{ws.bot}> {'long question ' * 3}")
        await eventually(lambda: core.answered)
        [reply] = ws.api.bot_messages(CHANNEL, asked.ts)
        assert reply.text == to_mrkdwn(core.stored[core.handled[0].key][0])
        updates = [c.at for c in ws.api.calls if c.method == "chat.update"]
        limited = updates[2]  # the third chat.update got the 429
        assert all(not limited < t < limited + 0.9 for t in updates), "Retry-After ignored"


async def test_server_errors_mid_stream_still_deliver(ws: SlackWorkspace) -> None:
    ws.api.fail("chat.update", status=503, skip=1, times=2)
    async with running(ws) as (_, core):
        asked = await ws.say(CHANNEL, f"<@{ws.bot}> flaky")
        await eventually(lambda: core.answered)
        [reply] = ws.api.bot_messages(CHANNEL, asked.ts)
        assert reply.text == to_mrkdwn(core.stored[core.handled[0].key][0])


def long_answer(_msg: object) -> str:
    return " ".join(f"word{i:04d}" for i in range(400))  # ~3,600 characters


async def test_a_long_answer_continues_in_further_replies(ws: SlackWorkspace) -> None:
    async with running(
        ws, max_message_len=1000, core_options={"answer": long_answer, "chunk": 60}
    ) as (_, core):
        asked = await ws.say(CHANNEL, f"<@{ws.bot}> tell me everything")
        await eventually(lambda: core.answered)
        texts = final_texts(ws, CHANNEL, asked.ts)
        assert len(texts) >= 4 and all(len(t) <= 1000 for t in texts)
        # Nothing lost, nothing twice (Slack drops the space at the end of a piece).
        assert " ".join(texts).split() == long_answer(None).split()


async def test_msg_too_long_makes_the_pieces_smaller(ws: SlackWorkspace) -> None:
    ws.api.max_text = 700  # Slack counts differently than we do
    async with running(
        ws, max_message_len=1000, core_options={"answer": long_answer, "chunk": 60}
    ) as (_, core):
        asked = await ws.say(CHANNEL, f"<@{ws.bot}> tell me everything")
        await eventually(lambda: core.answered)
        texts = final_texts(ws, CHANNEL, asked.ts)
        assert all(len(t) <= 700 for t in texts)
        assert " ".join(texts).split() == long_answer(None).split()


async def test_three_answers_at_once_share_the_workspace_edit_budget(
    ws: SlackWorkspace,
) -> None:
    budget = 60
    options = {"step": 0.05, "chunk": 4}  # each answer streams for ~1.5 s
    async with running(ws, workspace_edits_per_minute=budget, core_options=options) as (
        adapter,
        core,
    ):
        asked = [await ws.say(CHANNEL, f"<@{ws.bot}> question {i}") for i in range(3)]
        await eventually(lambda: len(adapter._sender._live) == 3)
        key = core.handled[0].key
        assert adapter.edit_interval(key) == pytest.approx(60 * 3 / budget)
        await eventually(lambda: len(core.answered) == 3)
        for message in asked:
            [reply] = ws.api.bot_messages(CHANNEL, message.ts)
            assert reply.text == to_mrkdwn(
                core.stored[next(m.key for m in core.handled if m.message_id == message.ts)][0]
            )
        # Unthrottled, three streams at 0.05 s would have made ~90 edits.
        assert ws.api.max_per_window("chat.update") <= budget
        assert adapter.edit_interval(key) == pytest.approx(max(0.05, 60 / budget))


async def test_native_streaming(ws: SlackWorkspace) -> None:
    async with running(ws, native_streaming=True, core_options={"step": 0.1}) as (_, core):
        asked = await ws.say(CHANNEL, f"<@{ws.bot}> stream it")
        await eventually(lambda: core.answered)
        [reply] = ws.api.bot_messages(CHANNEL, asked.ts)
        assert reply.text == core.stored[core.handled[0].key][0]  # Markdown; Slack renders it
        assert not reply.streaming
        assert ws.api.count("chat.appendStream") >= 1 and ws.api.count("chat.update") == 0
        start = next(c for c in ws.api.calls if c.method == "chat.startStream")
        assert start.params["recipient_user_id"] == "U0ALICE"


async def test_native_streaming_falls_back_to_edits(ws: SlackWorkspace) -> None:
    ws.api.stream_error = "unknown_method"
    async with running(ws, native_streaming=True) as (_, core):
        asked = await ws.say(CHANNEL, f"<@{ws.bot}> stream it")
        await eventually(lambda: core.answered)
        [reply] = ws.api.bot_messages(CHANNEL, asked.ts)
        assert reply.text == to_mrkdwn(core.stored[core.handled[0].key][0])


async def test_slash_commands_are_acked_before_they_run(ws: SlackWorkspace) -> None:
    async with running(ws, admins=["U0ADMIN"]) as (_, core):
        core.command_gate.clear()  # the command takes as long as it takes
        core.command_reply = "Conversations: **3**"
        envelope_id, rid = await ws.slash("stats", user="U0ADMIN")
        ack = await ws.socket.wait_ack(envelope_id, within=3.0)
        assert ack.payload in (None, {})  # an empty ack: Slack shows nothing publicly
        assert not ws.api.responses.get(rid)
        core.command_gate.set()
        reply = await ws.ephemeral(rid)
        assert reply == {"text": "Conversations: *3*", "response_type": "ephemeral"}
        [msg] = core.commands
        assert msg.text == "/stats" and msg.user_id == "U0ADMIN" and msg.key.thread == ""


async def test_stop_ends_the_work_still_running(ws: SlackWorkspace) -> None:
    async with running(ws, admins=["U0ADMIN"]) as (adapter, core):
        core.command_gate.clear()  # a command that never finishes by itself
        _, rid = await ws.slash("stats", user="U0ADMIN")
        await eventually(lambda: core.commands)
        assert core.busy
        await adapter.stop()
        assert not core.busy  # stop() ended it instead of leaving it to reply later
        assert not ws.api.responses.get(rid)


@pytest.mark.parametrize(
    ("typed", "passed"),
    [
        ("", "/help"),
        ("help", "/help"),
        ("RESET-ALL", "/reset-all"),
        ("forget <@U0BOB|bob>", "/forget U0BOB"),
        ("forget U0BOB", "/forget U0BOB"),
        ("dance now", "/dance now"),
    ],
)
async def test_slash_command_text(ws: SlackWorkspace, typed: str, passed: str) -> None:
    async with running(ws) as (_, core):
        _, rid = await ws.slash(typed)
        await ws.ephemeral(rid)
        assert [m.text for m in core.commands] == [passed]


async def test_slash_reset_and_stop(ws: SlackWorkspace) -> None:
    async with running(ws) as (_, core):
        # In a DM, the top-level conversation is the one the command means.
        _, rid = await ws.slash("reset", channel=DM)
        await ws.ephemeral(rid)
        [msg] = core.commands
        assert msg.text == "/reset" and msg.is_direct and msg.key.channel == DM
        # In a channel the command cannot tell the thread: it says how to do it instead.
        for word in ("reset", "stop"):
            _, rid = await ws.slash(word)
            reply = await ws.ephemeral(rid)
            assert f"<@{ws.bot}> {word}" in reply["text"]
            assert reply["response_type"] == "ephemeral"
        assert len(core.commands) == 1


async def test_the_core_refusal_is_delivered_ephemerally(ws: SlackWorkspace) -> None:
    async with running(ws) as (_, core):
        core.command_reply = "Sorry, /reset-all is for admins only."
        _, rid = await ws.slash("reset-all", user="U0MALLORY")
        reply = await ws.ephemeral(rid)
        assert reply["response_type"] == "ephemeral" and "admins only" in reply["text"]
        assert not [m for m in ws.api.calls if m.method.startswith("chat.")]


async def test_wrong_tokens_fail_at_start(ws: SlackWorkspace) -> None:
    from pydantic import SecretStr

    from adapters.slack import SlackAdapter
    from adapters.slack.adapter import StartError
    from tests.slack_support import ScriptedCore, slack_settings

    settings = slack_settings(ws).model_copy(update={"slack_app_token": SecretStr("xapp-nope")})
    adapter = SlackAdapter(settings)
    with pytest.raises(StartError, match="invalid_auth"):
        await adapter.start(ScriptedCore(adapter))
    await asyncio.sleep(0)


async def test_a_status_refused_in_one_channel_is_still_used_in_others(
    ws: SlackWorkspace,
) -> None:
    ws.api.status_errors["C0SECRET"] = "missing_scope"
    async with running(ws, core_options={"first_token_after": 0.5}) as (_, core):
        there = await ws.say("C0SECRET", f"<@{ws.bot}> think first")
        placeholder = await eventually(lambda: ws.api.bot_messages("C0SECRET", there.ts))
        assert THINKING in placeholder[0].text
        await eventually(lambda: len(core.answered) == 1)
        here = await ws.say(CHANNEL, f"<@{ws.bot}> and here?")
        await eventually(lambda: ws.api.statuses.get((CHANNEL, here.ts)) == THINKING)
        await eventually(lambda: len(core.answered) == 2)
        [reply] = ws.api.bot_messages(CHANNEL, here.ts)
        assert not any(THINKING in text for text in reply.texts)  # no placeholder here


async def test_no_final_update_that_changes_nothing(ws: SlackWorkspace) -> None:
    """chat.update is ~50 a minute for the whole workspace: a final text that renders to
    what the message already shows is not sent again."""
    plain = "Plain words only, nothing here to render."
    options = {"answer": lambda _msg: plain, "step": 0.2, "chunk": 12}
    async with running(ws, core_options=options) as (_, core):
        asked = await ws.say(CHANNEL, f"<@{ws.bot}> say it plainly")
        await eventually(lambda: core.answered)
        [reply] = ws.api.bot_messages(CHANNEL, asked.ts)
        assert reply.text == to_mrkdwn(plain) == plain
        assert reply.texts[-1] == plain and reply.texts[-2] != plain  # shown once, not twice
        assert ws.api.count("chat.update") == len(reply.texts) - 1
