"""Command parsing, access control and the rate limit: the rules every platform shares."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.access import AccessPolicy
from bot.commands import parse_command, parse_user_ref
from bot.config import load_settings
from bot.ratelimit import RateLimiter
from bot.types import ConversationKey, IncomingMessage


@pytest.fixture(autouse=True)
def _no_local_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's own edgeqa.toml must not leak into these tests."""
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize(
    ("text", "name", "args", "known"),
    [
        ("/help", "help", "", True),
        ("  /reset  ", "reset", "", True),
        ("/reset@edgeqa_bot", "reset", "", True),
        ("/start", "help", "", True),
        ("/resetall", "reset-all", "", True),
        ("/reset_all", "reset-all", "", True),
        ("/RESET-ALL", "reset-all", "", True),
        ("/forget @alice", "forget", "@alice", True),
        ("/frobnicate now", "frobnicate", "now", False),
    ],
)
def test_commands_are_recognised(text: str, name: str, args: str, known: bool) -> None:
    command = parse_command(text)
    assert command is not None
    assert (command.name, command.args, command.known) == (name, args, known)


@pytest.mark.parametrize(
    "text", ["please /reset-all", "/etc/passwd is what?", "what is /help", "", "/", "/ reset"]
)
def test_text_that_only_contains_a_command_is_a_question(text: str) -> None:
    assert parse_command(text) is None


def test_junk_arguments_are_bounded() -> None:
    command = parse_command("/forget " + "x" * 10_000)
    assert command is not None and len(command.args) <= 200
    assert parse_user_ref("@alice") == "alice"
    assert parse_user_ref("<@U123|alice>") == "U123"
    assert parse_user_ref("12345") == "12345"
    assert parse_user_ref("two words") is None
    assert parse_user_ref("") is None


def msg(user: str, channel: str = "c1", direct: bool = False) -> IncomingMessage:
    return IncomingMessage(ConversationKey("telegram", "", channel), user, "hi", is_direct=direct)


def test_allow_lists_and_admins_go_by_id() -> None:
    settings = load_settings(
        env={
            "EDGEQA_TELEGRAM__ALLOWED_USERS": "1,2",
            "EDGEQA_TELEGRAM__ALLOWED_CHATS": "c1",
            "EDGEQA_TELEGRAM__ADMINS": "1",
        }
    )
    policy = AccessPolicy(settings)
    assert policy.allowed(msg("1"))
    assert not policy.allowed(msg("3"))  # user not listed
    assert not policy.allowed(msg("2", channel="c2"))  # chat not listed
    assert policy.allowed(msg("2", channel="dm-2", direct=True))  # a listed user's DM
    assert policy.is_admin("telegram", "1")
    assert not policy.is_admin("telegram", "2")
    assert not policy.is_admin("slack", "1")  # admins are per platform
    assert not policy.allowed(
        IncomingMessage(ConversationKey("nowhere", "", "c"), "1", "hi")
    )  # unknown platform


def test_empty_allow_lists_allow_everyone() -> None:
    policy = AccessPolicy(load_settings(env={}))
    assert policy.allowed(msg("anyone", channel="anywhere"))
    assert not policy.is_admin("telegram", "anyone")
    assert policy.is_admin("web", "anyone")  # the local browser chat: its user is the admin


def test_rate_limit_is_per_user_and_slides() -> None:
    now = [0.0]
    limiter = RateLimiter(3, clock=lambda: now[0])
    assert [limiter.check("t", "u") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.check("t", "u") == pytest.approx(60.0)
    assert limiter.check("t", "other") == 0.0
    now[0] = 30.0
    assert limiter.check("t", "u") == pytest.approx(30.0)
    now[0] = 60.0
    assert limiter.check("t", "u") == 0.0
    assert RateLimiter(0).check("t", "u") == 0.0  # 0 means unlimited
