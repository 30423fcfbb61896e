"""Platform-neutral commands: one table of what each is called, who may run it, what help
says about it and what it does.

Each adapter maps its own syntax ("/reset@botname", "/edgeqa reset", "@edgeqa reset") onto
the names here and tells how its users type a command (`CommandSyntax`), so permissions,
behaviour and help are decided in one place for every platform. Adding a command is one
`CommandSpec` in `COMMANDS`: its handler gets a `CommandContext` and returns the reply.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from bot.text import plural
from bot.types import CommandSyntax, IncomingMessage
from llm.base import Engine
from storage.base import Repository, Scope


@dataclass(frozen=True, slots=True)
class Activity:
    """What the bot is doing right now, for /stats."""

    waiting: int
    answering: int
    uptime: float  # seconds


class Core(Protocol):
    """What command handlers may use of the running bot (`bot.service` implements it)."""

    @property
    def repo(self) -> Repository: ...

    @property
    def engine(self) -> Engine: ...

    def activity(self) -> Activity: ...

    async def stop_answer(self, msg: IncomingMessage) -> bool:
        """Stop the answer being written in `msg`'s thread; True once it was stopped and its
        cut text delivered (so a reply to the command comes after it), False if none was."""


@dataclass(frozen=True, slots=True)
class CommandContext:
    msg: IncomingMessage
    args: str
    is_admin: bool
    syntax: CommandSyntax
    core: Core


Handler = Callable[[CommandContext], Awaitable[str]]


@dataclass(frozen=True, slots=True)
class CommandSpec:
    """`in_thread`: the command acts on the thread it is typed in (Slack users type those as
    "@edgeqa reset" in the thread: slash commands cannot be used in threads). `args` is
    shown after the name in help; `summaries` override `summary` per platform."""

    name: str
    admin: bool
    summary: str
    run: Handler
    in_thread: bool = False
    args: str = ""
    summaries: Mapping[str, str] = field(default_factory=dict)

    def summary_for(self, platform: str) -> str:
        return self.summaries.get(platform, self.summary)


# -- the handlers -----------------------------------------------------------------------------


async def _help(ctx: CommandContext) -> str:
    return help_text(ctx.msg.key.platform, ctx.is_admin, ctx.syntax)


async def _reset(ctx: CommandContext) -> str:
    removed = await ctx.core.repo.reset(ctx.msg.key)
    return plural(
        removed,
        "Done — I've forgotten this thread ({n} earlier question).",
        "Done — I've forgotten this thread ({n} earlier questions).",
    )


async def _stop(ctx: CommandContext) -> str:
    if await ctx.core.stop_answer(ctx.msg):
        return "Stopped."
    return "Nothing to stop: I'm not writing an answer in this thread."


async def _reset_all(ctx: CommandContext) -> str:
    key = ctx.msg.key
    if key.workspace:
        removed = await ctx.core.repo.reset_scope(Scope(key.platform, workspace=key.workspace))
        return plural(
            removed,
            "Done — I've forgotten the {n} conversation in this workspace.",
            "Done — I've forgotten all {n} conversations in this workspace.",
        )
    scope = Scope(key.platform, workspace=key.workspace, channel=key.channel)
    removed = await ctx.core.repo.reset_scope(scope)
    return plural(
        removed,
        "Done — I've forgotten the {n} conversation in this chat.",
        "Done — I've forgotten all {n} conversations in this chat.",
    )


async def _stats(ctx: CommandContext) -> str:
    stored = await ctx.core.repo.stats()
    engine = ctx.core.engine
    speed = engine.stats()
    now = ctx.core.activity()
    uptime = int(now.uptime)
    return "\n".join(
        [
            f"Conversations: {stored.conversations} · turns: {stored.turns}",
            f"Tokens: {stored.prompt_tokens:,} prompt · {stored.completion_tokens:,} generated",
            f"Queue: {now.waiting + speed.queued} waiting · {now.answering} answering",
            f"Engine ({engine.name}): answers written at "
            f"{speed.answer_tokens_per_second:.1f} tokens/s each, "
            f"{speed.tokens_per_second:.1f} tokens/s in all while busy · "
            f"first token {speed.mean_time_to_first_token:.2f} s on average · "
            f"{speed.reused_tokens:,} prompt tokens reused from cache",
            f"Up for {uptime // 3600}h {uptime % 3600 // 60}m",
        ]
    )


async def _forget(ctx: CommandContext) -> str:
    user = parse_user_ref(ctx.args)
    if user is None:
        return "Usage: {usage} (or a user id).".format(usage=ctx.syntax.usage(COMMANDS["forget"]))
    removed = await ctx.core.repo.forget_user(ctx.msg.key.platform, user)
    return plural(
        removed,
        "Done — I've deleted {n} question from {user}.",
        "Done — I've deleted {n} questions from {user}.",
        user=user,
    )


COMMANDS: dict[str, CommandSpec] = {
    spec.name: spec
    for spec in (
        CommandSpec("help", False, "what I can do", _help),
        CommandSpec("reset", False, "forget this thread's context", _reset, in_thread=True),
        CommandSpec(
            "stop", False, "stop the answer being written in this thread", _stop, in_thread=True
        ),
        CommandSpec(
            "reset-all",
            True,
            "forget every conversation in this chat",
            _reset_all,
            summaries={"slack": "forget every conversation in this workspace"},
        ),
        CommandSpec("stats", True, "conversations, turns, tokens, queue, engine speed", _stats),
        CommandSpec("forget", True, "delete everything a user has asked", _forget, args="@user"),
    )
}

ALIASES = {
    "start": "help",
    "resetall": "reset-all",
    "reset_all": "reset-all",
}

MAX_ARGS_LEN = 200

_COMMAND = re.compile(r"^/([A-Za-z][\w-]{0,31})(?:@\w+)?(?=\s|$)(.*)$", re.DOTALL)


@dataclass(frozen=True, slots=True)
class Command:
    """A parsed command. `name` is canonical, or the unknown name as typed."""

    name: str
    args: str
    known: bool

    @property
    def spec(self) -> CommandSpec | None:
        return COMMANDS.get(self.name)


def parse_command(text: str) -> Command | None:
    """A leading "/name[@bot] args" is a command; anything else (a path, "please /reset") is not."""
    match = _COMMAND.match(text.strip())
    if match is None:
        return None
    raw, args = match.group(1).lower(), match.group(2).strip()
    name = ALIASES.get(raw, raw)
    return Command(name=name, args=args[:MAX_ARGS_LEN], known=name in COMMANDS)


async def execute(command: Command, ctx: CommandContext) -> str:
    """Run `command` for `ctx.msg`: unknown commands and non-admins get a short refusal."""
    spec = command.spec
    if spec is None:
        return "I don't know the command {command}. Try {help}.".format(
            command=ctx.syntax.chat + command.name, help=ctx.syntax.of(COMMANDS["help"])
        )
    if spec.admin and not ctx.is_admin:
        return f"Sorry, {ctx.syntax.of(spec)} is for admins only."
    return await spec.run(ctx)


def help_text(platform: str, is_admin: bool, syntax: CommandSyntax) -> str:
    lines = ["Ask me anything in this thread and I'll answer here. Commands:"]
    for spec in COMMANDS.values():
        if spec.admin and not is_admin:
            continue
        summary = spec.summary_for(platform)
        if spec.admin:
            summary = f"{summary} (admins)"
        lines.append(f"{syntax.usage(spec)} — {summary}")
    return "\n".join(lines)


_USER_REF = re.compile(r"^<?@?([^\s|>]+)(?:\|[^>]*)?>?$")


def parse_user_ref(arg: str) -> str | None:
    """ "@alice", "<@U123|alice>", "12345" -> the id or name to forget; None if it is not one."""
    token = arg.strip()
    if not token or len(token.split()) != 1:
        return None
    match = _USER_REF.match(token)
    return match.group(1) if match else None
