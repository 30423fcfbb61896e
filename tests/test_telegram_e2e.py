"""Telegram end to end: fake Bot API server <-HTTP-> python-telegram-bot <-> TelegramAdapter
<-> the real core (App: service, flusher, SQLite history) <-> llama.cpp on a tiny model.

The tiny model writes random-looking text, so the checks compare what the chat shows with
what the bot stored as the answer: the messages, in order, must be exactly the answer cut
where the flusher cuts it (each piece rendered to Telegram HTML) — nothing lost, nothing
twice.
"""

from __future__ import annotations

import logging
import logging.handlers
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.fakes.telegram_api import FakeTelegram, Sent
from tests.harness import Start, answers, free_port, stored
from tests.telegram_support import assert_shows, bot_starter, key_of

# PTB itself warns (building RetryAfter) that retry_after will become a timedelta one day.
pytestmark = pytest.mark.filterwarnings("ignore::telegram.warnings.PTBDeprecationWarning")

ADMIN = 42
ALICE, BOB, EVE = 10, 11, 66
GROUP = -100123
SECRET = "e2e-webhook-secret"


@pytest.fixture
def bot(tmp_path: Path, tiny_model_path: Path, fake: FakeTelegram) -> Start:
    """`async with bot(EDGEQA_...="...") as app:` runs the whole bot against the fake."""
    return bot_starter(
        tmp_path,
        tiny_model_path,
        fake,
        EDGEQA_TELEGRAM__ADMINS=str(ADMIN),
        EDGEQA_TELEGRAM__EDIT_INTERVAL="0.005",
        EDGEQA_TELEGRAM__GROUP_EDIT_INTERVAL="0.01",
    )


def people(fake: FakeTelegram) -> dict[str, dict[str, Any]]:
    return {
        "alice": fake.user(ALICE, "Alice", "alice"),
        "bob": fake.user(BOB, "Bob", "bob"),
        "eve": fake.user(EVE, "Eve", "eve"),
        "admin": fake.user(ADMIN, "Admin", "boss"),
    }


def replies_to(fake: FakeTelegram, chat_id: int, message_id: int) -> list[Sent]:
    return [m for m in fake.bot_messages(chat_id) if m.reply_to == message_id]


# -- private chats ---------------------------------------------------------------------


async def test_dm_question_streams_as_a_draft_then_one_final_message(fake, bot) -> None:
    users = people(fake)
    dm = fake.private_chat(users["alice"])
    async with bot(EDGEQA_ENGINE__MAX_TOKENS="200") as app:
        fake.user_says(dm, users["alice"], "Tell me about llamas")
        (answer,) = await stored(app, key_of(ALICE))
    # (No check of "typing…": it is only sent if the first words take a moment to come.)
    (drafts,) = fake.drafts.values()
    assert len(set(drafts)) >= 2  # a live draft that grew with the answer...
    assert all(answer.startswith(d) for d in drafts if d != "…")
    assert_shows(fake.bot_messages(ALICE), answer, 3800)  # ...then one real message
    assert not fake.method_calls("editMessageText")


async def test_dm_without_drafts_edits_one_message(fake, bot) -> None:
    users = people(fake)
    dm = fake.private_chat(users["bob"])
    async with bot(EDGEQA_ENGINE__MAX_TOKENS="200", EDGEQA_TELEGRAM__USE_DRAFTS="false") as app:
        fake.user_says(dm, users["bob"], "Explain edits")
        (answer,) = await stored(app, key_of(BOB))
    (message,) = fake.bot_messages(BOB)
    assert len(message.history) >= 3  # first text, edits while streaming, final
    assert all(answer.startswith(text) for text in message.history[:-1] if text != "…")
    assert_shows([message], answer, 3800)
    assert not fake.drafts


async def test_a_server_without_drafts_gets_edits_at_once(fake, bot) -> None:
    """404 is what Telegram answers for an unknown method, and an older self-hosted Bot API
    server for sendMessageDraft: one try, one log line, then the answer streams by edits."""
    users = people(fake)
    dm = fake.private_chat(users["alice"])
    fake.fail("sendMessageDraft", "not_found", times=1000)
    logged = logging.handlers.BufferingHandler(10_000)
    logger = logging.getLogger("adapters.telegram")
    level = logger.level
    logger.addHandler(logged)
    logger.setLevel(logging.INFO)
    try:
        async with bot(EDGEQA_ENGINE__MAX_TOKENS="200") as app:
            fake.user_says(dm, users["alice"], "Tell me about llamas")
            (answer,) = await stored(app, key_of(ALICE))
    finally:
        logger.removeHandler(logged)
        logger.setLevel(level)
    lines = [record.getMessage() for record in logged.buffer]
    assert len(fake.method_calls("sendMessageDraft")) == 1
    (message,) = fake.bot_messages(ALICE)
    assert len(message.history) >= 2  # the first text, edits, the final one
    assert_shows([message], answer, 3800)
    assert sum("drafts refused" in line for line in lines) == 1
    assert not [line for line in lines if "may not write" in line]


