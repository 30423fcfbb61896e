"""Security guarantees, end to end on the real bot (core, SQLite or PostgreSQL, llama.cpp on
the tiny model) against the platforms' fakes:

- admin commands are refused for everyone else on every platform — also for a user whose
  display name or username is the admin's — and change no row of the database;
- Slack's HTTP mode refuses unsigned, stale and malformed requests and takes a replayed
  signed request (same body, timestamp, signature) once only;
- Telegram's webhook refuses a wrong or missing secret and takes a replayed update once;
- the browser chat listens on 127.0.0.1 unless told otherwise, and elsewhere needs a token on
  every route;
- at the default log level no token and no message text reaches the logs;
- /forget deletes a user's rows for real (direct SQL), and leaves no copy in SQLite's files.

(Signatures in general: tests/test_slack_http.py; the token login: tests/test_web.py.)
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlencode

import aiohttp
import pytest
from sqlalchemy import text

from adapters.base import Adapter
from bot.app import App
from bot.config import ConfigError, Settings, load_settings
from bot.logs import QUIET, setup_logging
from storage.sql import SqlRepository
from tests.chat_drivers import (
    Conv,
    Driver,
    SlackDriver,
    TelegramDriver,
    WebDriver,
    answered,
    running_bot,
    until,
)
from tests.fakes.slack_workspace import SIGNING_SECRET, sign
from tests.harness import free_port, quiet, running_app, test_settings
from tests.slack_support import drop_proxies
from tests.storage_support import BACKENDS, database_url

pytestmark = pytest.mark.filterwarnings("ignore::telegram.warnings.PTBDeprecationWarning")

REFUSED = "admins only"
# What a leaked credential looks like, so a redaction that only knows test values fails.
TELEGRAM_TOKEN = "7412589630:AAHk3vQ9xZpL2mN8rT5yW1cE4bU6dF0gJ7s"
SLACK_BOT_TOKEN = "xoxb-2718281828-3141592653589-AbCdEfGhIjKlMnOpQrStUvWx"
SLACK_APP_TOKEN = "xapp-1-A0FAKEAPP01-4242424242424-0f1e2d3c4b5a69788796a5b4c3d2e1f0"
WEB_TOKEN = "wt-9f8e7d6c5b4a3210fedcba9876543210"
OPENAI_KEY = "sk-proj-Zx8Yw7Vu6Ts5Rq4Po3Nm2Lk1Jh0Gf9"


@pytest.fixture(autouse=True)
def _no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    drop_proxies(monkeypatch)


async def rows(app: App, table: str, where: str = "", **params: str) -> int:
    """Rows really in a table, counted with plain SQL."""
    query = f"SELECT count(*) FROM {table}" + (f" WHERE {where}" if where else "")
    assert isinstance(app.repo, SqlRepository)
    async with app.repo.db.connect() as conn:
        return int((await conn.execute(text(query), params)).scalar_one())


async def reply_to(driver: Driver, conv: Conv, text: str) -> str:
    """Send `text` in `conv` and return the bot's next message there."""
    before = len(driver.replies(conv))
    await driver.ask(conv, text)

    async def replied() -> bool:
        return len(driver.replies(conv)) > before

    assert await until(replied, 20), f"no reply to {text!r}"
    return driver.replies(conv)[before]


# -- admin commands ---------------------------------------------------------------------


def _platform_driver(name: str) -> Driver:
    return {"web": WebDriver, "telegram": TelegramDriver, "slack": SlackDriver}[name]()


