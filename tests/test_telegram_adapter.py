"""The Telegram adapter on the real python-telegram-bot, against the fake Bot API server.

The core is replaced by a small scripted handler that records what it receives and streams
a fixed answer through the adapter's send/edit the way the core's flusher does; the
end-to-end tests with the real core and engine are in test_telegram_e2e.py.
"""

from __future__ import annotations

import asyncio
import functools
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from adapters.base import MessageTooLong, PlatformError, RateLimited, Refused
from adapters.shared import log_error
from adapters.telegram import TelegramAdapter
from bot.access import AccessPolicy
from bot.config import Settings
from bot.types import ConversationKey, IncomingMessage, MessageRef
from tests.fakes.telegram_api import FakeTelegram
from tests.telegram_support import STICKER

ADMIN = 42
SECRET = "s3cret-webhook-token"

# PTB itself warns (building RetryAfter) that retry_after will become a timedelta one day.
pytestmark = pytest.mark.filterwarnings("ignore::telegram.warnings.PTBDeprecationWarning")


class ScriptedCore:
    """Records messages; answers questions with `answer` streamed in `pieces` steps."""

    def __init__(self, adapter: TelegramAdapter, answer: str = "", pieces: int = 4) -> None:
        self.adapter = adapter
        self.answer = answer
        self.pieces = pieces
        self.received: list[IncomingMessage] = []

    async def handle(self, msg: IncomingMessage) -> None:
        self.received.append(msg)
        if msg.text.startswith("/"):
            await self.adapter.send(msg.key, f"ran {msg.text}", reply_to=msg.message_id, final=True)
            return
        answer = self.answer or f"You asked: {msg.text}"
        await self.adapter.typing(msg.key)
        ref: MessageRef | None = None
        for step in range(1, self.pieces + 1):
            text = answer[: len(answer) * step // self.pieces]
            if ref is None:
                ref = await self.adapter.send(msg.key, text, reply_to=msg.message_id)
            else:
                await retrying(functools.partial(self.adapter.edit, ref, text))
            await asyncio.sleep(self.adapter.edit_interval(msg.key))
        assert ref is not None
        await retrying(lambda: self.adapter.edit(ref, answer, final=True))

    async def command(self, msg: IncomingMessage) -> str:
        return ""

    async def history(self, key: Any) -> list[Any]:
        return []

    def allows(self, msg: IncomingMessage) -> bool:
        return AccessPolicy(self.adapter.settings).allowed(msg)

    def on_error(self, exc: BaseException, what: str) -> None:
        log_error(exc, what)


async def retrying(op: Callable[[], Any]) -> None:
    """What the flusher does on a 429: wait as asked, then try again."""
    for _ in range(10):
        try:
            await op()
            return
        except RateLimited as exc:
            await asyncio.sleep(exc.retry_after)
    raise AssertionError("still rate limited")


def settings_for(fake: FakeTelegram, **telegram: Any) -> Settings:
    section = {
        "enabled": True,
        "base_url": fake.base_url,
        "edit_interval": 0.01,
        "group_edit_interval": 0.02,
        "admins": [str(ADMIN)],
        **telegram,
    }
    secret = SECRET if section.get("mode") == "webhook" else None
    return Settings(telegram=section, telegram_token=fake.token, telegram_webhook_secret=secret)


@pytest.fixture
async def bot(fake: FakeTelegram) -> AsyncIterator[Callable[..., Any]]:
    """Start an adapter (polling) with a scripted core: `core = await bot(**opts)`;
    the adapter is `core.adapter`."""
    started: list[TelegramAdapter] = []

    async def start(answer: str = "", pieces: int = 4, **telegram: Any) -> Any:
        adapter = TelegramAdapter(settings_for(fake, **telegram))
        core = ScriptedCore(adapter, answer, pieces)
        await adapter.start(core)
        started.append(adapter)
        return core

    yield start
    for adapter in started:
        await adapter.stop()


def final_texts(fake: FakeTelegram, chat_id: int) -> list[str]:
    return [m.text for m in fake.bot_messages(chat_id)]


# -- private chats ---------------------------------------------------------------------


async def test_dm_question_streams_as_drafts_then_one_final_message(fake, bot) -> None:
    answer = "Paris is the **capital** of France, on the Seine."
    core = await bot(answer=answer)
    alice = fake.user(10, "Alice", "alice")
    dm = fake.private_chat(alice)
    fake.user_says(dm, alice, "What is the capital of France?")
    await fake.wait_for(lambda: fake.bot_messages(10))

    (msg,) = core.received
    assert msg.text == "What is the capital of France?"
    assert msg.is_direct and msg.user_id == "10" and msg.key.channel == "10"
    assert msg.key.thread == ""
    assert (10, "typing") in fake.actions
    (drafts,) = fake.drafts.values()
    assert len(drafts) >= 3 and drafts == sorted(drafts, key=len)  # a growing live preview
    (final,) = fake.bot_messages(10)
    assert final.text == "Paris is the capital of France, on the Seine."
    assert final.html is not None and "<b>capital</b>" in final.html
    assert not fake.method_calls("editMessageText")


async def test_dm_without_drafts_edits_one_message(fake, bot) -> None:
    core = await bot(answer="one two three four five six", use_drafts=False)
    bob = fake.user(11, "Bob")
    fake.user_says(fake.private_chat(bob), bob, "count")
    await fake.wait_for(lambda: core.received and fake.method_calls("editMessageText"))
    await fake.wait_for(lambda: final_texts(fake, 11) == ["one two three four five six"])
    (message,) = fake.bot_messages(11)
    assert len(message.history) >= 3
    assert message.history[-1] == "one two three four five six"
    assert not fake.drafts


async def test_dm_refusing_drafts_falls_back_to_edits(fake, bot) -> None:
    fake.fail("sendMessageDraft", "bad_request", description="Bad Request: method unavailable")
    await bot(answer="abc def ghi jkl")
    carol = fake.user(12, "Carol")
    fake.user_says(fake.private_chat(carol), carol, "hi")
    await fake.wait_for(lambda: final_texts(fake, 12) == ["abc def ghi jkl"])
    assert len(fake.bot_messages(12)[0].history) >= 2  # streamed by editing instead


async def test_non_text_in_dm_gets_text_only_reply_and_strangers_get_nothing(fake, bot) -> None:
    core = await bot(allowed_users=["10"])
    alice, eve = fake.user(10, "Alice"), fake.user(66, "Eve")
    dm_alice, dm_eve = fake.private_chat(alice), fake.private_chat(eve)
    fake.user_says(dm_eve, eve, None, extra=STICKER)
    fake.user_says(dm_alice, alice, None, extra=STICKER)
    await fake.wait_for(lambda: fake.bot_messages(10))
    assert "text" in final_texts(fake, 10)[0]
    assert not fake.bot_messages(66)
    assert core.received == []


async def test_ignored_bots_edits_and_service_messages(fake, bot) -> None:
    core = await bot()
    alice = fake.user(10, "Alice")
    other_bot = {"id": 99, "is_bot": True, "first_name": "other", "username": "other_bot"}
    fake.users[99] = other_bot
    dm = fake.private_chat(alice)
    group = fake.group(-1001, "team")
    fake.user_says(dm, other_bot, "I am a bot")
    first = fake.user_says(dm, alice, "original question")
    fake.push_update(
        {
            "edited_message": {
                "message_id": first,
                "date": 1,
                "edit_date": 2,
                "chat": dm,
                "from": alice,
                "text": "edited question",
            }
        }
    )
    fake.user_says(group, alice, None, extra={"new_chat_members": [alice]})
    fake.user_says(dm, alice, "second question")
    await fake.wait_for(lambda: len(core.received) == 2)
    await fake.wait_for(lambda: len(fake.bot_messages(10)) == 2)
    assert [m.text for m in core.received] == ["original question", "second question"]
    assert not fake.bot_messages(-1001)


# -- groups ----------------------------------------------------------------------------


async def test_group_answers_only_when_addressed_and_keeps_chains_apart(fake, bot) -> None:
    core = await bot(trigger_prefix="!ask ")
    alice, bob = fake.user(10, "Alice", "alice"), fake.user(11, "Bob", "bob")
    group = fake.group(-1002, "team")

    fake.user_says(group, alice, "just chatting, no bot here")
    q1 = fake.user_says(group, alice, "@edgeqa_bot what is 2+2?")
    await fake.wait_for(lambda: len(fake.bot_messages(-1002)) == 1)
    answer1 = fake.bot_messages(-1002)[0]
    assert answer1.reply_to == q1  # the answer replies to the question: the chain continues
    assert [m.text for m in core.received] == ["what is 2+2?"]
    chain1 = core.received[0].key
    assert chain1.thread == str(q1)

    # A reply to the bot's answer, without mention, continues the same conversation.
    follow = fake.user_says(group, bob, "and times 3?", reply_to=answer1.message_id)
    # A reply to a human without mention is not for the bot.
    fake.user_says(group, bob, "nice", reply_to=q1)
    # A new mention starts a new conversation; so does the trigger prefix.
    q2 = fake.user_says(group, bob, "hey @EdgeQA_Bot, other topic")
    q3 = fake.user_says(group, bob, "!ask third topic")
    await fake.wait_for(lambda: len(core.received) == 4)
    await fake.wait_for(lambda: len(fake.bot_messages(-1002)) == 4)
    texts = {m.message_id: (m.text, m.key.thread) for m in core.received}
    assert texts[str(follow)] == ("and times 3?", chain1.thread)
    assert texts[str(q2)] == ("hey other topic", str(q2))
    assert texts[str(q3)] == ("third topic", str(q3))
    replies = {m.reply_to for m in fake.bot_messages(-1002)}
    assert replies == {q1, follow, q2, q3}

    # A reply to the answer of the follow-up is still in chain 1.
    follow_answer = next(m for m in fake.bot_messages(-1002) if m.reply_to == follow)
    deeper = fake.user_says(group, alice, "thanks!", reply_to=follow_answer.message_id)
    await fake.wait_for(lambda: len(core.received) == 5)
    assert core.received[-1].message_id == str(deeper)
    assert core.received[-1].key == chain1


async def test_group_edits_are_plain_until_final_and_slower(fake, bot) -> None:
    core = await bot(answer="Use `ls -la` to **list**.", use_drafts=True)
    adapter = core.adapter
    alice = fake.user(10, "Alice")
    group = fake.group(-1003)
    fake.user_says(group, alice, "@edgeqa_bot how to list files?")
    await fake.wait_for(
        lambda: fake.bot_messages(-1003) and fake.bot_messages(-1003)[0].html is not None
    )
    (message,) = fake.bot_messages(-1003)
    assert not fake.drafts  # no drafts outside private chats
    assert message.history[-1] == "Use ls -la to list."
    assert message.html == "Use <code>ls -la</code> to <b>list</b>."
    assert all("<" not in p["text"] for p in fake.method_calls("editMessageText")[:-1])
    key = core.received[0].key
    assert adapter.edit_interval(key) == 0.02
    assert adapter.edit_interval(ConversationKey("telegram", "", "10", "")) == 0.01
    # Two answers streaming in one group share the group's budget: each edits half as often.
    other = ConversationKey("telegram", "", "-1003", "999")
    await adapter.send(other, "another answer starts")
    assert adapter.edit_interval(key) == pytest.approx(0.04)
    assert adapter.edit_interval(other) == pytest.approx(0.04)


async def test_forum_topic_is_one_conversation_and_answers_stay_in_it(fake, bot) -> None:
    core = await bot()
    alice = fake.user(10, "Alice")
    forum = fake.group(-1004, "forum", forum=True)
    fake.user_says(forum, alice, "@edgeqa_bot in topic", topic=7)
    await fake.wait_for(lambda: fake.bot_messages(-1004))
    assert core.received[0].key.thread == "topic:7"
    assert {p.get("message_thread_id") for p in fake.method_calls("sendMessage")} == {7}


async def test_private_chat_topics_are_separate_conversations(fake, bot) -> None:
    core = await bot()
    alice = fake.user(10, "Alice")
    dm = fake.private_chat(alice)
    fake.user_says(dm, alice, "in topic 3", topic=3)
    fake.user_says(dm, alice, "in the main chat")
    await fake.wait_for(lambda: len(fake.bot_messages(10)) == 2)
    assert [m.key.thread for m in core.received] == ["topic:3", ""]
    drafts = fake.method_calls("sendMessageDraft")
    assert {d.get("message_thread_id") for d in drafts} == {3, None}


# -- commands --------------------------------------------------------------------------


async def test_commands_are_normalised_and_menu_registered(fake, bot) -> None:
    core = await bot()
    alice = fake.user(10, "Alice", "alice")
    admin = fake.user(ADMIN, "Admin", "boss")
    group = fake.group(-1005)
    dm = fake.private_chat(admin)
    fake.user_says(group, alice, "@edgeqa_bot first question")
    fake.user_says(group, alice, "/reset@edgeqa_bot")
    fake.user_says(group, alice, "/reset@other_bot")
    fake.user_says(dm, admin, "/forget @alice")
    fake.user_says(dm, admin, "/forget @nobody")
    fake.user_says(dm, admin, "/resetall")
    await fake.wait_for(lambda: len(core.received) == 5)
    texts = [m.text for m in core.received]
    assert texts == ["first question", "/reset", "/forget 10", "/forget @nobody", "/resetall"]
    # A bare command in a group applies to the sender's latest discussion there.
    assert core.received[1].key == core.received[0].key

    default = {c["command"] for c in fake.commands["default"]}
    assert {"help", "reset", "stop"} <= default
    assert not default & {"stats", "resetall", "forget"}
    admin_menu = {c["command"] for c in fake.commands[f"chat:{ADMIN}"]}
    assert {"stats", "resetall", "forget", "reset"} <= admin_menu


# -- send / edit error translation -----------------------------------------------------


async def test_send_edit_error_translation(fake, bot) -> None:
    adapter = (await bot(use_drafts=False)).adapter
    alice = fake.user(10, "Alice")
    fake.private_chat(alice)
    key = ConversationKey("telegram", "", "10", "")
    ref = await adapter.send(key, "first")

    # "message is not modified" from the server is success.
    fake.fail("editMessageText", "not_modified")
    await adapter.edit(ref, "second")

    # 429 -> RateLimited with the server's retry_after; the chat is paused meanwhile.
    fake.fail("editMessageText", "retry_after", retry_after=1)
    with pytest.raises(RateLimited) as info:
        await adapter.edit(ref, "third")
    assert info.value.retry_after == 1
    assert adapter.edit_interval(key) > 0.5
    calls = len(fake.calls)
    with pytest.raises(RateLimited):  # refused locally: Telegram would say the same
        await adapter.edit(ref, "fourth", final=True)
    assert len(fake.calls) == calls
    await asyncio.sleep(1.1)  # the pause is over
    await adapter.edit(ref, "fourth")
    assert fake.bot_messages(10)[0].history[-1] == "fourth"

    # 5xx and a dropped connection -> PlatformError (retryable), never a raw Telegram error.
    fake.fail("editMessageText", "server_error")
    with pytest.raises(PlatformError):
        await adapter.edit(ref, "fifth")
    fake.fail("editMessageText", "drop")
    with pytest.raises(PlatformError):
        await adapter.edit(ref, "sixth")

    # Too long -> MessageTooLong (before Telegram is even asked).
    with pytest.raises(MessageTooLong):
        await adapter.edit(ref, "x" * 5000)

    # "can't parse entities" on the final HTML -> the plain text goes out instead.
    fake.fail("editMessageText", "parse_entities", only_html=True)
    await adapter.edit(ref, "**final** answer", final=True)
    (message,) = fake.bot_messages(10)
    assert message.text == "**final** answer" and message.html is None

    # Deleted by someone while being written, or the chat is gone: Refused (no retrying;
    # the core sends the text as a new message instead).
    del fake.messages[10][message.message_id]
    with pytest.raises(Refused):
        await adapter.edit(ref, "after deletion")
    with pytest.raises(Refused):
        await adapter.send(ConversationKey("telegram", "", "12345", ""), "nobody here")
    fake.fail("sendMessage", "forbidden")
    with pytest.raises(Refused):
        await adapter.send(key, "blocked by the user", final=True)


async def test_429_mid_stream_still_ends_with_the_full_text(fake, bot) -> None:
    answer = "The quick brown fox jumps over the lazy dog. " * 4
    await bot(answer=answer, pieces=6, use_drafts=False)
    fake.fail("editMessageText", "retry_after", retry_after=1, skip=1)
    alice = fake.user(10, "Alice")
    fake.user_says(fake.private_chat(alice), alice, "fox?")
    await fake.wait_for(lambda: final_texts(fake, 10) == [answer.strip()])
    assert fake.faults[0].hits == 1


# -- webhook mode ----------------------------------------------------------------------


async def test_webhook_mode_checks_the_secret(fake) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/telegram/webhook"
    adapter = TelegramAdapter(settings_for(fake, mode="webhook", webhook_url=url))
    core = ScriptedCore(adapter, "webhook answer")
    app = web.Application()
    adapter.mount(app)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    try:
        await adapter.start(core)
        assert fake.webhook is not None
        assert fake.webhook["url"] == url and fake.webhook["secret_token"] == SECRET
        alice = fake.user(10, "Alice")
        dm = fake.private_chat(alice)

        forged = {
            "update_id": 999,
            "message": {"message_id": 5, "date": 1, "chat": dm, "from": alice, "text": "forged"},
        }
        async with aiohttp.ClientSession() as http:
            wrong = {"X-Telegram-Bot-Api-Secret-Token": "guess"}
            async with http.post(url, json=forged, headers=wrong) as response:
                assert response.status == 403
            async with http.post(url, json=forged) as response:
                assert response.status == 401

        fake.user_says(dm, alice, "real question")
        await fake.wait_for(lambda: final_texts(fake, 10) == ["webhook answer"])
        assert [m.text for m in core.received] == ["real question"]
        assert fake.webhook_results == [200]
        assert not fake.method_calls("getUpdates")
    finally:
        await adapter.stop()
        await runner.cleanup()


async def test_a_wrong_token_stops_start_without_showing_the_token(fake) -> None:
    settings = Settings(
        telegram={"enabled": True, "base_url": fake.base_url}, telegram_token="999:WRONG-TOKEN"
    )
    adapter = TelegramAdapter(settings)
    with pytest.raises(PlatformError) as info:
        await adapter.start(ScriptedCore(adapter))
    assert "rejected" in str(info.value)
    assert "WRONG-TOKEN" not in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


async def test_an_unreadable_get_me_reply_stops_start_in_one_line(fake) -> None:
    fake.fail("getMe", "malformed")
    adapter = TelegramAdapter(settings_for(fake))
    with pytest.raises(PlatformError) as info:
        await adapter.start(ScriptedCore(adapter))
    assert "unreadable reply to getMe" in str(info.value) and "\n" not in str(info.value)
    assert fake.token not in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__
