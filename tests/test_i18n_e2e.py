"""Chinese-speaking users through the real adapters, the real core and llama.cpp (tiny model):
the bot's own texts follow each user's platform language, and fall back to English.

Telegram sends language_code with every message; Slack only tells a user's locale through
users.info (scope users:read), which the fake answers like Slack, missing_scope included.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.fakes.slack_workspace import SlackWorkspace
from tests.fakes.telegram_api import FakeTelegram
from tests.harness import Start, stored
from tests.slack_support import bot_starter as slack_starter
from tests.slack_support import eventually, workspace
from tests.telegram_support import STICKER, bot_starter, key_of

pytestmark = pytest.mark.filterwarnings("ignore::telegram.warnings.PTBDeprecationWarning")

ADMIN = 42
LI, ALICE, PIERRE = 20, 21, 22


@pytest.fixture
def bot(tmp_path: Path, tiny_model_path: Path, fake: FakeTelegram) -> Start:
    return bot_starter(
        tmp_path,
        tiny_model_path,
        fake,
        EDGEQA_TELEGRAM__ADMINS=str(ADMIN),
        EDGEQA_TELEGRAM__EDIT_INTERVAL="0.005",
        # The queue line is a real message then (a draft would hide it from the chat).
        EDGEQA_TELEGRAM__USE_DRAFTS="false",
        EDGEQA_ENGINE__MAX_TOKENS="40",
    )


def shown(fake: FakeTelegram, chat: int) -> list[str]:
    """Every text the bot's messages in `chat` showed, in order."""
    return [text for message in fake.bot_messages(chat) for text in message.history]


async def test_a_chinese_telegram_user_gets_chinese_queue_refusal_and_help(
    fake: FakeTelegram, bot: Start
) -> None:
    li = fake.user(LI, "李雷", "lilei", language="zh-hans")
    dm = fake.private_chat(li)
    async with bot() as app:
        # Two questions in one update batch: the second waits for the first (one thread).
        fake.user_says(dm, li, "羊驼是什么？")
        fake.user_says(dm, li, "它们吃什么？")
        await stored(app, key_of(LI), 2)
        await fake.wait_for(lambda: len(fake.bot_messages(LI)) == 2)
        texts = shown(fake, LI)
        assert "⏳ 排队中（第 1 位）——轮到时我会在这里回答。" in texts
        assert not any("Queued" in text for text in texts)

        fake.user_says(dm, li, "/stats")
        await fake.wait_for(lambda: len(fake.bot_messages(LI)) == 3)
        assert fake.bot_messages(LI)[-1].text == "抱歉，/stats 仅限管理员使用。"

        fake.user_says(dm, li, "/help")
        await fake.wait_for(lambda: len(fake.bot_messages(LI)) == 4)
        help_text = fake.bot_messages(LI)[-1].text
        assert help_text.startswith("在这个对话里尽管问我，我会在这里回答。命令：")
        assert "/reset — 忘掉这个对话的上下文" in help_text
        assert "/stats" not in help_text

        fake.user_says(dm, li, "/reset")
        await fake.wait_for(lambda: len(fake.bot_messages(LI)) == 5)
        assert fake.bot_messages(LI)[-1].text == "好了——我已忘掉这个对话（之前的 2 个问题）。"

        fake.user_says(dm, li, None, extra=STICKER)
        await fake.wait_for(lambda: len(fake.bot_messages(LI)) == 6)
        assert fake.bot_messages(LI)[-1].text == "我只能读文字消息——请把问题打出来。"
    # The "/" menu in Chinese for Chinese apps, English for everyone else.
    chinese_menu = {c["command"]: c["description"] for c in fake.commands["default@zh"]}
    assert chinese_menu["reset"] == "忘掉这个对话的上下文"
    english_menu = {c["command"]: c["description"] for c in fake.commands["default"]}
    assert english_menu["reset"] == "forget this thread's context"