@pytest.mark.parametrize("platform", ["web", "telegram", "slack"])
async def test_admin_commands_are_refused_for_everyone_else_and_change_nothing(
    platform: str, tmp_path: Path, tiny_model_path: Path
) -> None:
    driver = _platform_driver(platform)
    async with running_bot(driver, tmp_path, tiny_model_path) as app:
        admin, seed = Conv("admin", admin=True), Conv("seed")
        await driver.ask(seed, "Remember this, please")
        await answered(app, driver, seed, 1)
        victim = driver.user_ref(seed)
        # Someone who looks like the admin: on Telegram the same name and username (once
        # the admin's), on the web the admin's browser id in other letter case. (Slack
        # events carry ids only; names come with slash commands: the next test.)
        impostor = Conv("impostor", who=WebDriver.ADMIN.upper())
        if isinstance(driver, TelegramDriver):
            driver.fake.user(driver.user_id(admin), "Boss", "boss")
            driver.fake.user(driver.user_id(impostor), "Boss", "boss")
        counts = (await rows(app, "turns"), await rows(app, "conversations"))
        assert counts == (1, 1)

        for who in (Conv("someone"), impostor):
            for command in ("/stats", "/reset-all", "/resetall", "/reset_all", f"/forget {victim}"):
                reply = await reply_to(driver, who, command)
                assert REFUSED in reply, (who, command, reply)
                assert "Conversations:" not in reply
        assert (await rows(app, "turns"), await rows(app, "conversations")) == counts

        # The same commands work for the admin: the refusals above were about who asked.
        assert "Conversations: 1" in await reply_to(driver, admin, "/stats")
        assert "deleted 1 question from" in await reply_to(driver, admin, f"/forget {victim}")
        assert await rows(app, "turns") == 0
        if isinstance(driver, TelegramDriver):  # polling: no unauthenticated webhook route
            async with aiohttp.ClientSession() as http:
                url = f"http://127.0.0.1:{app.port}/telegram/webhook"
                async with http.post(url, json={"update_id": 1}) as response:
                    assert response.status == 404


async def test_slack_slash_commands_are_refused_for_everyone_else(
    tmp_path: Path, tiny_model_path: Path
) -> None:
    driver = SlackDriver()
    async with running_bot(driver, tmp_path, tiny_model_path) as app:
        seed, admin = Conv("seed"), Conv("admin", admin=True)
        ws = driver.ws
        await driver.ask(seed, "Remember this, please")
        await answered(app, driver, seed, 1)
        admin_id = driver.user(admin)
        counts = (await rows(app, "turns"), await rows(app, "conversations"))

        async def slash(text: str, user: str, user_name: str) -> str:
            payload, rid = ws.command_payload(text, channel="C0GENERAL", user=user)
            payload["user_name"] = user_name
            await ws.socket.push("slash_commands", payload, accepts_response_payload=True)
            reply = await ws.ephemeral(rid)
            assert reply["response_type"] == "ephemeral"
            return str(reply["text"])

        victim = f"<@{driver.user(seed)}|seed>"
        for user in ("U0MALLORY", "U0IMPOSTOR"):
            for command in ("stats", "reset-all", "resetall", f"forget {victim}"):
                # The impostor's user name is the admin's: Slack sends both, ids decide.
                reply = await slash(command, user, admin_id.lower())
                assert REFUSED in reply, (user, command, reply)
        assert (await rows(app, "turns"), await rows(app, "conversations")) == counts
        assert "Conversations: 1" in await slash("stats", admin_id, "boss")
        assert "deleted 1" in await slash(f"forget {victim}", admin_id, "boss")
        assert await rows(app, "turns") == 0


# -- Slack HTTP mode: signatures and replays ---------------------------------------------


