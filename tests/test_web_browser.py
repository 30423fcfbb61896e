"""The browser chat page in real headless Chromium (Debian's /usr/bin/chromium via Playwright).

Most tests run the adapter on a scripted core (to pause an answer midway, or script its
text): answers grow on screen, survive a reload, two threads side by side keep to
themselves, tabs share one stream. The last one runs the whole bot — the real core,
SQLite and llama.cpp on the tiny model. One Chromium per module; a fresh profile per test."""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page, async_playwright, expect
from pydantic import SecretStr

from adapters.web import WebChatAdapter
from bot.types import ConversationKey
from tests.harness import as_shown, running_app, test_settings
from tests.web_support import STEPS, ScriptedCore, web_server, web_settings

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason="chromium is not installed"),
]

# Records every text a bot message and a progress line showed, so a test can tell that the
# answer grew in steps and that queue position and speed were on screen at some point.
RECORDER = """
window.__seen = []; window.__meta = [];
new MutationObserver(() => {
  for (const el of document.querySelectorAll('.msg.bot')) {
    const t = el.textContent;
    if (window.__seen[window.__seen.length - 1] !== t) window.__seen.push(t);
  }
  for (const el of document.querySelectorAll('.meta')) {
    if (el.textContent) window.__meta.push(el.textContent);
  }
}).observe(document, {subtree: true, childList: true, characterData: true});
"""


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        yield chromium
        await chromium.close()


@dataclass
class Chat:
    page: Page
    core: ScriptedCore
    adapter: WebChatAdapter
    url: str


@pytest_asyncio.fixture(loop_scope="module")
async def chat(browser: Browser) -> AsyncIterator[Chat]:
    async with web_server() as (adapter, core, client):
        context = await browser.new_context()
        page = await context.new_page()
        errors: list[Any] = []
        context.on("weberror", lambda error: errors.append(error.error))
        url = str(client.make_url("/"))
        await page.goto(url)
        yield Chat(page, core, adapter, url)
        await context.close()
        assert errors == []


async def ask(page: Page, text: str, pane: int = 0) -> None:
    box = page.locator(".pane textarea").nth(pane)
    await box.fill(text)
    await box.press("Enter")


async def test_the_answer_grows_on_screen_and_is_there_after_reload(
    chat: Chat,
) -> None:
    page = chat.page
    await expect(page.locator(".pane .conn.live")).to_have_count(1)
    await page.evaluate(RECORDER)
    await ask(page, "why is the sky blue?")

    bot = page.locator(".msg.bot")
    await expect(bot).to_have_attribute("data-final", "true")
    expected = "Answer to why is the sky blue?: The answer grows in several steps."
    await expect(bot).to_have_text(expected)
    await expect(bot.locator("strong")).to_have_text("several")  # Markdown, once final
    seen: list[str] = await page.evaluate("window.__seen")
    assert len(seen) >= 3 and seen[-1] == expected
    meta: list[str] = await page.evaluate("window.__meta")
    assert any("position 1" in m for m in meta)
    assert any("tokens/s" in m for m in meta)
    await expect(page.locator(".pane-title")).to_have_text("why is the sky blue?")

    await page.reload()
    await expect(page.locator(".msg.user")).to_have_text("why is the sky blue?")
    await expect(page.locator(".msg.bot")).to_have_text(expected)
    await expect(page.locator(".meta")).to_have_text(f"{len(STEPS)} tokens")


async def test_a_reload_in_the_middle_of_an_answer_picks_it_up(
    chat: Chat,
) -> None:
    page, core = chat.page, chat.core
    core.gate = asyncio.Event()
    await ask(page, "long one")
    await expect(page.locator(".msg.bot")).to_contain_text("grows")

    await page.reload()
    await expect(page.locator(".msg.user")).to_have_text("long one")
    await expect(page.locator(".msg.bot")).to_have_attribute("data-final", "false")
    await expect(page.locator(".msg.bot")).to_contain_text("grows")
    core.gate.set()
    await expect(page.locator(".msg.bot")).to_have_attribute("data-final", "true")
    await expect(page.locator(".msg.bot")).to_contain_text("several steps.")
    await expect(page.locator(".msg.bot")).to_have_count(1)


async def test_two_threads_side_by_side_do_not_mix(chat: Chat) -> None:
    page = chat.page
    await page.click("#new-thread")
    await expect(page.locator(".pane")).to_have_count(2)
    await expect(page.locator(".pane .conn.live")).to_have_count(2)
    await ask(page, "first thread question", pane=0)
    await ask(page, "second thread question", pane=1)

    for pane, other in ((0, 1), (1, 0)):
        bots = page.locator(".pane").nth(pane).locator(".msg.bot")
        await expect(bots).to_have_attribute("data-final", "true")
        which = ("first", "second")[pane]
        await expect(bots).to_contain_text(f"Answer to {which} thread question")
        await expect(page.locator(".pane").nth(other).locator(".msg.user")).to_have_count(1)

    await page.reload()  # both panes come back, each with its own history
    await expect(page.locator(".pane")).to_have_count(2)
    for pane, which in ((0, "first"), (1, "second")):
        users = page.locator(".pane").nth(pane).locator(".msg.user")
        await expect(users).to_have_text(f"{which} thread question")
    await expect(page.locator("#threads button")).to_have_count(2)


