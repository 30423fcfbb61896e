"""The `[slack]` section, owned by the adapter (opsdroid's per-connector schema).

Imports no SDK: `bot.config` assembles this section into `Settings`, and `edgeqa
check-config` must validate it without slack-bolt loaded.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr

from bot.sections import AccessSettings, Duration


class SlackSettings(AccessSettings):
    enabled: bool = False
    mode: Literal["socket", "http"] = "socket"
    base_url: str = ""
    events_path: str = "/slack/events"
    commands_path: str = "/slack/commands"
    command: str = "/edgeqa"
    edit_interval: Duration = 1.5
    workspace_edits_per_minute: int = Field(50, ge=1)
    answer_thread_followups: bool = True
    native_streaming: bool = False
    max_message_len: int = Field(3500, ge=100, le=39000)

    def check(
        self,
        *,
        bot_token: SecretStr | None,
        app_token: SecretStr | None,
        signing_secret: SecretStr | None,
    ) -> None:
        """What this section needs from the environment (secrets live only there); raises
        ValueError with one line naming the setting."""
        if not self.enabled:
            return
        if bot_token is None:
            raise ValueError("slack.enabled is true but EDGEQA_SLACK_BOT_TOKEN is not set")
        if self.mode == "socket" and app_token is None:
            raise ValueError("slack.mode is socket but EDGEQA_SLACK_APP_TOKEN is not set")
        if self.mode == "http" and signing_secret is None:
            raise ValueError("slack.mode is http but EDGEQA_SLACK_SIGNING_SECRET is not set")
