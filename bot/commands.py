"""Platform-neutral commands: what they are called, who may run them, how they are parsed.

Each adapter maps its own syntax ("/reset@botname", "/edgeqa reset") onto the names here,
so permissions and behaviour are decided in one place for every platform.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CommandSpec:
    name: str
    admin: bool
    usage: str
    summary: str


COMMANDS: dict[str, CommandSpec] = {
    spec.name: spec
    for spec in (
        CommandSpec("help", False, "/help", "what I can do"),
        CommandSpec("reset", False, "/reset", "forget this thread's context"),
        CommandSpec("stop", False, "/stop", "stop the answer being written in this thread"),
        CommandSpec(
            "reset-all",
            True,
            "/reset-all",
            "forget every conversation in this chat (Slack: in this workspace)",
        ),
        CommandSpec("stats", True, "/stats", "conversations, turns, tokens, queue, engine speed"),
        CommandSpec("forget", True, "/forget @user", "delete everything a user has asked"),
    )
}

ALIASES = {
    "start": "help",
    "resetall": "reset-all",
    "reset_all": "reset-all",
}

MAX_ARGS_LEN = 200

_COMMAND = re.compile(r"^/([A-Za-z][\w-]{0,31})(?:@(\w+))?(?=\s|$)(.*)$", re.DOTALL)


@dataclass(frozen=True, slots=True)
class Command:
    """A parsed command. `name` is canonical, or the unknown name as typed."""

    name: str
    args: str
    known: bool
    addressed_to: str = ""

    @property
    def spec(self) -> CommandSpec | None:
        return COMMANDS.get(self.name)


def parse_command(text: str) -> Command | None:
    """A leading "/name[@bot] args" is a command; anything else (a path, "please /reset") is not."""
    match = _COMMAND.match(text.strip())
    if match is None:
        return None
    raw, bot, args = match.group(1).lower(), match.group(2) or "", match.group(3).strip()
    name = ALIASES.get(raw, raw)
    return Command(name=name, args=args[:MAX_ARGS_LEN], known=name in COMMANDS, addressed_to=bot)


def help_text(is_admin: bool) -> str:
    lines = ["Ask me anything in this thread and I'll answer here. Commands:"]
    for spec in COMMANDS.values():
        if spec.admin and not is_admin:
            continue
        suffix = " (admins)" if spec.admin else ""
        lines.append(f"{spec.usage} — {spec.summary}{suffix}")
    return "\n".join(lines)


_USER_REF = re.compile(r"^<?@?([^\s|>]+)(?:\|[^>]*)?>?$")


def parse_user_ref(arg: str) -> str | None:
    """ "@alice", "<@U123|alice>", "12345" -> the id or name to forget; None if it is not one."""
    token = arg.strip()
    if not token or len(token.split()) != 1:
        return None
    match = _USER_REF.match(token)
    return match.group(1) if match else None