async def test_reset_typed_into_the_box_clears_the_thread(
    chat: Chat,
) -> None:
    page = chat.page
    await ask(page, "remember me")
    await expect(page.locator('.exchange[data-done="true"]')).to_have_count(1)
    await ask(page, "/reset")
    # Lists: the old exchange may still be on screen for a moment (no strict-mode error).
    await expect(page.locator(".msg.user")).to_have_text(["/reset"])
    await expect(page.locator(".msg.bot")).to_have_text(["Forgot this thread (1 turns)."])
    await page.reload()
    await expect(page.locator(".pane")).to_have_count(1)
    await expect(page.locator(".msg")).to_have_count(0)


async def test_untrusted_text_never_becomes_markup(chat: Chat) -> None:
    page = chat.page
    evil = '<img src=x onerror="window.__pwned=1"> [x](javascript:alert(1))'
    await ask(page, evil)
    bot = page.locator(".msg.bot")
    await expect(bot).to_have_attribute("data-final", "true")
    await expect(page.locator(".msg.user")).to_have_text(evil)
    assert await page.locator(".transcript img").count() == 0
    assert await page.locator(".transcript a").count() == 0
    assert await page.evaluate("window.__pwned") is None


async def test_final_answers_render_a_safe_subset_of_markdown(
    chat: Chat,
) -> None:
    page = chat.page
    markdown = (
        "# Title\n\nSome **bold**, _italic_, snake_case_name and `x < y`.\n\n"
        "- one\n- two\n\n1. first\n2. second\n\n"
        "```python\nprint('<b>hi</b>')\n```\n"
        "[docs](https://example.com/a) [bad](javascript:alert(1)) <i>raw</i>"
    )
    shape = await page.evaluate(
        """(text) => {
            const div = document.createElement('div');
            window.renderMarkdown(div, text);
            const all = (sel) => [...div.querySelectorAll(sel)].map((e) => e.textContent);
            return {
                h: all('h3'), strong: all('strong'), em: all('em'), code: all('p code'),
                ul: all('ul li'), ol: all('ol li'), pre: all('pre code'),
                links: [...div.querySelectorAll('a')].map((a) => a.href), i: all('i'),
                text: div.textContent,
            };
        }""",
        markdown,
    )
    assert shape["h"] == ["Title"]
    assert shape["strong"] == ["bold"] and shape["em"] == ["italic"]
    assert shape["code"] == ["x < y"]
    assert shape["ul"] == ["one", "two"] and shape["ol"] == ["first", "second"]
    assert shape["pre"] == ["print('<b>hi</b>')"]
    assert shape["links"] == ["https://example.com/a"]
    assert shape["i"] == [] and "<i>raw</i>" in shape["text"]
    assert "snake_case_name" in shape["text"]


async def test_tabs_of_one_browser_share_one_stream_and_see_each_others_answers(
    chat: Chat,
) -> None:
    first = chat.page
    await ask(first, "asked in the first tab")
    await expect(first.locator('.exchange[data-done="true"]')).to_have_count(1)

    second = await first.context.new_page()
    await second.goto(chat.url)
    await expect(second.locator(".pane")).to_have_count(1)  # its own new thread
    await expect(second.locator(".pane .conn.live")).to_have_count(1)
    await second.locator("#threads button", has_text="asked in the first tab").click()
    await expect(second.locator(".pane")).to_have_count(2)
    shared = second.locator(".pane").nth(1)
    await expect(shared.locator(".msg.user")).to_have_text("asked in the first tab")

    chat.core.gate = asyncio.Event()
    await ask(first, "and a second question")
    await expect(shared.locator(".msg.bot").nth(1)).to_contain_text("grows")  # live, mid-answer
    assert chat.adapter.state.subscriber_count == 1  # one connection for both tabs
    chat.core.gate.set()
    await expect(shared.locator(".msg.bot").nth(1)).to_have_attribute("data-final", "true")


async def test_with_a_token_the_page_needs_one_login_visit(browser: Browser) -> None:
    settings = web_settings(web_token=SecretStr("page-token-123"))
    async with web_server(settings) as (_adapter, _core, client):
        context = await browser.new_context()
        page = await context.new_page()
        refused = await page.goto(str(client.make_url("/")))
        assert refused is not None and refused.status == 401
        await page.goto(str(client.make_url("/?token=page-token-123")))
        assert page.url == str(client.make_url("/"))  # the token left the address bar
        await expect(page.locator(".pane .conn.live")).to_have_count(1)
        await ask(page, "behind a token")
        await expect(page.locator(".msg.bot")).to_have_attribute("data-final", "true")
        await page.reload()
        await expect(page.locator(".msg.user")).to_have_text("behind a token")
        await context.close()


