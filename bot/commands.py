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

from bot.grounding import Knowledge, kb_reply, retrieval_line, sources_reply
from bot.i18n import N_, Texts
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

    @property
    def knowledge(self) -> Knowledge | None:
        """The company's documents (None when no source is set up)."""

    def activity(self) -> Activity: ...

    def abstentions(self) -> int:
        """Questions the documents did not cover, since start."""

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
    texts: Texts  # the asker's language


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
    return help_text(ctx.msg.key.platform, ctx.is_admin, ctx.syntax, ctx.texts)


async def _reset(ctx: CommandContext) -> str:
    removed = await ctx.core.repo.reset(ctx.msg.key)
    return ctx.texts.ngettext(
        "Done — I've forgotten this thread (%(n)d earlier question).",
        "Done — I've forgotten this thread (%(n)d earlier questions).",
        removed,
    )


async def _stop(ctx: CommandContext) -> str:
    if await ctx.core.stop_answer(ctx.msg):
        return ctx.texts.gettext("Stopped.")
    return ctx.texts.gettext("Nothing to stop: I'm not writing an answer in this thread.")


async def _reset_all(ctx: CommandContext) -> str:
    key = ctx.msg.key
    if key.workspace:
        removed = await ctx.core.repo.reset_scope(Scope(key.platform, workspace=key.workspace))
        return ctx.texts.ngettext(
            "Done — I've forgotten the %(n)d conversation in this workspace.",
            "Done — I've forgotten all %(n)d conversations in this workspace.",
            removed,
        )
    scope = Scope(key.platform, workspace=key.workspace, channel=key.channel)
    removed = await ctx.core.repo.reset_scope(scope)
    return ctx.texts.ngettext(
        "Done — I've forgotten the %(n)d conversation in this chat.",
        "Done — I've forgotten all %(n)d conversations in this chat.",
        removed,
    )


async def _stats(ctx: CommandContext) -> str:
    stored = await ctx.core.repo.stats()
    engine = ctx.core.engine
    speed = engine.stats()
    now = ctx.core.activity()
    uptime = int(now.uptime)
    retrieval = await retrieval_line(ctx.core.knowledge, ctx.core.abstentions(), ctx.texts)
    texts = ctx.texts
    prompt, generated = f"{stored.prompt_tokens:,}", f"{stored.completion_tokens:,}"
    reused = f"{speed.reused_tokens:,}"
    return "\n".join(
        [
            texts.gettext(
                "Conversations: %(conversations)d · turns: %(turns)d",
                conversations=stored.conversations,
                turns=stored.turns,
            ),
            texts.gettext(
                "Tokens: %(prompt)s prompt · %(generated)s generated",
                prompt=prompt,
                generated=generated,
            ),
            texts.gettext(
                "Queue: %(waiting)d waiting · %(answering)d answering",
                waiting=now.waiting + speed.queued,
                answering=now.answering,
            ),
            texts.gettext(
                "Engine (%(engine)s): answers written at %(each).1f tokens/s each, "
                "%(all).1f tokens/s in all while busy · first token %(first).2f s on "
                "average · %(reused)s prompt tokens reused from cache",
                engine=engine.name,
                each=speed.answer_tokens_per_second,
                all=speed.tokens_per_second,
                first=speed.mean_time_to_first_token,
                reused=reused,
            ),
            *([retrieval] if retrieval else []),
            texts.gettext(
                "Up for %(hours)dh %(minutes)dm",
                hours=uptime // 3600,
                minutes=uptime % 3600 // 60,
            ),
        ]
    )


async def _sources(ctx: CommandContext) -> str:
    return await sources_reply(ctx.core.knowledge, ctx.core.repo, ctx.msg.key, ctx.texts)


async def _kb(ctx: CommandContext) -> str:
    usage = usage_of(COMMANDS["kb"], ctx.syntax, ctx.texts)
    return await kb_reply(ctx.core.knowledge, ctx.args, usage, ctx.texts)


async def _forget(ctx: CommandContext) -> str:
    user = parse_user_ref(ctx.args)
    if user is None:
        usage = usage_of(COMMANDS["forget"], ctx.syntax, ctx.texts)
        return ctx.texts.gettext("Usage: %(usage)s (or a user id).", usage=usage)
    removed = await ctx.core.repo.forget_user(ctx.msg.key.platform, user)
    return ctx.texts.ngettext(
        "Done — I've deleted %(n)d question from %(user)s.",
        "Done — I've deleted %(n)d questions from %(user)s.",
        removed,
        user=user,
    )


COMMANDS: dict[str, CommandSpec] = {
    spec.name: spec
    for spec in (
        CommandSpec("help", False, N_("what I can do"), _help),
        CommandSpec("reset", False, N_("forget this thread's context"), _reset, in_thread=True),
        CommandSpec(
            "stop",
            False,
            N_("stop the answer being written in this thread"),
            _stop,
            in_thread=True,
        ),
        CommandSpec(
            "sources",
            False,
            N_("the document passages behind my last answer here"),
            _sources,
            in_thread=True,
        ),
        CommandSpec(
            "reset-all",
            True,
            N_("forget every conversation in this chat"),
            _reset_all,
            summaries={"slack": N_("forget every conversation in this workspace")},
        ),
        CommandSpec("stats", True, N_("conversations, turns, tokens, queue, engine speed"), _stats),
        CommandSpec(
            "forget", True, N_("delete everything a user has asked"), _forget, args=N_("@user")
        ),
        CommandSpec(
            "kb",
            True,
            N_("the document index: documents, chunks, last sync, errors; sync re-reads them"),
            _kb,
            args=N_("[sync]"),
        ),
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
        return ctx.texts.gettext(
            "I don't know the command %(command)s. Try %(help)s.",
            command=ctx.syntax.chat + command.name,
            help=ctx.syntax.of(COMMANDS["help"]),
        )
    if spec.admin and not ctx.is_admin:
        return ctx.texts.gettext(
            "Sorry, %(command)s is for admins only.", command=ctx.syntax.of(spec)
        )
    return await spec.run(ctx)


def usage_of(spec: CommandSpec, syntax: CommandSyntax, texts: Texts) -> str:
    """ "/forget @user" as typed on the platform, its argument in the reader's language."""
    return f"{syntax.of(spec)} {texts.gettext(spec.args) if spec.args else ''}".rstrip()


def help_text(platform: str, is_admin: bool, syntax: CommandSyntax, texts: Texts) -> str:
    lines = [texts.gettext("Ask me anything in this thread and I'll answer here. Commands:")]
    for spec in COMMANDS.values():
        if spec.admin and not is_admin:
            continue
        usage = usage_of(spec, syntax, texts)
        summary = texts.gettext(spec.summary_for(platform))
        if spec.admin:
            line = texts.gettext("%(usage)s — %(summary)s (admins)", usage=usage, summary=summary)
        else:
            line = texts.gettext("%(usage)s — %(summary)s", usage=usage, summary=summary)
        lines.append(line)
    return "\n".join(lines)


_USER_REF = re.compile(r"^<?@?([^\s|>]+)(?:\|[^>]*)?>?$")


def parse_user_ref(arg: str) -> str | None:
    """ "@alice", "<@U123|alice>", "12345" -> the id or name to forget; None if it is not one."""
    token = arg.strip()
    if not token or len(token.split()) != 1:
        return None
    match = _USER_REF.match(token)
    return match.group(1) if match else None
