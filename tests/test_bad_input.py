"""The bad input corpus (tests/data/bad_input.json) through every adapter, end to end.

Every case goes to the web chat's HTTP API, a Telegram private chat, a Slack DM and a Slack
@mention — each in a conversation of its own, all at once, on one running bot per platform
(the real core, SQLite and llama.cpp on the tiny model; the platforms' fakes). Each must get
the outcome the corpus names (an answer, an answer with the "too long" note, a hint, a
command's reply, a refusal, a 4xx from the web API, or nothing at all on purpose), with no
ERROR or traceback in the logs; a conversation seeded before the corpus must be untouched
afterwards, and the bot must still answer a normal question in it.

The other direction too: a model whose answer is a mass mention, mrkdwn and HTML must not
ping anyone or inject markup on any platform.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from adapters.slack.render import to_mrkdwn
from adapters.telegram.render import render
from bot.app import App
from bot.service import CUT_NOTE
from tests.chat_drivers import (
    DRIVERS,
    Conv,
    Driver,
    SlackDriver,
    TelegramDriver,
    WebDriver,
    answered,
    running_bot,
    turns,
    until,
)
from tests.fakes.telegram_api import parse_html
from tests.harness import as_shown, quiet, running_app, test_settings
from tests.slack_support import drop_proxies
from tests.tiny_gguf import write_tiny_model

pytestmark = pytest.mark.filterwarnings("ignore::telegram.warnings.PTBDeprecationWarning")

CORPUS = Path(__file__).parent / "data" / "bad_input.json"
OUTCOMES = {
    "answered",
    "answered-with-cut-note",
    "hint",
    "command-reply",
    "refused",
    "ignored",
    "rejected",
}
ANSWERED = {"answered", "answered-with-cut-note"}
HINT = "in words"
SEED = ("What is a llama?", "And an alpaca?")
WITHIN = 30.0  # seconds a case may take (all run at once on 2 cores)
_UNCLEAN = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\ud800-\udfff]")


@dataclass(frozen=True)
class Case:
    id: str
    text: str
    expect: dict[str, str]
    reply: str = ""
    admin: bool = False

    def outcome(self, platform: str) -> str:
        return self.expect.get(platform, self.expect["default"])

    @property
    def conv(self) -> Conv:
        return Conv(self.id, self.admin)


def load_corpus() -> list[Case]:
    """The cases; long texts are written as [[piece, times], ...] under "parts"."""
    data = json.loads(CORPUS.read_text(encoding="utf-8"))
    cases = []
    for raw in data["cases"]:
        if "text" in raw:
            text = raw["text"]
        else:
            text = "".join(piece * times for piece, times in raw["parts"])
        expect = raw["expect"] if isinstance(raw["expect"], dict) else {"default": raw["expect"]}
        assert set(expect.values()) <= OUTCOMES, raw["id"]
        assert "default" in expect, raw["id"]
        cases.append(
            Case(raw["id"], text, expect, raw.get("reply", ""), raw.get("as", "") == "admin")
        )
    assert len({case.id for case in cases}) == len(cases), "case ids must be unique"
    return cases


def test_the_corpus_covers_what_issue_6_lists() -> None:
    cases = {case.id: case for case in load_corpus()}
    texts = [case.text for case in cases.values()]
    assert any(len(text) >= 100_000 for text in texts)
    assert any("\x00" in text for text in texts)
    assert any(re.search(r"[\ud800-\udfff]", text) for text in texts)
    assert any("\u200b" in text for text in texts) and any("\u202e" in text for text in texts)
    assert any("<!channel>" in text for text in texts)
    assert any("<script>" in text for text in texts)
    outcomes = {case.outcome(p) for case in cases.values() for p in ("web", "telegram", "slack")}
    assert outcomes == OUTCOMES


@asynccontextmanager
async def running(
    name: str, tmp_path: Path, model: Path, **env: str
) -> AsyncIterator[tuple[Driver, App]]:
    driver: Driver = DRIVERS[name]()
    async with running_bot(
        driver,
        tmp_path,
        model,
        EDGEQA_ENGINE__MAX_QUEUE="256",
        EDGEQA_WEB__EDIT_INTERVAL="0.02",
        **env,
    ) as app:
        yield driver, app


async def settle_case(app: App, driver: Driver, case: Case) -> str:
    """Wait for the case's outcome to show; '' when it did, else what went wrong."""
    expect, conv = case.outcome(driver.platform), case.conv
    if expect == "rejected":
        status = driver.status(conv)
        return "" if status in (400, 413) else f"HTTP {status}, expected a 4xx"
    if expect == "ignored":
        return ""
    if expect in ANSWERED:
        note = CUT_NOTE + "\n\n" if expect == "answered-with-cut-note" else ""

        async def shown() -> bool:
            stored = await turns(app, driver, conv)
            return len(stored) == 1 and driver.final_ok(conv, note + as_shown(stored[0].answer))

    else:
        needle = HINT if expect == "hint" else case.reply

        async def shown() -> bool:
            return any(needle in text for text in driver.replies(conv))

    if await until(shown, WITHIN):
        return ""
    stored = [t.answer for t in await turns(app, driver, conv)]
    return f"expected {expect}; chat shows {driver.replies(conv)!r:.300}, stored {stored!r:.200}"