async def test_english_and_unknown_languages_get_english(fake: FakeTelegram, bot: Start) -> None:
    alice = fake.user(ALICE, "Alice", "alice", language="en-GB")
    pierre = fake.user(PIERRE, "Pierre", "pierre", language="fr")
    async with bot():
        for user in (alice, pierre):
            fake.user_says(fake.private_chat(user), user, "/stats")
        await fake.wait_for(lambda: fake.bot_messages(ALICE) and fake.bot_messages(PIERRE))
    assert fake.bot_messages(ALICE)[0].text == "Sorry, /stats is for admins only."
    assert fake.bot_messages(PIERRE)[0].text == "Sorry, /stats is for admins only."


async def test_bot_language_speaks_chinese_to_everyone(fake: FakeTelegram, bot: Start) -> None:
    alice = fake.user(ALICE, "Alice", "alice", language="en")
    async with bot(EDGEQA_BOT__LANGUAGE="zh"):
        fake.user_says(fake.private_chat(alice), alice, "/stats")
        await fake.wait_for(lambda: fake.bot_messages(ALICE))
    assert fake.bot_messages(ALICE)[0].text == "抱歉，/stats 仅限管理员使用。"
    assert "default@zh" not in fake.commands  # one menu, in Chinese, for everyone
    assert {c["description"] for c in fake.commands["default"]} >= {"忘掉这个对话的上下文"}


# -- Slack -----------------------------------------------------------------------------

CHANNEL = "C0GENERAL"
DM = "D0ALICE"


@pytest.fixture
async def ws(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[SlackWorkspace]:
    async with workspace(monkeypatch) as started:
        yield started


@pytest.fixture
def slack_bot(tmp_path: Path, tiny_model_path: Path, ws: SlackWorkspace) -> Start:
    return slack_starter(
        tmp_path, tiny_model_path, ws, EDGEQA_SLACK__WORKSPACE_EDITS_PER_MINUTE="600"
    )


async def test_a_chinese_slack_user_is_answered_in_chinese(
    slack_bot: Start, ws: SlackWorkspace
) -> None:
    ws.api.locales["U0LI"] = "zh-CN"
    async with slack_bot():
        await ws.say(DM, "/stats", user="U0LI")
        await eventually(lambda: [m for m in ws.api.main_line(DM) if m.is_bot])
        [refused] = [m for m in ws.api.main_line(DM) if m.is_bot]
        assert refused.text == "抱歉，/edgeqa stats 仅限管理员使用。"
        _envelope, rid = await ws.slash("help", channel=DM, user="U0LI")
        reply = await ws.ephemeral(rid)
        assert reply["text"].startswith("在这个对话里尽管问我")
        _envelope, rid = await ws.slash("reset", channel=CHANNEL, user="U0LI")
        hint = await ws.ephemeral(rid)
        assert hint["text"].startswith("在频道里，每段对话都是一个话题串")
        await ws.say(DM, "/help", user="U0LI")
        await eventually(lambda: len([m for m in ws.api.main_line(DM) if m.is_bot]) == 2)
    lookups = [c for c in ws.api.calls if c.method == "users.info"]
    assert len(lookups) == 1  # cached: one call for the user's whole conversation
    assert lookups[0].params["include_locale"] in ("true", "1", True)


async def test_without_users_read_slack_falls_back_to_english_and_stops_asking(
    slack_bot: Start, ws: SlackWorkspace, caplog: pytest.LogCaptureFixture
) -> None:
    ws.api.locales["U0LI"] = "zh-CN"
    ws.api.scopes.discard("users:read")
    async with slack_bot():
        for expected in (1, 2):
            await ws.say(DM, "/stats", user="U0LI")

            def answered(n=expected):  # this loop's count
                return len([m for m in ws.api.main_line(DM) if m.is_bot]) == n

            await eventually(answered)
        refusals = [m.text for m in ws.api.main_line(DM) if m.is_bot]
    assert refusals == ["Sorry, /edgeqa stats is for admins only."] * 2
    assert len([c for c in ws.api.calls if c.method == "users.info"]) == 1
    assert "users:read" in caplog.text
