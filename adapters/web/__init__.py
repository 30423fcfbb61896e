"""The local browser chat (the default platform when no Slack or Telegram token is set)."""

from adapters.web.adapter import WebChatAdapter

__all__ = ["WebChatAdapter"]
