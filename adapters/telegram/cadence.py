"""How often Telegram may be written to: per chat, shared by a group's conversations.

Telegram allows about one message or edit a second per private chat and about 20 a minute
per group — per group, not per conversation, so answers streaming in one group at once
share it. A 429 (flood control) pauses the whole chat for the time Telegram asks.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from adapters.telegram.config import TelegramSettings
from adapters.telegram.routing import is_group_chat
from bot.types import ConversationKey

ACTIVE_FOR = 10.0  # seconds a group conversation counts as streaming after its last write


class ChatCadence:
    def __init__(
        self, settings: TelegramSettings, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._tg = settings
        self._clock = clock
        self._paused_until: dict[int, float] = {}  # chat id -> clock time (429)
        self._streaming: dict[int, dict[str, float]] = {}  # group -> thread -> last write

    def edit_interval(self, key: ConversationKey) -> float:
        """Private chats: edit_interval. Groups: group_edit_interval shared by the answers
        streaming there at once. Longer while the chat is paused by a 429."""
        chat_id = int(key.channel)
        interval = self._tg.edit_interval
        if is_group_chat(chat_id):
            now = self._clock()
            active = self._streaming.setdefault(chat_id, {})
            for thread, last in list(active.items()):
                if now - last > ACTIVE_FOR:
                    del active[thread]
            others = len(active.keys() - {key.thread})
            interval = self._tg.group_edit_interval * (1 + others)
        return max(interval, self.pause_left(chat_id))

    def wrote(self, key: ConversationKey) -> None:
        """Note that a conversation in a group just sent or edited (see edit_interval)."""
        chat_id = int(key.channel)
        if is_group_chat(chat_id):
            self._streaming.setdefault(chat_id, {})[key.thread] = self._clock()

    def pause(self, chat_id: int, seconds: float) -> None:
        """Telegram's flood control: nothing goes to this chat for `seconds`."""
        self._paused_until[chat_id] = self._clock() + seconds

    def pause_left(self, chat_id: int) -> float:
        return max(0.0, self._paused_until.get(chat_id, 0.0) - self._clock())