async def test_slack_http_refuses_bad_requests_and_takes_a_replay_once(
    tmp_path: Path, tiny_model_path: Path
) -> None:
    driver = SlackDriver()
    env = {"EDGEQA_SLACK__MODE": "http", "EDGEQA_SLACK_SIGNING_SECRET": SIGNING_SECRET}
    async with (
        running_bot(driver, tmp_path, tiny_model_path, **env) as app,
        aiohttp.ClientSession() as http,
    ):
        ws = driver.ws
        seed, admin = Conv("seed"), Conv("admin", admin=True)
        await driver.ask(seed, "Remember this, please")  # signed POSTs, answered as usual
        await answered(app, driver, seed, 1)

        async def post(url: str, body: str, headers: dict[str, str], kind: str) -> int:
            async with http.post(url, data=body, headers={"Content-Type": kind, **headers}) as r:
                return r.status

        form = "application/x-www-form-urlencoded"
        payload, rid = ws.command_payload(
            f"forget <@{driver.user(seed)}|seed>", user=driver.user(admin)
        )
        raw = urlencode(payload)
        now = int(time.time())
        for headers in (
            sign(raw, now, secret="not-the-secret"),
            sign(raw, now - 6 * 60),  # stale
            sign(raw, now + 6 * 60),  # from the future
            {**sign(raw, now), "X-Slack-Request-Timestamp": str(now - 1)},  # swapped timestamp
            {**sign(raw, now), "X-Slack-Request-Timestamp": "soon"},  # not a number
            {"X-Slack-Signature": sign(raw, now)["X-Slack-Signature"]},  # no timestamp
            {},
        ):
            assert await post(ws.commands_url, raw, headers, form) == 401, headers
        assert await rows(app, "turns") == 1

        # A captured, valid request sent again (and again) within Slack's 5 minutes.
        signed = sign(raw, now)
        statuses = [await post(ws.commands_url, raw, signed, form) for _ in range(3)]
        assert statuses == [200, 200, 200]
        reply = await ws.ephemeral(rid)
        assert "deleted 1" in reply["text"]
        await quiet(app)
        assert len(ws.api.responses[rid]) == 1  # ran once: no "deleted 0" for the replays
        assert await rows(app, "turns") == 0

        # An event replayed: one answer.
        message = ws.api.user_message("D0REPLAY", "A question, sent twice", user="U0REPLAY")
        body = json.dumps(ws.envelope(ws.message_event(message)))
        signed = sign(body, int(time.time()))
        for _ in range(2):
            assert await post(ws.http_url, body, signed, "application/json") == 200
        assert await until(lambda: _rows_at_least(app, 1), 20)
        await quiet(app)
        assert await rows(app, "turns", "user_id = :u", u="U0REPLAY") == 1
        assert len(ws.api.bot_messages("D0REPLAY")) == 1


async def _rows_at_least(app: App, count: int) -> bool:
    return await rows(app, "turns") >= count


# -- Telegram webhook --------------------------------------------------------------------


async def test_telegram_webhook_refuses_wrong_secrets_and_takes_an_update_once(
    tmp_path: Path, tiny_model_path: Path
) -> None:
    driver = TelegramDriver()
    secret = "wh-3a1f5c9e7b2d4f6a8c0e"
    port = free_port()
    url = f"http://127.0.0.1:{port}/telegram/webhook"
    env = {
        "EDGEQA_WEB__PORT": str(port),
        "EDGEQA_TELEGRAM__MODE": "webhook",
        "EDGEQA_TELEGRAM__WEBHOOK_URL": url,
        "EDGEQA_TELEGRAM_WEBHOOK_SECRET": secret,
    }
    async with (
        running_bot(driver, tmp_path, tiny_model_path, **env) as app,
        aiohttp.ClientSession() as http,
    ):
        fake = driver.fake
        alice = fake.user(4242, "Alice", "alice")
        chat = fake.private_chat(alice)
        update = {
            "update_id": 777,
            "message": {"message_id": 9, "date": 1, "chat": chat, "from": alice, "text": "hi"},
        }
        header = "X-Telegram-Bot-Api-Secret-Token"
        for headers, params in (
            ({header: ""}, {}),
            ({header: secret[:-1]}, {}),
            ({header: secret + "x"}, {}),
            ({header: secret.upper()}, {}),
            ({header.lower(): "nope"}, {}),
            ({}, {"secret_token": secret}),  # in the query string instead of the header
        ):
            async with http.post(url, json=update, headers=headers, params=params) as response:
                assert response.status in (401, 403), (headers, params)
        await quiet(app)
        assert fake.bot_messages(4242) == [] and await rows(app, "turns") == 0

        for _ in range(2):  # a redelivery of the same update (same update_id)
            async with http.post(url, json=update, headers={header: secret}) as response:
                assert response.status == 200
        assert await until(lambda: _rows_at_least(app, 1), 20)
        await quiet(app)
        assert await rows(app, "turns") == 1 and len(fake.bot_messages(4242)) == 1


