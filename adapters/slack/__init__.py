"""Slack adapter (slack-bolt, Socket Mode or HTTP). See adapter.py."""

from adapters.slack.adapter import SlackAdapter

__all__ = ["SlackAdapter"]
