"""Shared pieces of the Telegram tests that run the whole bot against the fake Bot API
(tests/fakes/telegram_api.py; the `fake` fixture in tests/conftest.py starts one).

`bot_starter` gives the `bot` fixture of test_telegram_e2e.py and test_faults_telegram.py;
`assert_shows` is their check that a chat shows exactly a stored answer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from adapters.telegram import TelegramAdapter
from adapters.telegram.render import render
from bot.app import App
from bot.types import ConversationKey
from tests.fakes.telegram_api import FakeTelegram, Sent
from tests.harness import Start, as_shown, pieces, running_app, test_settings

# A sticker, as Bot API sends it: the message the bot must answer "text only" to.
STICKER = {
    "sticker": {
        "file_id": "x",
        "file_unique_id": "y",
        "width": 1,
        "height": 1,
        "is_animated": False,
        "is_video": False,
        "type": "regular",
    }
}


def telegram_env(fake: FakeTelegram) -> dict[str, str]:
    """The variables that turn the Telegram adapter on and point it at the fake."""
    return {
        "EDGEQA_TELEGRAM__ENABLED": "true",
        "EDGEQA_TELEGRAM_TOKEN": fake.token,
        "EDGEQA_TELEGRAM__BASE_URL": fake.base_url,
    }


def bot_starter(tmp_path: Path, model: Path, fake: FakeTelegram, **defaults: str) -> Start:
    """`async with start(EDGEQA_...="...") as app:` runs the whole bot (polling) against the
    fake; `defaults` are the test module's own variables, a call adds its own."""

    @asynccontextmanager
    async def start(**env: str) -> AsyncIterator[App]:
        settings = test_settings(tmp_path, model, **telegram_env(fake), **defaults, **env)
        async with running_app(settings, [TelegramAdapter(settings)]) as app:
            yield app

    return start


def assert_shows(messages: list[Sent], answer: str, limit: int) -> None:
    """The chat's messages are the (tiny model's) answer, piece by piece, each rendered for
    Telegram."""
    expected = pieces(as_shown(answer), limit)
    assert len(messages) == len(expected)
    for message, piece in zip(messages, expected, strict=True):
        if message.html is not None:
            assert message.html == render(piece)
        else:  # Telegram refused the HTML: the plain text went out instead
            assert message.text == piece


def key_of(chat_id: int, thread: str = "") -> ConversationKey:
    return ConversationKey("telegram", "", str(chat_id), thread)
