"""A Chinese browser (Chromium with locale zh-CN) sees the chat page and the bot in Chinese.

The page's own texts (buttons, placeholder, status and progress lines) come from the same
catalogs as the bot's, chosen by the browser's Accept-Language; the bot's replies follow the
language the page asks in. The conversation test runs the real core on llama.cpp (tiny
model); the queue test needs an answer held open, which only the scripted engine can do
without depending on the machine's speed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from playwright.async_api import Browser, BrowserContext, Page, expect

from adapters.web import WebChatAdapter
from bot.types import ConversationKey
from tests.doubles import ScriptedEngine
from tests.harness import running_app, test_settings
from tests.test_web_browser import CHROMIUM, RECORDER, ask
from tests.test_web_browser import browser as browser  # the module's one Chromium
from tests.web_support import STEPS, web_server

pytestmark = [
    pytest.mark.browser,
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed"),
]


@pytest_asyncio.fixture(loop_scope="module")
async def chinese(browser: Browser) -> AsyncIterator[BrowserContext]:
    context = await browser.new_context(locale="zh-CN")
    errors: list[Any] = []
    context.on("weberror", lambda error: errors.append(error.error))
    yield context
    await context.close()
    assert errors == []


async def open_chat(context: BrowserContext, url: str) -> Page:
    page = await context.new_page()
    await page.goto(url)
    await expect(page.locator(".pane .conn.live")).to_have_count(1)
    await page.evaluate(RECORDER)
    return page


async def test_the_page_speaks_the_browsers_language(chinese: BrowserContext) -> None:
    async with web_server() as (_adapter, _core, client):
        page = await open_chat(chinese, str(client.make_url("/")))
        await expect(page.locator("html")).to_have_attribute("lang", "zh")
        await expect(page.locator("#new-thread")).to_have_text("新对话")
        await expect(page.locator(".pane-title")).to_have_text("新对话")
        await expect(page.locator(".pane textarea")).to_have_attribute(
            "placeholder", "提个问题，或输入 /help"
        )
        await expect(page.locator(".pane .send")).to_have_text("发送")
        await expect(page.locator(".pane .stop")).to_have_text("停止")
        await expect(page.locator("#me")).to_contain_text("我的 ID：")

        await ask(page, "天空为什么是蓝色的？")
        await expect(page.locator(".msg.bot")).to_have_attribute("data-final", "true")
        meta: list[str] = await page.evaluate("window.__meta")
        assert "排队中，第 1 位" in meta  # the scripted core reports position 1 first
        assert any(m.endswith("个词元 · 每秒 12.5 个词元") for m in meta)
        await expect(page.locator(".pane-title")).to_have_text("天空为什么是蓝色的？")
        await page.reload()  # the stored turn, with its token count
        await expect(page.locator(".meta")).to_have_text(f"{len(STEPS)} 个词元")
        await expect(page.locator(".pane-title")).to_have_text("天空为什么是蓝色的？")

        await ask(page, "长" * 40_000)  # refused by the server, explained in Chinese
        await expect(page.locator(".pane .status")).to_have_text("一条消息最多 32000 个字符")


async def test_an_english_browser_still_gets_english(browser: Browser) -> None:
    async with web_server() as (_adapter, _core, client):
        context = await browser.new_context(locale="en-US")
        page = await open_chat(context, str(client.make_url("/")))
        await expect(page.locator("html")).to_have_attribute("lang", "en")
        await expect(page.locator("#new-thread")).to_have_text("New thread")
        await ask(page, "why?")
        await expect(page.locator(".msg.bot")).to_have_attribute("data-final", "true")
        await page.reload()
        await expect(page.locator(".meta")).to_have_text(f"{len(STEPS)} tokens")
        await context.close()


async def test_a_chinese_conversation_through_the_real_core(
    chinese: BrowserContext, tmp_path: Path, tiny_model_path: Path
) -> None:
    settings = test_settings(
        tmp_path,
        tiny_model_path,
        EDGEQA_ENGINE__MAX_TOKENS="60",
        EDGEQA_WEB__ADMINS="nobody",  # so /stats is refused to this browser
    )
    async with running_app(settings, [WebChatAdapter(settings)]) as app:
        page = await open_chat(chinese, f"http://127.0.0.1:{app.port}/")
        bots = page.locator(".msg.bot")
        await ask(page, "羊驼是什么？")
        await expect(page.locator('.exchange[data-done="true"]')).to_have_count(1, timeout=60_000)

        await ask(page, "/help")
        await expect(bots.last).to_contain_text("在这个对话里尽管问我，我会在这里回答。命令：")
        await expect(bots.last).to_contain_text("/stop — 停止本对话中正在生成的回答")
        await ask(page, "/stats")
        await expect(bots.last).to_have_text("抱歉，/stats 仅限管理员使用。")
        await ask(page, "/frobnicate")
        await expect(bots.last).to_have_text("我不认识命令 /frobnicate。试试 /help。")
        await ask(page, "/reset")
        await expect(bots.last).to_have_text("好了——我已忘掉这个对话（之前的 1 个问题）。")

        browser_id, thread = await page.evaluate(
            "[localStorage.getItem('edgeqa.browser'), sessionStorage.getItem('edgeqa.thread')]"
        )
        assert await app.repo.load_history(ConversationKey("web", "", browser_id, thread)) == []


async def test_a_chinese_browser_sees_the_queue_in_chinese(
    chinese: BrowserContext, tmp_path: Path
) -> None:
    engine = ScriptedEngine("答案就在这里。")
    engine.gate = asyncio.Event()
    settings = test_settings(tmp_path)
    async with running_app(settings, [WebChatAdapter(settings)], engine=engine) as app:
        page = await open_chat(chinese, f"http://127.0.0.1:{app.port}/")
        await ask(page, "第一个问题")
        await expect(page.locator(".meta")).to_have_text("思考中…")
        await ask(page, "第二个问题")
        second = page.locator(".exchange").nth(1).locator(".msg.bot")
        await expect(second).to_have_text("⏳ 排队中（第 1 位）——轮到时我会在这里回答。")
        engine.gate.set()
        await expect(page.locator('.exchange[data-done="true"]')).to_have_count(2)
        await expect(page.locator(".msg.bot")).to_have_text(["答案就在这里。"] * 2)