async def test_an_unreadable_reply_to_the_answer_still_stores_it(fake, bot) -> None:
    """Telegram (or a proxy) sent the answer but a reply PTB cannot read (a malformed date):
    it is not sent again, the user gets no apology, and the turn is stored."""
    users = people(fake)
    dm = fake.private_chat(users["alice"])
    fake.fail("sendMessage", "malformed_date", chat_id=ALICE)
    async with bot() as app:
        fake.user_says(dm, users["alice"], "Tell me about llamas")
        (answer,) = await stored(app, key_of(ALICE))
        assert app.metrics.get("edgeqa_delivery_failures_total") == 0
    assert_shows(fake.bot_messages(ALICE), answer, 3800)


async def test_long_answer_continues_in_new_messages_with_nothing_lost(fake, bot) -> None:
    users = people(fake)
    dm = fake.private_chat(users["alice"])
    async with bot(EDGEQA_ENGINE__MAX_TOKENS="250", EDGEQA_TELEGRAM__MAX_MESSAGE_LEN="120") as app:
        fake.user_says(dm, users["alice"], "Write a long answer")
        (answer,) = await stored(app, key_of(ALICE))
    assert len(answer) > 2 * 120
    messages = fake.bot_messages(ALICE)
    assert len(messages) >= 3
    assert_shows(messages, answer, 120)


async def test_429_in_the_middle_still_ends_with_the_full_text(fake, bot) -> None:
    users = people(fake)
    group = fake.group(GROUP)
    fault = fake.fail("editMessageText", "retry_after", retry_after=1)
    async with bot(EDGEQA_ENGINE__MAX_TOKENS="200") as app:
        question = fake.user_says(group, users["alice"], "@edgeqa_bot go on at length")
        (answer,) = await stored(app, key_of(GROUP, str(question)))
    assert fault.hits == 1
    assert_shows(replies_to(fake, GROUP, question), answer, 3800)


async def test_server_errors_and_dropped_connections_lose_nothing(fake, bot) -> None:
    users = people(fake)
    group = fake.group(GROUP)
    faults = [
        fake.fail("sendMessage", "server_error"),
        fake.fail("sendMessage", "drop"),
        fake.fail("editMessageText", "drop"),
    ]
    async with bot(EDGEQA_ENGINE__MAX_TOKENS="120") as app:
        question = fake.user_says(group, users["bob"], "@edgeqa_bot are you robust?")
        (answer,) = await stored(app, key_of(GROUP, str(question)))
    assert [f.hits for f in faults][:2] == [1, 1]
    assert_shows(replies_to(fake, GROUP, question), answer, 3800)


async def test_an_answer_deleted_while_streaming_comes_back_whole(fake, bot) -> None:
    users = people(fake)
    group = fake.group(GROUP)
    fault = fake.fail("editMessageText", "deleted")
    async with bot(EDGEQA_ENGINE__MAX_TOKENS="150") as app:
        question = fake.user_says(group, users["alice"], "@edgeqa_bot write something")
        (answer,) = await stored(app, key_of(GROUP, str(question)))
    assert fault.hits == 1
    assert_shows(replies_to(fake, GROUP, question), answer, 3800)


async def test_strangers_are_ignored_silently(fake, bot) -> None:
    users = people(fake)
    eve_dm, alice_dm = fake.private_chat(users["eve"]), fake.private_chat(users["alice"])
    sticker = {
        "sticker": {
            "file_id": "f",
            "file_unique_id": "u",
            "width": 1,
            "height": 1,
            "is_animated": False,
            "is_video": False,
            "type": "regular",
        }
    }
    async with bot(EDGEQA_TELEGRAM__ALLOWED_USERS=f"{ALICE},{ADMIN}") as app:
        fake.user_says(eve_dm, users["eve"], "let me in")
        fake.user_says(eve_dm, users["eve"], None, extra=sticker)
        fake.user_says(alice_dm, users["alice"], "I am allowed")
        (answer,) = await stored(app, key_of(ALICE))
        fake.user_says(alice_dm, users["alice"], None, extra=sticker)
        await fake.wait_for(lambda: len(fake.bot_messages(ALICE)) == 2)
        assert await answers(app, key_of(EVE)) == []
    assert fake.bot_messages(EVE) == []
    assert_shows(fake.bot_messages(ALICE)[:1], answer, 3800)
    assert "text" in fake.bot_messages(ALICE)[1].text  # stickers: "text only", to Alice


# -- groups ----------------------------------------------------------------------------


