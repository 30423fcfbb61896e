"""Telegram: private chats, groups (mention / reply chains), forum topics; see adapter.py."""

from adapters.telegram.adapter import TelegramAdapter

__all__ = ["TelegramAdapter"]
