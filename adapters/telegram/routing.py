"""Which Telegram messages are for the bot, and which conversation each belongs to.

A private chat is one conversation (one per topic where the chat has topics). A group is
many: every @mention (or trigger prefix) not in reply to the bot starts a reply chain rooted
at that message, and a reply to any message of the chain — the bot's answers, the questions
in it — continues it, so two discussions in one group never share context. Forum topics are
one conversation each. Telegram does not send a reply's ancestors, so the chain roots are
remembered here (bounded); after a restart a reply to an old answer starts from that answer.

Everything here is synchronous and pure apart from those two bounded maps, which keeps the
addressing rules testable without a network.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from telegram import Message, MessageEntity
from telegram.constants import ChatType

from adapters.shared import BoundedMap
from bot.types import ConversationKey

PLATFORM = "telegram"
TOPIC_PREFIX = "topic:"


@dataclass(frozen=True, slots=True)
class Route:
    """A message for the bot: `text` is stripped of the mention / prefix / "@botname"."""

    key: ConversationKey
    text: str
    is_direct: bool


@dataclass(frozen=True, slots=True)
class Unsupported:
    """A sticker, photo, voice... in a private chat: worth a short "text only" reply."""

    key: ConversationKey


def is_group_chat(chat_id: int) -> bool:
    """Telegram gives private chats positive ids (the user's) and groups negative ones."""
    return chat_id < 0


def topic_of(thread: str) -> int | None:
    """The forum topic (message_thread_id) a conversation lives in, if any."""
    if thread.startswith(TOPIC_PREFIX):
        return int(thread.removeprefix(TOPIC_PREFIX))
    return None


_SPACES = re.compile(r"[ \t]{2,}")


def _entities(message: Message, types: list[str]) -> dict[MessageEntity, str]:
    """`message.parse_entities(types)`, except that a lone UTF-16 surrogate in the text (JSON
    can carry one as a "\\ud800" escape) counts as the one code unit it is instead of making
    PTB's strict UTF-16 encoding raise, which would drop the whole update."""
    units = (message.text or "").encode("utf-16-le", "surrogatepass")
    return {
        entity: units[entity.offset * 2 : (entity.offset + entity.length) * 2].decode(
            "utf-16-le", "surrogatepass"
        )
        for entity in message.entities
        if entity.type in types
    }


class Router:
    def __init__(
        self, bot_id: int, bot_username: str, trigger_prefix: str = "", memory: int = 20_000
    ) -> None:
        self.bot_id = bot_id
        self.bot_username = bot_username.lower()
        self.trigger_prefix = trigger_prefix
        self._chains: BoundedMap[tuple[int, int], str] = BoundedMap(memory)
        self._users: BoundedMap[str, int] = BoundedMap(memory)
        self._latest: BoundedMap[tuple[int, int], str] = BoundedMap(memory)  # (chat, user)

    # -- memory ------------------------------------------------------------------------

    def remember(self, chat_id: int, message_id: int, thread: str) -> None:
        """Record that `message_id` (a bot answer or a question) belongs to chain `thread`."""
        if is_group_chat(chat_id) and thread and topic_of(thread) is None:
            self._chains.put((chat_id, message_id), thread)

    def chain_of(self, chat_id: int, message_id: int) -> str | None:
        return self._chains.get((chat_id, message_id))

    def user_id_of(self, username: str) -> int | None:
        return self._users.get(username.lstrip("@").lower())

    # -- routing -----------------------------------------------------------------------

    def route(self, message: Message) -> Route | Unsupported | None:
        """Decide whether `message` is for the bot. None means: ignore it silently."""
        user = message.from_user
        chat = message.chat
        if user is None or user.is_bot or chat.type == ChatType.CHANNEL:
            return None
        if user.username:
            self._users.put(user.username.lower(), user.id)
        direct = chat.type == ChatType.PRIVATE
        text = message.text
        if text is None:
            if direct and message.effective_attachment is not None:
                return Unsupported(self._direct_key(message))
            return None  # service messages, media in groups
        command = self._command(message, text)
        if command == "":
            return None  # a command for another bot
        if direct:
            if command is None:
                command = self._strip_mentions(message, self._strip_prefix(text))
            return Route(self._direct_key(message), command.strip(), True)
        return self._group(message, text, command)

    def _direct_key(self, message: Message) -> ConversationKey:
        thread = ""
        if message.is_topic_message and message.message_thread_id:
            thread = f"{TOPIC_PREFIX}{message.message_thread_id}"
        return ConversationKey(PLATFORM, "", str(message.chat.id), thread)

    def _group(self, message: Message, text: str, command: str | None) -> Route | None:
        chat_id = message.chat.id
        user_id = message.from_user.id if message.from_user is not None else 0
        replied = message.reply_to_message
        if replied is not None and replied.forum_topic_created is not None:
            replied = None  # in a forum every message "replies" to its topic's first message
        to_bot = (
            replied is not None
            and replied.from_user is not None
            and replied.from_user.id == self.bot_id
        )
        mentioned = self._mentions(message)
        prefixed = bool(self.trigger_prefix) and text.startswith(self.trigger_prefix)
        if command is None and not (to_bot or mentioned or prefixed):
            return None
        if message.is_topic_message and message.message_thread_id:
            thread = f"{TOPIC_PREFIX}{message.message_thread_id}"
        elif replied is not None and (known := self.chain_of(chat_id, replied.message_id)):
            thread = known
        elif command is not None and replied is None:
            # A bare "/stop" or "/reset" in a group means the sender's latest discussion.
            thread = self._latest.get((chat_id, user_id)) or str(message.message_id)
        elif to_bot and replied is not None:
            # An answer we don't remember (restart, another replica): in supergroups Telegram
            # names the reply thread's root, which is where our chain started.
            thread = str(message.message_thread_id or replied.message_id)
        else:
            thread = str(message.message_id)
        self.remember(chat_id, message.message_id, thread)
        if command is not None:
            body = command
        else:
            self._latest.put((chat_id, user_id), thread)
            body = self._strip_mentions(message, self._strip_prefix(text))
        key = ConversationKey(PLATFORM, "", str(chat_id), thread)
        return Route(key, body.strip(), False)

    # -- text --------------------------------------------------------------------------

    def _command(self, message: Message, text: str) -> str | None:
        """ "/reset@thisbot args" -> "/reset args"; "" for another bot's command; None if the
        message is no command. "/forget @alice" names alice by id where she has been seen."""
        entities = _entities(message, [MessageEntity.BOT_COMMAND])
        first = next((e for e in entities if e.offset == 0), None)
        if first is None or not text.startswith("/"):
            return None
        word = entities[first]
        name, _, target = word[1:].partition("@")
        if target and target.lower() != self.bot_username:
            return ""
        args = text[len(word) :]
        if name.lower() == "forget":
            args = self._resolve_user(message, args)
        return f"/{name}{args}"

    def _resolve_user(self, message: Message, args: str) -> str:
        for entity in _entities(message, [MessageEntity.TEXT_MENTION]):
            if entity.user is not None:  # a user without a username, picked from the menu
                return f" {entity.user.id}"
        arg = args.strip()
        if arg.startswith("@") and (user_id := self.user_id_of(arg)) is not None:
            return f" {user_id}"
        return args

    def _mentions(self, message: Message) -> bool:
        entities = _entities(message, [MessageEntity.MENTION, MessageEntity.TEXT_MENTION])
        for entity, word in entities.items():
            if entity.type == MessageEntity.MENTION and word[1:].lower() == self.bot_username:
                return True
            if entity.user is not None and entity.user.id == self.bot_id:
                return True
        return False

    def _strip_mentions(self, message: Message, text: str) -> str:
        for word in _entities(message, [MessageEntity.MENTION]).values():
            if word[1:].lower() == self.bot_username:
                text = re.sub(re.escape(word) + r"[,:]?", " ", text)
        return _SPACES.sub(" ", text).strip(" \t,:")

    def _strip_prefix(self, text: str) -> str:
        if self.trigger_prefix and text.startswith(self.trigger_prefix):
            return text[len(self.trigger_prefix) :]
        return text
