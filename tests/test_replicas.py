"""Two replicas on one PostgreSQL: two real `python -m bot run` processes share a database,
one OpenAI-compatible model server (llama-cpp-python's, on the tiny scripted model), one fake
Telegram Bot API (webhook mode) and one fake Slack workspace (HTTP mode).

A small load balancer in this test sends every webhook delivery / signed Slack event to the
replica the test names, and deliberately sends each conversation's follow-up to the OTHER
replica than its first question; it also fronts the model server and records every prompt.
Meanwhile both replicas' prune jobs run every 0.2 s on the same tables while expired
conversations are seeded under them.

Checks: every question is answered once, in its own chat/thread; the follow-up's prompt holds
exactly its own thread's history (written by the other process); each expired conversation
is removed exactly once, by one replica or the other, and nothing else is; both processes
exit cleanly with no error in their logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from sqlalchemy import func, select

from adapters.slack.render import to_mrkdwn
from bot.types import ConversationKey
from storage.sql import SqlRepository
from storage.tables import conversations
from tests.fakes.common import serve
from tests.fakes.slack_workspace import SIGNING_SECRET, SlackWorkspace
from tests.fakes.telegram_api import FakeTelegram
from tests.model_server import llama_cpp_server
from tests.storage_support import PG_URL, database_url, insert_idle

pytestmark = [
    pytest.mark.skipif(
        not PG_URL, reason="EDGEQA_TEST_DATABASE_URL is not set (replicas need PostgreSQL)"
    ),
    pytest.mark.timeout(90),
]

ROOT = Path(__file__).resolve().parents[1]
WEBHOOK_SECRET = "replica-webhook-secret"
GROUP = -100777
ALICE, BOB, CAROL = 10, 11, 12
SLACK_CHANNEL, SLACK_DM = "C0GENERAL", "D0CAROL"
PRUNE_PASS = re.compile(r"pruning: nothing expired|another process is pruning|pruned \d+ expired")
PRUNED = re.compile(r"pruned (\d+) expired")
TROUBLE = re.compile(r" (WARNING|ERROR|CRITICAL) |Traceback")
# With a 0.2 s interval on a busy machine a pass can outlast the next tick, which APScheduler
# skips (max_instances=1) with a warning: expected here, harmless at the default 5 minutes.
EXPECTED = re.compile(r"skipped: maximum number of running instances reached")


# -- the processes ---------------------------------------------------------------------


@pytest.fixture
def llama_server(tiny_script_model_path: Path) -> Iterator[str]:
    """`python -m llama_cpp.server` on loopback: the one model server both replicas share."""
    with llama_cpp_server(tiny_script_model_path, n_ctx=1024) as base:
        yield base


class Replica:
    """One `python -m bot run` process; its log (stderr) is collected line by line."""

    def __init__(self, name: str, env: dict[str, str], cwd: Path) -> None:
        self.name, self.env, self.cwd = name, env, cwd
        self.lines: list[str] = []
        self.port = 0
        self.process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bot",
            "run",
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        async for raw in self.process.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.lines.append(line)
            if match := re.search(r"HTTP server on http://127\.0\.0\.1:(\d+)", line):
                self.port = int(match.group(1))
            if "edgeqa ready" in line:
                self._ready.set()

    async def ready(self, within: float = 40.0) -> None:
        assert self.process is not None
        waiter = asyncio.create_task(self._ready.wait())
        exited = asyncio.create_task(self.process.wait())
        done, _ = await asyncio.wait(
            {waiter, exited}, timeout=within, return_when=asyncio.FIRST_COMPLETED
        )
        waiter.cancel()
        exited.cancel()
        if waiter not in done:
            raise AssertionError(f"{self.name} did not start:\n" + self.log_tail())
        assert self.port

    async def metrics(self, session: aiohttp.ClientSession) -> dict[str, float]:
        async with session.get(f"http://127.0.0.1:{self.port}/metrics") as response:
            text = await response.text()
        values: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return values

    async def stop(self) -> int:
        if self.process is None:
            return 0
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(self.process.wait(), 20)
        except TimeoutError:
            self.process.kill()
            code = await self.process.wait()
        if self._reader is not None:
            await self._reader
        return code

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.lines[-lines:])


# -- the load balancer (and the model server's front door) ------------------------------


class Balancer:
    """Forwards each delivery to the replica `route[text]` names; records every decision.

    Slack sends a channel mention twice (an `app_mention` and a `message` event); the
    `message` copy goes to the other replica on purpose, so neither may answer it twice.
    In front of the model server it only records the prompts it passes on."""

    def __init__(self, model_server: str) -> None:
        self.model_server = model_server
        self.replicas: list[Replica] = []
        self.route: dict[str, int] = {}
        self.deliveries: list[tuple[str, str, int]] = []  # (platform, text, replica)
        self.unrouted: list[str] = []
        self.prompts: list[list[dict[str, str]]] = []
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        app = web.Application()
        app.router.add_post("/telegram/webhook", self._telegram)
        app.router.add_post("/slack/events", self._slack)
        app.router.add_route("*", "/v1/{tail:.*}", self._model)
        self._runner, self.port = await serve(app, access_log=None)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def _target(self, text: str) -> int:
        if text not in self.route:
            self.unrouted.append(text)
        return self.route.get(text, 0)

    async def _telegram(self, request: web.Request) -> web.Response:
        body = await request.read()
        text = json.loads(body).get("message", {}).get("text", "")
        return await self._forward(request, body, "telegram", text, self._target(text))

    async def _slack(self, request: web.Request) -> web.Response:
        body = await request.read()
        event = json.loads(body).get("event", {})
        text = str(event.get("text", ""))
        target = self._target(text)
        if event.get("type") == "message" and event.get("channel_type") != "im" and "<@" in text:
            target = 1 - target  # the mention's second copy: to the other replica
        return await self._forward(request, body, "slack", text, target)

    async def _forward(
        self, request: web.Request, body: bytes, platform: str, text: str, target: int
    ) -> web.Response:
        assert self._session is not None
        self.deliveries.append((platform, text, target))
        headers = {
            name: value
            for name, value in request.headers.items()
            if name.lower().startswith(("x-telegram", "x-slack")) or name.lower() == "content-type"
        }
        url = f"http://127.0.0.1:{self.replicas[target].port}{request.path}"
        async with self._session.post(url, data=body, headers=headers) as response:
            return web.Response(
                status=response.status,
                body=await response.read(),
                content_type=response.content_type,
            )

    async def _model(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        body = await request.read()
        if request.path.endswith("/chat/completions"):
            self.prompts.append(json.loads(body)["messages"])
        async with self._session.request(
            request.method,
            f"{self.model_server}{request.path}",
            data=body or None,
            headers={"Content-Type": request.headers.get("Content-Type", "application/json")},
        ) as upstream:
            response = web.StreamResponse(
                status=upstream.status,
                headers={"Content-Type": upstream.headers.get("Content-Type", "text/plain")},
            )
            await response.prepare(request)
            # The engine hangs up as soon as it has read "[DONE]", before the last chunk.
            with contextlib.suppress(ConnectionResetError):
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
            return response

    def prompt_for(self, question: str) -> list[tuple[str, str]]:
        """The one prompt whose last message is `question`, without the system prompt."""
        found = [p for p in self.prompts if p[-1] == {"role": "user", "content": question}]
        assert len(found) == 1, f"{question!r} was sent to the model {len(found)} times"
        return [(m["role"], m["content"]) for m in found[0] if m["role"] != "system"]


# -- the shared database ----------------------------------------------------------------


async def seed(repo: SqlRepository, prefix: str, count: int, *, idle: timedelta) -> None:
    """`count` conversations of platform "seed", last active `idle` ago."""
    keys = [ConversationKey("seed", "", prefix, str(n)) for n in range(count)]
    await insert_idle(repo, keys, idle.total_seconds())


async def seeded(repo: SqlRepository, prefix: str) -> int:
    query = select(func.count()).select_from(conversations).where(conversations.c.channel == prefix)
    async with repo.db.connect() as conn:
        return int((await conn.execute(query)).scalar_one())


async def wait_until(check: Any, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


# -- the test ---------------------------------------------------------------------------


@pytest.fixture
async def world(
    tmp_path: Path, llama_server: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[FakeTelegram, SlackWorkspace, Balancer, str]]:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    telegram, slack, balancer = FakeTelegram(), SlackWorkspace(), Balancer(llama_server)
    await telegram.start()
    await slack.start()
    await balancer.start()
    slack.http_url = f"{balancer.url}/slack/events"
    try:
        async with database_url("postgresql", tmp_path) as url:
            yield telegram, slack, balancer, url
    finally:
        await balancer.close()
        await slack.close()
        await telegram.close()


def replica_env(
    telegram: FakeTelegram, slack: SlackWorkspace, balancer: Balancer, url: str
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEQA_")}
    env.update(
        PYTHONPATH=str(ROOT),
        EDGEQA_LOG__LEVEL="DEBUG",  # the prune job's every pass shows at DEBUG
        EDGEQA_WEB__PORT="0",
        EDGEQA_ENGINE__KIND="openai",
        EDGEQA_ENGINE__OPENAI_BASE_URL=f"{balancer.url}/v1",
        EDGEQA_ENGINE__CONTEXT_SIZE="1024",
        EDGEQA_ENGINE__MAX_TOKENS="48",
        EDGEQA_ENGINE__SEED="7",
        EDGEQA_BOT__CONTEXT_TOKENS="768",
        EDGEQA_BOT__RATE_LIMIT_PER_MINUTE="0",
        EDGEQA_BOT__SHUTDOWN_GRACE="5",
        EDGEQA_HISTORY__DATABASE_URL=url,
        EDGEQA_HISTORY__TTL="1h",
        EDGEQA_HISTORY__PRUNE_INTERVAL="0.2",
        EDGEQA_TELEGRAM__ENABLED="true",
        EDGEQA_TELEGRAM_TOKEN=telegram.token,
        EDGEQA_TELEGRAM__BASE_URL=telegram.base_url,
        EDGEQA_TELEGRAM__MODE="webhook",
        EDGEQA_TELEGRAM__WEBHOOK_URL=f"{balancer.url}/telegram/webhook",
        EDGEQA_TELEGRAM_WEBHOOK_SECRET=WEBHOOK_SECRET,
        EDGEQA_TELEGRAM__EDIT_INTERVAL="0.05",
        EDGEQA_TELEGRAM__GROUP_EDIT_INTERVAL="0.1",
        EDGEQA_SLACK__ENABLED="true",
        EDGEQA_SLACK__MODE="http",
        EDGEQA_SLACK__BASE_URL=slack.api.base_url,
        EDGEQA_SLACK_BOT_TOKEN=slack.api.bot_token,
        EDGEQA_SLACK_SIGNING_SECRET=SIGNING_SECRET,
        EDGEQA_SLACK__EDIT_INTERVAL="0.05",
        EDGEQA_SLACK__WORKSPACE_EDITS_PER_MINUTE="600",
    )
    return env


async def test_two_replicas_share_threads_history_and_pruning(
    world: tuple[FakeTelegram, SlackWorkspace, Balancer, str],
    tmp_path: Path,
    tiny_script: str,
) -> None:
    telegram, slack, balancer, url = world
    repo = SqlRepository(url)
    await repo.start()  # creates the schema, so there is something to seed before the bots
    await seed(repo, "expired-before", 30, idle=timedelta(hours=2))
    await seed(repo, "fresh", 10, idle=timedelta(minutes=30))
    env = replica_env(telegram, slack, balancer, url)
    replicas = [Replica(f"replica {n}", env, tmp_path) for n in range(2)]
    balancer.replicas = replicas
    session = aiohttp.ClientSession()
    try:
        await asyncio.gather(*(r.start() for r in replicas))  # both migrate at once, too
        await asyncio.gather(*(r.ready() for r in replicas))
        # 600 more expired conversations (more than one prune batch) appear while both
        # replicas answer and prune every 0.2 s.
        await asyncio.gather(
            run_conversations(telegram, slack, balancer, repo, tiny_script),
            seed(repo, "expired-later", 600, idle=timedelta(days=2)),
        )
        # Both replicas answered their share; the load balancer never had to guess.
        assert balancer.unrouted == []
        for replica in replicas:
            counts = await replica.metrics(session)
            assert counts['edgeqa_questions_total{platform="telegram"}'] == 5, replica.name
            assert counts['edgeqa_questions_total{platform="slack"}'] == 3, replica.name
            assert counts['edgeqa_answers_total{platform="telegram",status="complete"}'] == 5
        await check_pruning(repo, replicas, session)
    finally:
        codes = await asyncio.gather(*(r.stop() for r in replicas))
        await session.close()
        await repo.close()
    for replica, code in zip(replicas, codes, strict=True):
        trouble = [
            n
            for n, line in enumerate(replica.lines)
            if TROUBLE.search(line) and not EXPECTED.search(line)
        ]
        if trouble:  # the first problem with its traceback, without the DEBUG chatter
            shown = [x for x in replica.lines[trouble[0] :] if " DEBUG " not in x]
            raise AssertionError(f"{replica.name} logged trouble:\n" + "\n".join(shown[:60]))
        assert code == 0, f"{replica.name} exited with {code}:\n{replica.log_tail()}"


async def run_conversations(
    telegram: FakeTelegram,
    slack: SlackWorkspace,
    balancer: Balancer,
    repo: SqlRepository,
    script: str,
) -> None:
    """Eight conversations, two questions each; the second always goes to the other replica."""
    users = {
        uid: telegram.user(uid, name, name.lower())
        for uid, name in ((ALICE, "Alice"), (BOB, "Bob"), (CAROL, "Carol"))
    }
    group = telegram.group(GROUP)
    chats = {uid: telegram.private_chat(user) for uid, user in users.items()}
    route = balancer.route

    # Wave one, all at once: three private chats, two group chains, two Slack threads, a DM.
    first: dict[str, int] = {}  # question -> replica that gets it
    for n, uid in enumerate(chats):
        first[f"tg private {uid} one"] = n % 2
    first["@edgeqa_bot tg group alice one"] = 0
    first["@edgeqa_bot tg group bob one"] = 1
    first[f"<@{slack.bot}> slack thread a one"] = 0
    first[f"<@{slack.bot}> slack thread b one"] = 1
    first["slack dm one"] = 1
    route.update(first)
    for uid, chat in chats.items():
        telegram.user_says(chat, users[uid], f"tg private {uid} one")
    group_q = {
        who: telegram.user_says(group, users[uid], f"@edgeqa_bot tg group {who} one")
        for who, uid in (("alice", ALICE), ("bob", BOB))
    }
    thread_a, thread_b, _ = await asyncio.gather(
        slack.say(SLACK_CHANNEL, f"<@{slack.bot}> slack thread a one", user="U0ALICE"),
        slack.say(SLACK_CHANNEL, f"<@{slack.bot}> slack thread b one", user="U0BOB"),
        slack.say(SLACK_DM, "slack dm one", user="U0CAROL"),
    )
    keys = {
        **{f"tg private {uid}": ConversationKey("telegram", "", str(uid), "") for uid in chats},
        **{
            f"tg group {who}": ConversationKey("telegram", "", str(GROUP), str(qid))
            for who, qid in group_q.items()
        },
        "slack thread a": ConversationKey("slack", slack.team_id, SLACK_CHANNEL, thread_a.ts),
        "slack thread b": ConversationKey("slack", slack.team_id, SLACK_CHANNEL, thread_b.ts),
        "slack dm": ConversationKey("slack", slack.team_id, SLACK_DM, ""),
    }
    await answered(repo, keys.values(), 1)

    # Wave two, all at once, each to the other replica than its thread's first question.
    second = {f"tg private {uid} two": 1 - n % 2 for n, uid in enumerate(chats)}
    second |= {"tg group alice two": 1, "tg group bob two": 0}
    second |= {"slack thread a two": 1, "slack thread b two": 0, "slack dm two": 0}
    route.update(second)
    for uid, chat in chats.items():
        telegram.user_says(chat, users[uid], f"tg private {uid} two")
    for who, uid in (("alice", ALICE), ("bob", BOB)):
        [answer] = [m for m in telegram.bot_messages(GROUP) if m.reply_to == group_q[who]]
        # A reply in a supergroup carries its reply thread's root as message_thread_id, as
        # Telegram sends it; the other replica never saw this chain and relies on that.
        telegram.user_says(
            group,
            users[uid],
            f"tg group {who} two",
            reply_to=answer.message_id,
            extra={"message_thread_id": group_q[who]},
        )
    await asyncio.gather(
        slack.say(SLACK_CHANNEL, "slack thread a two", user="U0ALICE", thread_ts=thread_a.ts),
        slack.say(SLACK_CHANNEL, "slack thread b two", user="U0BOB", thread_ts=thread_b.ts),
        slack.say(SLACK_DM, "slack dm two", user="U0CAROL"),
    )
    await answered(repo, keys.values(), 2)

    # Stored: each conversation holds exactly its own two questions, in order.
    for name, key in keys.items():
        turns = await repo.load_history(key)
        questions = [t.question for t in turns]
        assert questions == [f"{name} one", f"{name} two"], (name, questions)
        assert [t.answer for t in turns] == [script, script]
        # The follow-up, answered by the other process, saw the first turn and nothing else.
        assert balancer.prompt_for(f"{name} two") == [
            ("user", f"{name} one"),
            ("assistant", script),
            ("user", f"{name} two"),
        ]
        assert balancer.prompt_for(f"{name} one") == [("user", f"{name} one")]
    assert len(balancer.prompts) == 2 * len(keys)  # nothing asked twice

    # Delivered: every answer once, where its question was asked, nowhere else.
    for uid in chats:
        assert [m.text for m in telegram.bot_messages(uid)] == [script, script]
    replies: dict[int | None, list[str]] = {}
    for message in telegram.bot_messages(GROUP):
        replies.setdefault(message.reply_to, []).append(message.text)
    asked = {m.text: m.message_id for m in telegram.messages[GROUP].values()}
    assert replies == {
        asked[text]: [script]
        for text in (*(q for q in first if "group" in q), "tg group alice two", "tg group bob two")
    }
    shown = to_mrkdwn(script)
    for thread in (thread_a, thread_b):
        assert [m.text for m in slack.api.bot_messages(SLACK_CHANNEL, thread.ts)] == [shown] * 2
    assert len(slack.api.bot_messages(SLACK_CHANNEL)) == 4
    assert [m.text for m in slack.api.bot_messages(SLACK_DM)] == [shown] * 2
    assert sorted({(p, r) for p, _, r in balancer.deliveries}) == [
        ("slack", 0),
        ("slack", 1),
        ("telegram", 0),
        ("telegram", 1),
    ]


async def answered(repo: SqlRepository, keys: Any, count: int) -> None:
    async def done() -> bool:
        for key in keys:
            if len(await repo.load_history(key)) < count:
                return False
        return True

    await wait_until(done, within=30)


async def check_pruning(
    repo: SqlRepository, replicas: list[Replica], session: aiohttp.ClientSession
) -> None:
    """Every expired conversation goes, each counted once by one replica or the other; the
    fresh ones and the live ones stay."""

    async def gone() -> bool:
        return await seeded(repo, "expired-later") == 0 == await seeded(repo, "expired-before")

    await wait_until(gone)
    await asyncio.sleep(0.5)  # a few more passes of both jobs: nothing else may go
    assert await seeded(repo, "fresh") == 10
    stats = await repo.stats()
    assert (stats.conversations, stats.turns) == (10 + 8, 16)
    removed = [(await r.metrics(session))["edgeqa_pruned_conversations_total"] for r in replicas]
    assert sum(removed) == 630, removed
    for replica, count in zip(replicas, removed, strict=True):
        logged = sum(int(m.group(1)) for line in replica.lines if (m := PRUNED.search(line)))
        assert logged == count
        passes = [line for line in replica.lines if PRUNE_PASS.search(line)]
        assert len(passes) >= 3, f"{replica.name} hardly pruned:\n{replica.log_tail()}"