async def check_afterwards(app: App, driver: Driver, case: Case) -> str:
    """Once everything has settled: nothing extra was shown or stored."""
    expect, conv = case.outcome(driver.platform), case.conv
    replies, stored = driver.replies(conv), await turns(app, driver, conv)
    silent = expect in ("ignored", "rejected")
    if len(replies) != (0 if silent else 1):
        return f"{len(replies)} replies: {replies!r:.300}"
    if len(stored) != (1 if expect in ANSWERED else 0):
        return f"{len(stored)} stored turns"
    if stored and _UNCLEAN.search(stored[0].question):
        return f"stored question keeps control characters: {stored[0].question!r:.100}"
    return ""


def errors_in(caplog: pytest.LogCaptureFixture) -> list[str]:
    """ERRORs, tracebacks, and the warning python-telegram-bot's error handler writes when
    handling an update raised (the update is then dropped without a word)."""
    return [
        f"{record.levelname} {record.name}: {record.getMessage()[:300]}"
        for record in caplog.records
        if record.levelno >= logging.ERROR
        or record.exc_info
        or "error while processing an update" in record.getMessage()
    ]


@pytest.fixture(autouse=True)
def _no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    drop_proxies(monkeypatch)


@pytest.mark.parametrize("platform", list(DRIVERS))
async def test_every_bad_input_gets_a_clear_outcome_and_breaks_nothing(
    platform: str, tmp_path: Path, tiny_model_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    cases = load_corpus()
    async with running(platform, tmp_path, tiny_model_path) as (driver, app):
        seed = Conv("seed")
        for number, question in enumerate(SEED, start=1):
            await driver.ask(seed, question)
            await answered(app, driver, seed, number)
        before = await turns(app, driver, seed)

        for case in cases:
            await driver.ask(case.conv, case.text)
        results = await asyncio.gather(*(settle_case(app, driver, case) for case in cases))
        await quiet(app)  # anything late (a reply to an ignored case) has happened
        problems = {case.id: result for case, result in zip(cases, results, strict=True)}
        for case in cases:
            problems[case.id] = problems[case.id] or await check_afterwards(app, driver, case)

        assert await turns(app, driver, seed) == before  # the seeded history is intact
        await driver.ask(seed, "Still there after all that?")
        after = await answered(app, driver, seed, len(SEED) + 1)
        assert after[:-1] == before and after[-1].question == "Still there after all that?"
    failed = {case: problem for case, problem in problems.items() if problem}
    assert not failed, json.dumps(failed, indent=1, ensure_ascii=False)
    assert errors_in(caplog) == []


# -- the answer's direction: what the model writes is text, never markup or a ping ----------

EVIL = [
    "<!channel>",
    " <!here>",
    " @here",
    " @channel",
    " <!everyone>",
    " <!subteam^S0ADMINS>",
    " <@U0ADMIN>",
    " <#C0GENERAL>",
    " <script>alert(1)</script>",
    " <b>bold</b>",
    ' <a href="tg://user?id=42">boss</a>',
    " [boss](tg://user?id=42)",
    " [x](javascript:alert(1))",
    " <img src=x onerror=alert(1)>",
    " &amp; &lt;",
    " ``` unbalanced `tick",
]
EVIL_TEXT = "".join(EVIL)


@pytest.fixture(scope="module")
def evil_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model that answers anything with EVIL_TEXT (one token per piece)."""
    return write_tiny_model(tmp_path_factory.mktemp("models") / "evil.gguf", script=EVIL)


@pytest.mark.parametrize("platform", list(DRIVERS))
async def test_an_answer_full_of_mentions_and_markup_pings_no_one(
    platform: str, tmp_path: Path, evil_model_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with running(platform, tmp_path, evil_model_path) as (driver, app):
        conv = Conv("asker")
        await driver.ask(conv, "Say something nice")
        [turn] = await answered(app, driver, conv, 1, cut=False)
        assert turn.answer == EVIL_TEXT
        assert driver.final_ok(conv, EVIL_TEXT)
        if isinstance(driver, SlackDriver):
            check_slack(driver)
        elif isinstance(driver, TelegramDriver):
            check_telegram(driver)
        else:
            assert isinstance(driver, WebDriver)
            # The page renders text with textContent only: test_web_browser.py and the
            # Chromium test below; here the API must hand over the text as it was written.
            assert driver.messages(conv) == [(EVIL_TEXT, True)]
    assert errors_in(caplog) == []


def check_slack(driver: SlackDriver) -> None:
    """Slack pings for <!channel>, <!here>, <!everyone>, <!subteam^…> and <@U…> only (plain
    "@here" is text unless a post asks for link_names); every text the bot ever showed must
    have its "<" escaped, and no post or edit may ask Slack to parse names."""
    api = driver.ws.api
    shown = [text for ms in api.messages.values() for m in ms if m.is_bot for text in m.texts]
    assert shown
    for text in shown:
        assert "<" not in text, text
    assert to_mrkdwn(EVIL_TEXT) in shown
    posts = [c for c in api.calls if c.method in ("chat.postMessage", "chat.update")]
    assert posts
    for call in posts:
        assert not call.params.get("link_names") and call.params.get("parse") != "full"
        assert not call.params.get("blocks")


def check_telegram(driver: TelegramDriver) -> None:
    """Streaming updates go without parse_mode (Telegram shows them as typed); the final
    HTML uses formatting tags only, with no link a client would open or ping through."""
    fake = driver.fake
    for method in ("sendMessageDraft", "editMessageText", "sendMessage"):
        for params in fake.method_calls(method):
            if params.get("parse_mode") is None:
                continue
            assert params["parse_mode"] == "HTML"
            _, tags = parse_html(params["text"])
            for tag in tags:
                assert re.fullmatch(r"<(b|i|s|code|pre)>|<a href=\"https?://[^\"]*\">", tag), tag
    [message] = [m for chat in fake.messages.values() for m in chat.values() if m.html]
    assert message.html == render(EVIL_TEXT)
    assert "<script>alert(1)</script>" in message.text  # shown as the text it is


@pytest.mark.browser
@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
async def test_the_page_shows_a_malicious_answer_as_text(
    tmp_path: Path, evil_model_path: Path
) -> None:
    from playwright.async_api import async_playwright, expect

    from adapters.web import WebChatAdapter

    settings = test_settings(tmp_path, evil_model_path)
    async with (
        running_app(settings, [WebChatAdapter(settings)]) as app,
        async_playwright() as playwright,
    ):
        chromium = await playwright.chromium.launch(
            executable_path=shutil.which("chromium"),
            args=["--headless", "--no-sandbox", "--disable-gpu"],
        )
        page = await chromium.new_page()
        await page.add_init_script("window.__alerts = []; window.alert = (m) => __alerts.push(m);")
        errors: list[Any] = []
        page.on("pageerror", lambda error: errors.append(error))
        await page.goto(f"http://127.0.0.1:{app.port}/")
        box = page.locator(".pane textarea")
        await box.fill("Say something nice")
        await box.press("Enter")
        bot = page.locator(".msg.bot")
        await expect(bot).to_have_attribute("data-final", "true", timeout=30_000)
        await expect(bot).to_contain_text("<script>alert(1)</script>")
        await expect(bot).to_contain_text("<!channel>")
        for selector in ("script", "img", "b", "a", "iframe"):
            assert await page.locator(f".transcript {selector}").count() == 0, selector
        assert await page.evaluate("window.__alerts") == []
        await chromium.close()
    assert errors == []
