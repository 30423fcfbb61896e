"""Telegram under platform faults: the whole bot (python-telegram-bot, the real core, SQLite,
llama.cpp on the tiny model) against the fake Bot API, with one fault injected at one step
of an answer, for every step and every kind of fault.

Steps: in a group the answer is one message (sendMessage, plain-text edits, a final HTML
edit); in a private chat it streams as a draft (sendMessageDraft) and ends as one real
message (sendMessage). Faults: the connection dropped before Telegram processed the call,
dropped after it did (the client never hears), a 5xx, a 429 with retry_after.

Each test checks the chat as the fake server holds it: the stored answer, shown once,
nothing lost — and that the fault did happen. One case cannot be exactly-once on Telegram:
a sendMessage that Telegram carried out but whose answer was lost. The Bot API has no
idempotency key and no way for a bot to read a chat back, so the bot cannot tell "lost
before" from "lost after" and must send again (a duplicate beats a silent loss); those
cases assert that exact, documented outcome (README "Reliability").
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from adapters.telegram.render import render, visible_text
from bot.service import UNDELIVERED
from tests.fakes.common import end
from tests.fakes.telegram_api import FakeTelegram, Fault, Sent
from tests.harness import Start, as_shown, eventually, quiet, stored
from tests.telegram_support import assert_shows, bot_starter, key_of

pytestmark = pytest.mark.filterwarnings("ignore::telegram.warnings.PTBDeprecationWarning")

ALICE, BOB = 10, 11
GROUP = -100777
LIMIT = 3800
FAULTS = ("drop", "drop_after", "server_error", "retry_after")
STEPS = ("first", "middle", "final")
FOREVER = 10**6


@pytest.fixture
def bot(tmp_path: Path, tiny_model_path: Path, fake: FakeTelegram) -> Start:
    return bot_starter(
        tmp_path,
        tiny_model_path,
        fake,
        EDGEQA_TELEGRAM__EDIT_INTERVAL="0.005",
        EDGEQA_TELEGRAM__GROUP_EDIT_INTERVAL="0.005",
        # Long enough that every answer streams through several edits.
        EDGEQA_ENGINE__MAX_TOKENS="300",
    )


def inject(fake: FakeTelegram, chat: str, step: str, kind: str, **options: Any) -> Fault:
    """Make the call that carries `step` of the answer fail with `kind`."""
    if chat == "group":
        if step == "first":
            return fake.fail("sendMessage", kind, chat_id=GROUP, **options)
        if step == "middle":  # streaming edits are plain text; only the final one is HTML
            return fake.fail(
                "editMessageText", kind, when=lambda p: p.get("parse_mode") is None, **options
            )
        return fake.fail("editMessageText", kind, only_html=True, **options)
    if step == "first":
        return fake.fail("sendMessageDraft", kind, **options)
    if step == "middle":
        return fake.fail("sendMessageDraft", kind, skip=1, **options)
    return fake.fail("sendMessage", kind, chat_id=ALICE, **options)


async def ask(fake: FakeTelegram, chat: str, text: str) -> tuple[Any, Callable[[], list[Sent]]]:
    """A user asks in the group (mentioning the bot) or in a private chat; returns the
    conversation's key and a way to read the bot's messages of that conversation."""
    alice = fake.user(ALICE, "Alice", "alice")
    if chat == "group":
        group = fake.group(GROUP)
        question = fake.user_says(group, alice, f"@edgeqa_bot {text}")
        return key_of(GROUP, str(question)), lambda: [
            m for m in fake.bot_messages(GROUP) if m.reply_to == question
        ]
    dm = fake.private_chat(alice)
    before = {m.message_id for m in fake.bot_messages(ALICE)}
    fake.user_says(dm, alice, text)
    return key_of(ALICE), lambda: [
        m for m in fake.bot_messages(ALICE) if m.message_id not in before
    ]


# A sendMessage that Telegram carried out while the answer to it was lost: sent again.
SENT_TWICE = {("group", "first", "drop_after"), ("dm", "final", "drop_after")}


@pytest.mark.parametrize("kind", FAULTS)
@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("chat", ["group", "dm"])
async def test_a_fault_at_any_step_still_delivers_the_answer(
    fake: FakeTelegram, bot: Start, chat: str, step: str, kind: str
) -> None:
    fault = inject(fake, chat, step, kind)
    async with bot() as app:
        key, shown = await ask(fake, chat, "tell me something long")
        (answer,) = await stored(app, key)
        assert app.metrics.get("edgeqa_delivery_failures_total") == 0
    assert fault.hits == 1  # the fault did happen, once
    if step == "middle":  # ... while the answer was still growing
        streamed = fault.hit[0]["text"]
        assert answer.startswith(streamed) and len(streamed) < len(answer)
    messages = shown()
    if (chat, step, kind) in SENT_TWICE:
        # The lost-answer copy is an extra message carrying exactly the text of the call
        # that was dropped; the answer itself is still whole, once, after it.
        extra, *rest = messages
        whole = visible_text(render(as_shown(answer)))
        assert extra.text.strip() in (fault.hit[0]["text"].strip(), whole.strip())
        assert len(rest) == 1
        messages = rest
    assert_shows(messages, answer, LIMIT)


async def test_dropped_continuation_sends_lose_no_piece(fake: FakeTelegram, bot: Start) -> None:
    """A long answer goes on in new messages; the sends that start them are dropped too."""
    async with bot(EDGEQA_TELEGRAM__MAX_MESSAGE_LEN="120") as app:
        key, shown = await ask(fake, "group", "a long one please")
        fault = fake.fail("sendMessage", "drop", chat_id=GROUP, times=2, when=lambda p: shown())
        (answer,) = await stored(app, key)
    assert fault.hits == 2
    assert len(shown()) >= 3
    assert_shows(shown(), answer, 120)


# -- the platform stays down ------------------------------------------------------------


def outage(fake: FakeTelegram) -> list[Fault]:
    """Every way of writing into a chat fails with a 5xx until the faults are cleared."""
    methods = ("sendMessage", "editMessageText", "sendMessageDraft")
    return [fake.fail(method, "server_error", times=FOREVER) for method in methods]


async def test_down_past_the_bound_counts_a_failure_keeps_the_turn_and_recovers(
    fake: FakeTelegram, bot: Start
) -> None:
    faults = outage(fake)
    async with bot(EDGEQA_BOT__DELIVERY_TIMEOUT="0.5s") as app:
        key, shown = await ask(fake, "group", "is anyone there?")
        (answer,) = await stored(app, key)  # stored although it could not be shown
        assert app.metrics.get("edgeqa_delivery_failures_total") == 1
        assert shown() == []
        assert any(UNDELIVERED in p.get("text", "") for p in fake.method_calls("sendMessage"))

        end(faults)  # Telegram is back: the next question is answered as usual
        again, shown_again = await ask(fake, "group", "and now?")
        (second,) = await stored(app, again)
        assert_shows(shown_again(), second, LIMIT)
        assert app.metrics.get("edgeqa_delivery_failures_total") == 1
    assert answer and shown() == []


@pytest.mark.parametrize("chat", ["group", "dm"])
async def test_back_after_the_bound_the_chat_gets_the_notice(
    fake: FakeTelegram, bot: Start, chat: str
) -> None:
    faults = outage(fake)
    async with bot(EDGEQA_BOT__DELIVERY_TIMEOUT="1s") as app:
        key, shown = await ask(fake, chat, "are you there?")
        # Past the bound the notice is tried while Telegram is still down...
        await fake.wait_for(
            lambda: any(UNDELIVERED in p.get("text", "") for p in fake.method_calls("sendMessage"))
        )
        assert app.metrics.get("edgeqa_delivery_failures_total") == 1
        end(faults)  # ...then Telegram comes back, and the notice gets through.
        await stored(app, key)
        await eventually(lambda: len(shown()) == 1)
        await quiet(app)  # nothing more arrives after it
    [notice] = shown()
    assert notice.text == UNDELIVERED


# -- polling survives a restart of the Bot API server -----------------------------------


async def test_polling_reconnects_after_the_server_restarts(
    fake: FakeTelegram, bot: Start, caplog: pytest.LogCaptureFixture
) -> None:
    async with bot() as app:
        key, _ = await ask(fake, "dm", "before the outage")
        (first,) = await stored(app, key)
        polls = len(fake.method_calls("getUpdates"))
        await fake.close()  # Telegram goes away: the long poll in flight is cut
        await eventually(lambda: "getUpdates failed" in caplog.text, within=10)
        await fake.start()  # back, on the same address
        assert fake.base_url == app.settings.telegram.base_url
        again, shown_again = await ask(fake, "dm", "after the outage")
        _, second = await stored(app, again, count=2)
        assert len(fake.method_calls("getUpdates")) > polls
        assert_shows(shown_again(), second, LIMIT)
    assert first
