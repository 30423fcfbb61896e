"""Who may talk to the bot and who is an admin, per platform.

Decided on ids only — never on display names, which anyone can set to look like an admin's.
"""

from __future__ import annotations

from bot.config import Settings
from bot.sections import AccessSettings
from bot.types import IncomingMessage


class AccessPolicy:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def _rules(self, platform: str) -> AccessSettings | None:
        try:
            return self._settings.access(platform)
        except KeyError:
            return None

    def allowed(self, msg: IncomingMessage) -> bool:
        """Empty allow-lists allow everyone. A direct message from a listed user is allowed
        even when its chat is not listed (a DM is not a chat anyone else can see)."""
        rules = self._rules(msg.key.platform)
        if rules is None:
            return False
        if rules.allowed_users and msg.user_id not in rules.allowed_users:
            return False
        if not rules.allowed_chats or msg.key.channel in rules.allowed_chats:
            return True
        return msg.is_direct and bool(rules.allowed_users)

    def is_admin(self, platform: str, user_id: str) -> bool:
        rules = self._rules(platform)
        if rules is None:
            return False
        return "*" in rules.admins or user_id in rules.admins