async def test_end_to_end_through_the_real_core_and_llama_cpp(
    browser: Browser, tmp_path: Path, tiny_model_path: Path
) -> None:
    """Type a question, watch tokens arrive, reload: the stored turn is there; /reset clears it.
    The tiny model writes random-looking text, so the page is compared with what was stored."""
    settings = test_settings(
        tmp_path,
        tiny_model_path,
        EDGEQA_ENGINE__MAX_TOKENS="200",
        # The tiny model writes 200 tokens in a blink; edit often enough to see them grow.
        EDGEQA_WEB__EDIT_INTERVAL="0.001",
    )
    async with running_app(settings, [WebChatAdapter(settings)]) as app:
        context = await browser.new_context()
        errors: list[Any] = []
        context.on("weberror", lambda error: errors.append(error.error))
        page = await context.new_page()
        await page.goto(f"http://127.0.0.1:{app.port}/")
        await expect(page.locator(".pane .conn.live")).to_have_count(1)
        await page.evaluate(RECORDER)
        await ask(page, "What is the capital of France?")
        await expect(page.locator('.exchange[data-done="true"]')).to_have_count(1, timeout=60_000)

        browser_id, thread = await page.evaluate(
            "[localStorage.getItem('edgeqa.browser'), sessionStorage.getItem('edgeqa.thread')]"
        )
        key = ConversationKey("web", "", browser_id, thread)
        [turn] = await app.repo.load_history(key)
        assert turn.question == "What is the capital of France?" and turn.answer
        streamed = [t for t in await page.evaluate("window.__seen") if t]
        growing = [t for t in streamed if turn.answer.startswith(t) and t != turn.answer]
        assert len(set(growing)) >= 2, streamed  # tokens arrived in several steps
        meta: list[str] = await page.evaluate("window.__meta")
        assert any("tokens/s" in m for m in meta)
        # What the page shows at the end is the stored answer, rendered: as streamed (with
        # the length mark), or as the history has it where the page re-read the thread.
        rendered = [
            await page.evaluate(
                "(t) => { const d = document.createElement('div');"
                " window.renderMarkdown(d, t); return d.textContent; }",
                text,
            )
            for text in (as_shown(turn.answer), turn.answer)
        ]
        pattern = "|".join(re.escape(text.strip()) for text in rendered)
        await expect(page.locator(".msg.bot")).to_have_text(re.compile(f"^\\s*(?:{pattern})\\s*$"))

        await page.reload()  # the stored turn: the answer without the mark
        await expect(page.locator(".msg.user")).to_have_text(turn.question)
        await expect(page.locator(".msg.bot")).to_have_text(rendered[1])

        await ask(page, "/reset")
        await expect(page.locator(".msg.user")).to_have_text(["/reset"])
        await expect(page.locator(".msg.bot")).to_contain_text(["forgotten this thread"])
        assert await app.repo.load_history(key) == []
        await page.reload()
        await expect(page.locator(".pane")).to_have_count(1)
        await expect(page.locator(".msg")).to_have_count(0)
        await context.close()
        assert errors == []


async def test_a_grounded_answer_shows_its_sources_as_links(
    browser: Browser, tmp_path: Path, tiny_model_path: Path
) -> None:
    """The whole bot with a knowledge base: the answer ends with its documents as links
    (titles alone where there is no web address), also after a reload."""
    from tests.kb_support import HOTEL_QUESTION, HR_URL, UNANSWERABLE, grounded_app, kb_settings

    settings = kb_settings(tmp_path, tiny_model_path)
    async with grounded_app(settings, [WebChatAdapter(settings)]) as app:
        context = await browser.new_context()
        errors: list[Any] = []
        context.on("weberror", lambda error: errors.append(error.error))
        page = await context.new_page()
        await page.goto(f"http://127.0.0.1:{app.port}/")
        await expect(page.locator(".pane .conn.live")).to_have_count(1)
        await ask(page, HOTEL_QUESTION)
        await expect(page.locator('.exchange[data-done="true"]')).to_have_count(1, timeout=60_000)
        link = page.locator(".msg.bot .sources a").first
        await expect(link).to_have_text("[1] Travel policy")
        await expect(link).to_have_attribute("href", f"{HR_URL}travel.md")
        await page.reload()
        await expect(page.locator(".msg.bot .sources a").first).to_have_attribute(
            "href", f"{HR_URL}travel.md"
        )
        await ask(page, "/reset")
        await expect(page.locator(".msg.bot")).to_contain_text(["forgotten this thread"])
        await ask(page, UNANSWERABLE)
        await expect(page.locator('.exchange[data-done="true"]')).to_have_count(2, timeout=60_000)
        await expect(page.locator(".msg.bot").last).to_contain_text("documents don't cover")
        await expect(page.locator(".msg.bot .sources")).to_have_count(0)
        await context.close()
        assert errors == []