# -- the browser chat's address and token ------------------------------------------------


async def test_the_browser_chat_listens_on_loopback_by_default(
    tmp_path: Path, tiny_model_path: Path
) -> None:
    empty = tmp_path / "edgeqa.toml"
    empty.write_text("")
    assert load_settings(empty, env={}).web.host == "127.0.0.1"
    driver = WebDriver()
    async with running_bot(driver, tmp_path, tiny_model_path) as app:
        assert app.http is not None
        addresses = app.http._runner.addresses
        assert addresses and all(address[0] == "127.0.0.1" for address in addresses)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "192.168.1.10", "chat.example.com"])
def test_listening_beyond_loopback_needs_a_token(tmp_path: Path, host: str) -> None:
    empty = tmp_path / "edgeqa.toml"
    empty.write_text("")
    with pytest.raises(ConfigError) as info:
        load_settings(empty, env={"EDGEQA_WEB__HOST": host})
    assert "EDGEQA_WEB_TOKEN" in str(info.value) and "\n" not in str(info.value)
    load_settings(empty, env={"EDGEQA_WEB__HOST": host, "EDGEQA_WEB_TOKEN": WEB_TOKEN})


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "127.0.0.2"])
def test_loopback_needs_no_token(tmp_path: Path, host: str) -> None:
    empty = tmp_path / "edgeqa.toml"
    empty.write_text("")
    assert load_settings(empty, env={"EDGEQA_WEB__HOST": host}).web_token is None


async def test_on_all_interfaces_every_chat_route_needs_the_token(
    tmp_path: Path, tiny_model_path: Path
) -> None:
    driver = WebDriver(token=WEB_TOKEN)
    async with running_bot(driver, tmp_path, tiny_model_path, EDGEQA_WEB__HOST="0.0.0.0") as app:
        base = f"http://127.0.0.1:{app.port}"
        query = {"browser": "browser-0001", "thread": "thread-0001"}
        ask = {**query, "text": "hello"}
        routes = [
            ("GET", "/", None),
            ("GET", "/assets/app.js", None),
            ("GET", "/api/history", None),
            ("GET", "/api/events", None),
            ("POST", "/api/ask", ask),
        ]
        async with aiohttp.ClientSession() as http:
            for headers in ({}, {"Authorization": "Bearer nope"}, {"Cookie": "edgeqa_web=x"}):
                for method, path, body in routes:
                    async with http.request(
                        method, base + path, params=query, json=body, headers=headers
                    ) as response:
                        assert response.status == 401, (method, path, headers)
            bearer = {"Authorization": f"Bearer {WEB_TOKEN}"}
            for method, path, body in routes:
                async with http.request(
                    method, base + path, params=query, json=body, headers=bearer
                ) as response:
                    assert response.status in (200, 202), (method, path)
        assert await until(lambda: _rows_at_least(app, 1), 20)  # the bearer's question ran


# -- logs --------------------------------------------------------------------------------


