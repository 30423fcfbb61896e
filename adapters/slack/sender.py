"""Putting answers into Slack: post, edit on a shared budget, native streams, "is thinking…".

The core's flusher decides *when* to send and edit; this module decides *how*: chat.update
within the workspace's edit budget, or Slack's chat.startStream/appendStream/stopStream
(optional, thread replies only), with Slack's errors translated into the core's
(RateLimited, MessageTooLong, PlatformError). Markdown is rendered only once a text is final.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.web.async_client import AsyncWebClient

from adapters.base import MessageTooLong, PlatformError, RateLimited, Refused
from adapters.slack.budget import EditBudget
from adapters.slack.render import escape, to_mrkdwn
from bot.config import SlackSettings
from bot.types import ConversationKey, MessageRef

log = logging.getLogger(__name__)

THINKING = "is thinking…"
STREAM_APPENDS_PER_MINUTE = 100  # chat.appendStream is Tier 4 (100+ a minute)


class SlackRefused(Refused):
    """Slack answered with an error that retrying the same call will not fix."""

    def __init__(self, error: str) -> None:
        super().__init__(f"slack refused: {error}")
        self.error = error


def translate(exc: Exception) -> PlatformError:
    """Slack's errors as the core's: 429 -> RateLimited, msg_too_long -> MessageTooLong,
    5xx / network -> PlatformError, other refusals -> SlackRefused."""
    if isinstance(exc, SlackApiError):
        response = exc.response
        status = getattr(response, "status_code", 0)
        data = getattr(response, "data", None)
        error = str(data.get("error", "")) if isinstance(data, dict) else ""
        if status == 429 or error == "ratelimited":
            headers = getattr(response, "headers", None) or {}
            try:
                retry_after = float(headers.get("Retry-After", 1))
            except (TypeError, ValueError):
                retry_after = 1.0
            return RateLimited(max(retry_after, 0.0))
        if error in ("msg_too_long", "msg_blocks_too_long", "markdown_text_too_long"):
            return MessageTooLong(error)
        if status >= 500 or not error or error in _TRANSIENT:
            return PlatformError(f"slack: {error or f'HTTP {status}'}")
        return SlackRefused(error)
    return PlatformError(f"slack: {type(exc).__name__}: {exc}")


_TRANSIENT = {"internal_error", "fatal_error", "service_unavailable", "request_timeout"}


def _render(text: str) -> str:
    """The final text as mrkdwn; Markdown that renders to nothing (a lone link reference
    definition) is shown as written, since Slack refuses empty messages."""
    return to_mrkdwn(text) or escape(text)


@dataclass(slots=True)
class _Live:
    """A message that is still being written."""

    key: ConversationKey
    mode: Literal["update", "stream"]
    appended: str = ""  # stream mode: the plain text Slack already has


class SlackSender:
    def __init__(self, client: AsyncWebClient, settings: SlackSettings) -> None:
        self._client = client
        self._settings = settings
        self._edits: dict[str, EditBudget] = {}
        self._appends: dict[str, EditBudget] = {}
        self._live: dict[str, _Live] = {}
        # "is thinking…" messages by conversation, still being posted or posted.
        self._placeholders: dict[ConversationKey, asyncio.Future[str]] = {}
        self._status_works = True
        self._native = settings.native_streaming
        self.recipients: dict[tuple[str, str], str] = {}  # (channel, thread) -> asking user
        self.team_id = ""

    # -- budgets -------------------------------------------------------------------------

    def edit_budget(self, workspace: str) -> EditBudget:
        budget = self._edits.get(workspace)
        if budget is None:
            budget = self._edits[workspace] = EditBudget(self._settings.workspace_edits_per_minute)
        return budget

    def _append_budget(self, workspace: str) -> EditBudget:
        budget = self._appends.get(workspace)
        if budget is None:
            budget = self._appends[workspace] = EditBudget(STREAM_APPENDS_PER_MINUTE)
        return budget

    def _budget_for(self, live: _Live) -> EditBudget:
        if live.mode == "stream":
            return self._append_budget(live.key.workspace)
        return self.edit_budget(live.key.workspace)

    def edit_interval(self, key: ConversationKey) -> float:
        streaming = any(live.mode == "stream" and live.key == key for live in self._live.values())
        budget = (
            self._append_budget(key.workspace) if streaming else self.edit_budget(key.workspace)
        )
        return budget.interval(self._settings.edit_interval)

    # -- calls ---------------------------------------------------------------------------

    async def _api(self, method: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = await self._client.api_call(method, json=kwargs)
        except (SlackClientError, aiohttp.ClientError, TimeoutError) as exc:
            raise translate(exc) from exc
        data = response.data
        return data if isinstance(data, dict) else {}

    async def _update(self, key: ConversationKey, ts: str, text: str) -> None:
        await self.edit_budget(key.workspace).acquire()
        await self._api("chat.update", channel=key.channel, ts=ts, text=text)

    async def _post(self, key: ConversationKey, text: str) -> str:
        kwargs: dict[str, Any] = {"channel": key.channel, "text": text}
        if key.thread:
            kwargs["thread_ts"] = key.thread
        data = await self._api("chat.postMessage", unfurl_links=False, unfurl_media=False, **kwargs)
        return str(data.get("ts", ""))

    async def _start_stream(self, key: ConversationKey, text: str) -> str | None:
        """A native stream in the thread, or None where Slack does not offer one to us."""
        user = self.recipients.get((key.channel, key.thread), "")
        if not (self._native and key.thread and user):
            return None
        try:
            data = await self._api(
                "chat.startStream",
                channel=key.channel,
                thread_ts=key.thread,
                markdown_text=text,
                recipient_user_id=user,
                recipient_team_id=key.workspace or self.team_id,
            )
        except SlackRefused as exc:
            log.info("native streaming unavailable (%s); using chat.update", exc.error)
            self._native = False
            return None
        return str(data.get("ts", ""))

    # -- the adapter's send side ---------------------------------------------------------

    async def send(self, key: ConversationKey, text: str, *, final: bool) -> MessageRef:
        body = _render(text) if final else escape(text)
        mode: Literal["update", "stream"] = "update"
        ts = ""
        posting = self._placeholders.get(key)
        if posting is not None:
            placeholder = await _posted(posting)
            if placeholder:
                try:
                    await self._update(key, placeholder, body)
                    ts = placeholder
                except SlackRefused:  # deleted meanwhile: post a new message instead
                    pass
            self._placeholders.pop(key, None)
        if not ts and not final:
            ts = await self._start_stream(key, text) or ""
            mode = "stream" if ts else "update"
        if not ts:
            ts = await self._post(key, body)
        if not final:
            live = self._live[ts] = _Live(key, mode, text if mode == "stream" else "")
            self._budget_for(live).open(ts)
        return MessageRef(key=key, message_id=ts, extra=(("channel", key.channel),))

    async def edit(self, ref: MessageRef, text: str, *, final: bool) -> None:
        key = ref.key
        live = self._live.get(ref.message_id) or _Live(key, "update")
        self._budget_for(live).touch(ref.message_id)
        if live.mode == "stream" and await self._edit_stream(ref.message_id, live, text, final):
            if final:
                self._finish(ref.message_id, live)
            return
        await self._update(key, ref.message_id, _render(text) if final else escape(text))
        if final:
            self._finish(ref.message_id, live)

    async def _edit_stream(self, ts: str, live: _Live, text: str, final: bool) -> bool:
        """Append the new text to the native stream; False if the stream cannot take it
        (text rewritten, stream expired) and the message must be edited instead."""
        channel = live.key.channel
        try:
            if text.startswith(live.appended):
                delta = text[len(live.appended) :]
                if final:
                    await self._api("chat.stopStream", channel=channel, ts=ts, markdown_text=delta)
                elif delta:
                    await self._append_budget(live.key.workspace).acquire()
                    await self._api(
                        "chat.appendStream", channel=channel, ts=ts, markdown_text=delta
                    )
                live.appended = text
                return True
            await self._api("chat.stopStream", channel=channel, ts=ts)
        except SlackRefused as exc:
            log.info("stream %s ended early (%s); editing instead", ts, exc.error)
        self._append_budget(live.key.workspace).close(ts)
        live.mode = "update"
        self.edit_budget(live.key.workspace).open(ts)
        return False

    def _finish(self, ts: str, live: _Live) -> None:
        self._budget_for(live).close(ts)
        self._live.pop(ts, None)

    async def typing(self, key: ConversationKey) -> None:
        """assistant.threads.setStatus in a thread; elsewhere (or where Slack refuses it) a
        placeholder message that the first text then replaces."""
        if key in self._placeholders or any(live.key == key for live in self._live.values()):
            return
        if key.thread and self._status_works:
            try:
                await self._api(
                    "assistant.threads.setStatus",
                    channel_id=key.channel,
                    thread_ts=key.thread,
                    status=THINKING,
                )
                return
            except SlackRefused as exc:
                log.info("thinking status unavailable (%s); posting a placeholder", exc.error)
                self._status_works = False
        posting = asyncio.ensure_future(self._post(key, f"_{THINKING}_"))
        posting.add_done_callback(lambda done: done.cancelled() or done.exception())
        self._placeholders[key] = posting
        # Shielded: when the first words cancel the typing loop mid-call, Slack may still
        # post the placeholder, and send() must find it (and wait for it) to turn it into
        # the answer — else it would stay "is thinking…" next to the answer for good.
        await asyncio.shield(posting)


async def _posted(posting: asyncio.Future[str]) -> str:
    """The ts of a placeholder once posted; "" if posting it failed."""
    try:
        return await asyncio.shield(posting)
    except (PlatformError, SlackClientError, aiohttp.ClientError, TimeoutError):
        return ""
