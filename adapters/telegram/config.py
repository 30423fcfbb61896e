"""The `[telegram]` section, owned by the adapter (opsdroid's per-connector schema).

Imports no SDK: `bot.config` assembles this section into `Settings`, and `edgeqa
check-config` must validate it without python-telegram-bot loaded.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr

from bot.sections import AccessSettings, Duration


class TelegramSettings(AccessSettings):
    enabled: bool = False
    mode: Literal["polling", "webhook"] = "polling"
    webhook_url: str = ""
    webhook_path: str = "/telegram/webhook"
    base_url: str = ""
    edit_interval: Duration = 1.0
    group_edit_interval: Duration = 3.0
    trigger_prefix: str = ""
    use_drafts: bool = True
    # Characters per message before the answer continues in a new one (Telegram: 4096,
    # kept lower for the HTML markup and for clients that count UTF-16 units).
    max_message_len: int = Field(3800, ge=100, le=4096)

    def check(self, *, token: SecretStr | None, webhook_secret: SecretStr | None) -> None:
        """What this section needs from the environment (secrets live only there); raises
        ValueError with one line naming the setting."""
        if not self.enabled:
            return
        if token is None:
            raise ValueError("telegram.enabled is true but EDGEQA_TELEGRAM_TOKEN is not set")
        if self.mode == "webhook":
            if not self.webhook_url:
                raise ValueError("telegram.mode is webhook but telegram.webhook_url is empty")
            if webhook_secret is None:
                raise ValueError(
                    "telegram.mode is webhook but EDGEQA_TELEGRAM_WEBHOOK_SECRET is not set"
                )