@pytest.fixture
def app_logs() -> Iterator[Callable[[Settings], io.StringIO]]:
    """`app_logs(settings)` sets logging up as the app does (bot.logs.setup_logging: one
    handler on the root logger, with its filter) and returns everything it writes."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, {n: logging.getLogger(n).level for n in QUIET})

    def capture(settings: Settings) -> io.StringIO:
        setup_logging(settings)
        out = io.StringIO()
        [handler] = root.handlers
        assert isinstance(handler, logging.StreamHandler)
        handler.setStream(out)  # instead of stderr, which pytest swaps around each phase
        return out

    yield capture
    root.handlers[:], root.level = saved[0], saved[1]
    for name, level in saved[2].items():
        logging.getLogger(name).setLevel(level)


SECRET_ENV = {
    "EDGEQA_OPENAI_API_KEY": OPENAI_KEY,
    "EDGEQA_SLACK_SIGNING_SECRET": "8f14e45fceea167a5a36dedd4bea2543",
}


@pytest.mark.parametrize("platform", ["web", "telegram", "slack"])
async def test_no_token_and_no_message_text_reaches_the_logs(
    platform: str,
    tmp_path: Path,
    tiny_model_path: Path,
    app_logs: Callable[[Settings], io.StringIO],
) -> None:
    driver: Driver = {
        "web": lambda: WebDriver(token=WEB_TOKEN),
        "telegram": lambda: TelegramDriver(token=TELEGRAM_TOKEN),
        "slack": lambda: SlackDriver(bot_token=SLACK_BOT_TOKEN, app_token=SLACK_APP_TOKEN),
    }[platform]()
    await driver.open()
    question = "What does the zebra-quokka-7741 protocol do?"
    try:
        settings = test_settings(tmp_path, tiny_model_path, **SECRET_ENV, **driver.env())
        assert settings.log.level == "INFO"
        logs = app_logs(settings)
        adapters: list[Adapter] = driver.adapters(settings)
        async with running_app(settings, adapters) as app:
            await driver.started(app)
            someone = Conv("someone")
            await driver.ask(someone, question)
            [turn] = await answered(app, driver, someone, 1)
            for command in ("/help", "/stats", "/forget @nobody", "/reset"):
                await reply_to(driver, someone, command)
            answer = turn.answer
    finally:
        await driver.close()
    logged = logs.getvalue()
    assert "edgeqa ready" in logged and "refused /stats" in logged  # the logs were captured
    secrets = [WEB_TOKEN, TELEGRAM_TOKEN, SLACK_BOT_TOKEN, SLACK_APP_TOKEN, OPENAI_KEY]
    secrets += list(SECRET_ENV.values())
    for secret in secrets:
        assert secret not in logged
        assert secret.split(":")[-1] not in logged  # nor Telegram's token without its bot id
    assert "zebra-quokka" not in logged
    assert len(answer) > 20 and answer not in logged
    assert answer[:20] not in logged


# -- /forget deletes for real ------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
async def test_forget_deletes_the_users_rows_for_real(
    backend: str, tmp_path: Path, tiny_model_path: Path
) -> None:
    driver = WebDriver()
    async with database_url(backend, tmp_path) as url:
        env = {"EDGEQA_HISTORY__DATABASE_URL": url, "EDGEQA_WEB__ADMINS": "*"}
        async with running_bot(driver, tmp_path, tiny_model_path, **env) as app:
            alice = [Conv(f"alice-{i}", who="browser-alice") for i in range(2)]
            bob = Conv("bob", who="browser-bob")
            for conv in [*alice, bob]:
                await driver.ask(conv, f"Private matter of {conv.who}: walrus-{conv.name}")
            for conv in [*alice, bob]:
                await answered(app, driver, conv, 1)
            assert await rows(app, "turns", "user_id = :u", u="browser-alice") == 2
            assert await rows(app, "conversations", "channel = :c", c="browser-alice") == 2

            reply = await reply_to(
                driver, Conv("admin", who="browser-admin"), "/forget browser-alice"
            )
            assert "deleted 2 questions" in reply
            assert await rows(app, "turns", "user_id = :u", u="browser-alice") == 0
            assert await rows(app, "turns", "question LIKE :q", q="%walrus-alice%") == 0
            assert await rows(app, "conversations", "channel = :c", c="browser-alice") == 0
            assert await rows(app, "turns", "user_id = :u", u="browser-bob") == 1
            if backend == "sqlite":
                # Not in the database file nor in its write-ahead log either, while running.
                files = sorted(tmp_path.glob("history.db*"))  # noqa: ASYNC240
                stored = b"".join(path.read_bytes() for path in files)
                assert b"walrus-bob" in stored  # (the files are the right ones)
                assert b"walrus-alice" not in stored
