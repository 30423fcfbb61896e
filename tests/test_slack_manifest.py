"""The app manifest creates an app that delivers what the adapter listens for."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.slack.config import SlackSettings

yaml = pytest.importorskip("yaml")  # comes with huggingface-hub

MANIFEST = Path(__file__).resolve().parent.parent / "slack-app-manifest.yaml"


def test_manifest_matches_the_adapter() -> None:
    manifest = yaml.safe_load(MANIFEST.read_text(encoding="utf-8"))
    settings = manifest["settings"]
    assert settings["socket_mode_enabled"] is True  # the default mode needs no public URL
    events = set(settings["event_subscriptions"]["bot_events"])
    assert events >= {"app_mention", "message.channels", "message.groups", "message.im"}
    scopes = set(manifest["oauth_config"]["scopes"]["bot"])
    needed = {"app_mentions:read", "channels:history", "groups:history", "im:history"}
    assert scopes >= needed | {"chat:write", "commands"}
    assert "users:read" in scopes  # users.info with include_locale: who speaks which language
    [command] = manifest["features"]["slash_commands"]
    assert command["command"] == SlackSettings().command
    assert command["should_escape"] is True  # forget <@U123|name> arrives with the user id
    assert manifest["features"]["app_home"]["messages_tab_enabled"] is True  # DMs