async def test_group_answers_mentions_and_reply_chains_only(fake, bot) -> None:
    users = people(fake)
    group = fake.group(GROUP)
    async with bot() as app:
        chatter = fake.user_says(group, users["alice"], "morning all, no bot needed")
        q1 = fake.user_says(group, users["alice"], "@edgeqa_bot first question")
        chain1 = key_of(GROUP, str(q1))
        (answer1,) = await stored(app, chain1)
        (reply1,) = replies_to(fake, GROUP, q1)
        assert_shows([reply1], answer1, 3800)

        # Bob replies to the bot's answer without mentioning it: same conversation.
        q2 = fake.user_says(group, users["bob"], "and a follow-up", reply_to=reply1.message_id)
        # Bob mentions the bot afresh: a conversation of its own.
        q3 = fake.user_says(group, users["bob"], "@edgeqa_bot unrelated question")
        _, second = await stored(app, chain1, count=2)
        (other,) = await stored(app, key_of(GROUP, str(q3)))
        turns = await app.repo.load_history(chain1)
        assert [t.user_id for t in turns] == [str(ALICE), str(BOB)]
        assert turns[1].question == "and a follow-up"
        assert_shows(replies_to(fake, GROUP, q2), second, 3800)
        assert_shows(replies_to(fake, GROUP, q3), other, 3800)
    assert replies_to(fake, GROUP, chatter) == []
    assert len(fake.bot_messages(GROUP)) == 3


async def test_commands_and_admin_refusals(fake, bot) -> None:
    users = people(fake)
    group = fake.group(GROUP)
    admin_dm = fake.private_chat(users["admin"])
    async with bot() as app:
        q1 = fake.user_says(group, users["alice"], "@edgeqa_bot remember this")
        chain = key_of(GROUP, str(q1))
        await stored(app, chain)
        (answer,) = replies_to(fake, GROUP, q1)

        reset = fake.user_says(
            group, users["alice"], "/reset@edgeqa_bot", reply_to=answer.message_id
        )
        (done,) = await fake.wait_for(lambda: replies_to(fake, GROUP, reset))
        assert "forgotten this thread" in done.text
        assert await answers(app, chain) == []

        stats = fake.user_says(group, users["alice"], "/stats@edgeqa_bot")
        (refused,) = await fake.wait_for(lambda: replies_to(fake, GROUP, stats))
        assert "admins only" in refused.text
        resetall = fake.user_says(group, users["bob"], "/resetall")
        (refused,) = await fake.wait_for(lambda: replies_to(fake, GROUP, resetall))
        assert "admins only" in refused.text
        fake.user_says(group, users["alice"], "/reset@some_other_bot")
        help_ = fake.user_says(group, users["alice"], "/help@edgeqa_bot")
        (shown,) = await fake.wait_for(lambda: replies_to(fake, GROUP, help_))
        assert "/reset" in shown.text and "/stats" not in shown.text

        fake.user_says(admin_dm, users["admin"], "/stats")
        await fake.wait_for(lambda: len(fake.bot_messages(ADMIN)) == 1)
        assert "Conversations:" in fake.bot_messages(ADMIN)[0].text
        q2 = fake.user_says(group, users["alice"], "@edgeqa_bot ask again")
        await stored(app, key_of(GROUP, str(q2)))
        fake.user_says(admin_dm, users["admin"], "/forget @alice")
        await fake.wait_for(lambda: len(fake.bot_messages(ADMIN)) == 2)
        assert fake.bot_messages(ADMIN)[1].text.endswith(f"1 question from {ALICE}.")
        assert await answers(app, key_of(GROUP, str(q2))) == []
        fake.user_says(admin_dm, users["admin"], "/start")
        await fake.wait_for(lambda: len(fake.bot_messages(ADMIN)) == 3)
        assert "/stats" in fake.bot_messages(ADMIN)[2].text  # admins see admin commands
    # "/reset@some_other_bot" got no answer: every reply in the group is accounted for.
    assert len(fake.bot_messages(GROUP)) == 6
    assert "stats" in {c["command"] for c in fake.commands[f"chat:{ADMIN}"]}


# -- webhook mode ----------------------------------------------------------------------


async def test_webhook_mode_answers_and_rejects_a_wrong_secret(fake, bot) -> None:
    users = people(fake)
    dm = fake.private_chat(users["alice"])
    port = free_port()
    url = f"http://127.0.0.1:{port}/telegram/webhook"
    async with bot(
        EDGEQA_WEB__PORT=str(port),
        EDGEQA_TELEGRAM__MODE="webhook",
        EDGEQA_TELEGRAM__WEBHOOK_URL=url,
        EDGEQA_TELEGRAM_WEBHOOK_SECRET=SECRET,
    ) as app:
        assert fake.webhook is not None and fake.webhook["secret_token"] == SECRET
        forged = {
            "update_id": 9999,
            "message": {
                "message_id": 9999,
                "date": 1,
                "chat": dm,
                "from": users["alice"],
                "text": "forged question",
            },
        }
        async with aiohttp.ClientSession() as http:
            for headers, status in (({"X-Telegram-Bot-Api-Secret-Token": "nope"}, 403), ({}, 401)):
                async with http.post(url, json=forged, headers=headers) as response:
                    assert response.status == status
        fake.user_says(dm, users["alice"], "real question")
        (answer,) = await stored(app, key_of(ALICE))
        turns = await app.repo.load_history(key_of(ALICE))
    assert [t.question for t in turns] == ["real question"]
    assert_shows(fake.bot_messages(ALICE), answer, 3800)
    assert fake.webhook_results == [200]
    assert not fake.method_calls("getUpdates")
