"""Putting answers into Slack: post, edit on a shared budget, native streams, "is thinking…".

The core's flusher decides *when* to send and edit; this module decides *how*: chat.update
within the workspace's edit budget, or Slack's chat.startStream/appendStream/stopStream
(optional, thread replies only), with Slack's errors translated into the core's
(RateLimited, MessageTooLong, PlatformError). Markdown is rendered only once a text is final.

A post whose answer is lost (dropped connection, timeout, 5xx) may still have been made, and
the core will ask again. So before posting again the thread is read back
(conversations.replies / .history) and a bot message with the text we tried, that we do
not know yet, is taken as ours: the answer is shown once. An append to a native stream
cannot be checked that way, so after an unclear append the message is finished with
chat.update, which sets the whole text whatever the stream holds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.web.async_client import AsyncWebClient

from adapters.base import MessageTooLong, PlatformError, RateLimited, Refused
from adapters.shared import BoundedMap
from adapters.slack.budget import EditBudget
from adapters.slack.config import SlackSettings
from adapters.slack.render import escape, to_mrkdwn
from bot.i18n import N_
from bot.types import ConversationKey, MessageRef

log = logging.getLogger(__name__)

THINKING = N_("is thinking…")  # after the bot's name, as Slack shows a status
STREAM_APPENDS_PER_MINUTE = 100  # chat.appendStream is Tier 4 (100+ a minute)
KNOWN = 10_000  # timestamps of messages we posted, remembered to tell them from lost posts
STATUS_RETRY = 600.0  # seconds before setStatus is tried again in a channel that refused it
MEMORY = 10_000  # conversations whose asker and last question are remembered


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


def _unclear(exc: PlatformError) -> bool:
    """Could Slack have done what was asked although the call failed? (Not after a 429 or
    a refusal: Slack answered, and said no.)"""
    return not isinstance(exc, RateLimited | Refused | MessageTooLong)


def _render(text: str, footer: str = "") -> str:
    """The final text as mrkdwn (and the sources footer under it); Markdown that renders to
    nothing (a lone link reference definition) is shown as written, since Slack refuses
    empty messages."""
    body = to_mrkdwn(text) or escape(text)
    return f"{body}\n\n{footer}" if footer else body


@dataclass(slots=True)
class _Live:
    """A message that is still being written."""

    key: ConversationKey
    mode: Literal["update", "stream"]
    body: str = ""  # update mode: the text Slack shows now (an identical update is not sent)
    appended: str = ""  # stream mode: the plain text Slack already has
    stop_first: bool = False  # an unclear stream call: stop the stream before chat.update


@dataclass(slots=True)
class _Unsure:
    """Posts in one conversation that failed without a clear answer from Slack."""

    after: str  # the question's ts: a lost post is newer
    texts: dict[str, bool] = field(default_factory=dict)  # text tried -> was a stream


class SlackSender:
    def __init__(self, client: AsyncWebClient, settings: SlackSettings) -> None:
        self._client = client
        self._settings = settings
        self._edits: dict[str, EditBudget] = {}
        self._appends: dict[str, EditBudget] = {}
        self._live: dict[str, _Live] = {}
        # "is thinking…" messages by (conversation, question ts), still being posted or
        # posted: only the answer to that question takes one over.
        self._placeholders: dict[tuple[ConversationKey, str], asyncio.Future[str]] = {}
        self._stopping: set[str] = set()  # adopted lost streams: stop before chat.update
        self._unsure: dict[tuple[ConversationKey, str], _Unsure] = {}  # by question, too
        self._known: BoundedMap[str, bool] = BoundedMap(KNOWN)  # ts of messages we posted
        self._no_status: dict[str, float] = {}  # channel -> when to try setStatus again
        self._native = settings.native_streaming
        # (channel, thread) -> the asking user; -> the last question's ts
        self._recipients: BoundedMap[tuple[str, str], str] = BoundedMap(MEMORY)
        self._asked: BoundedMap[tuple[str, str], str] = BoundedMap(MEMORY)
        # (channel, thread) -> "is thinking…" in the asking user's language
        self.thinking: BoundedMap[tuple[str, str], str] = BoundedMap(MEMORY)
        self._team_id = ""
        self._bot_user_id = ""

    def identify(self, bot_user_id: str, team_id: str) -> None:
        """Who the bot is (from auth.test): its posts are told from others' by this id."""
        self._bot_user_id, self._team_id = bot_user_id, team_id

    def note_question(self, key: ConversationKey, user: str, ts: str) -> None:
        """A question arrived: a native stream in its thread goes to `user`, and a lost post
        in reply to it is looked for after `ts`. Bounded: the oldest are forgotten."""
        self._recipients.put((key.channel, key.thread), user)
        self._asked.put((key.channel, key.thread), ts)

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

    async def _post(self, key: ConversationKey, text: str, after: str) -> str:
        kwargs: dict[str, Any] = {"channel": key.channel, "text": text}
        if key.thread:
            kwargs["thread_ts"] = key.thread
        try:
            data = await self._api(
                "chat.postMessage", unfurl_links=False, unfurl_media=False, **kwargs
            )
        except PlatformError as exc:
            self._note_unsure(key, exc, text, after, stream=False)
            raise
        return self._remember(str(data.get("ts", "")))

    def _remember(self, ts: str) -> str:
        self._known.put(ts, True)
        return ts

    def _note_unsure(
        self, key: ConversationKey, exc: PlatformError, text: str, after: str, *, stream: bool
    ) -> None:
        if _unclear(exc) and after and self._bot_user_id:
            self._unsure.setdefault((key, after), _Unsure(after)).texts[text] = stream

    async def _adopt_lost_post(self, key: ConversationKey, after: str) -> str:
        """After an unclear post in this conversation, read the conversation back: the ts
        of the message if Slack made it anyway (to be edited instead of posting again),
        else "". Raises PlatformError while Slack cannot tell us."""
        unsure = self._unsure.get((key, after))
        if unsure is None:
            return ""
        if key.thread:
            data = await self._api(
                "conversations.replies",
                channel=key.channel,
                ts=key.thread,
                oldest=unsure.after,
                limit=200,
            )
        else:
            data = await self._api(
                "conversations.history", channel=key.channel, oldest=unsure.after, limit=200
            )
        del self._unsure[(key, after)]
        for message in data.get("messages") or []:
            ts, text = str(message.get("ts", "")), message.get("text")
            if (
                message.get("user") == self._bot_user_id
                and text in unsure.texts
                and ts != unsure.after
                and ts not in self._known
            ):
                log.info("a post in %s went through although its answer was lost", key.channel)
                if unsure.texts[text]:
                    self._stopping.add(ts)
                return self._remember(ts)
        return ""

    async def _start_stream(self, key: ConversationKey, text: str, after: str) -> str | None:
        """A native stream in the thread, or None where Slack does not offer one to us."""
        user = self._recipients.get((key.channel, key.thread)) or ""
        if not (self._native and key.thread and user):
            return None
        try:
            data = await self._api(
                "chat.startStream",
                channel=key.channel,
                thread_ts=key.thread,
                markdown_text=text,
                recipient_user_id=user,
                recipient_team_id=key.workspace or self._team_id,
            )
        except SlackRefused as exc:
            log.info("native streaming unavailable (%s); using chat.update", exc.error)
            self._native = False
            return None
        except PlatformError as exc:
            self._note_unsure(key, exc, text, after, stream=True)
            raise
        return self._remember(str(data.get("ts", "")))

    async def _stop_stream(self, channel: str, ts: str) -> None:
        """End a stream that may still be open (an unclear call, an adopted lost stream)."""
        try:
            await self._api("chat.stopStream", channel=channel, ts=ts)
        except SlackRefused as exc:  # not (or no longer) streaming: fine
            log.debug("stream %s already stopped (%s)", ts, exc.error)
        self._stopping.discard(ts)

    # -- the adapter's send side ---------------------------------------------------------

    async def send(
        self, key: ConversationKey, text: str, *, final: bool, after: str = "", footer: str = ""
    ) -> MessageRef:
        """Post `text` (and under it `footer`, mrkdwn already); `after` is the ts of the
        question it answers (see _adopt_lost_post)."""
        after = after or (self._asked.get((key.channel, key.thread)) or "")
        body = _render(text, footer) if final else escape(text)
        mode: Literal["update", "stream"] = "update"
        ts = ""
        posting = self._placeholders.get((key, after))
        placeholder = await _posted(posting) if posting is not None else ""
        if not placeholder and (placeholder := await self._adopt_lost_post(key, after)):
            self._placeholders[(key, after)] = _done(placeholder)  # kept if the edit fails
        if placeholder:
            try:
                if placeholder in self._stopping:
                    await self._stop_stream(key.channel, placeholder)
                await self._update(key, placeholder, body)
                ts = placeholder
            except SlackRefused:  # deleted meanwhile: post a new message instead
                pass
        self._placeholders.pop((key, after), None)
        if not ts and not final:
            ts = await self._start_stream(key, text, after) or ""
            mode = "stream" if ts else "update"
        if not ts:
            ts = await self._post(key, body, after)
        if not final:
            live = self._live[ts] = _Live(key, mode, body if mode == "update" else "")
            live.appended = text if mode == "stream" else ""
            self._budget_for(live).open(ts)
        return MessageRef(key=key, message_id=ts, extra=(("channel", key.channel),))

    async def edit(self, ref: MessageRef, text: str, *, final: bool, footer: str = "") -> None:
        key = ref.key
        live = self._live.get(ref.message_id) or _Live(key, "update")
        self._budget_for(live).touch(ref.message_id)
        if final and footer and live.mode == "stream":
            # A stream takes Markdown appends; the footer is mrkdwn (<url|title>). End the
            # stream and set the whole final text with chat.update instead.
            self._to_updates(ref.message_id, live)
            live.stop_first = True
        if live.mode == "stream" and await self._edit_stream(ref.message_id, live, text, final):
            if final:
                self._finish(ref.message_id, live)
            return
        if live.stop_first:
            await self._stop_stream(key.channel, ref.message_id)
            live.stop_first = False
        body = _render(text, footer) if final else escape(text)
        if body != live.body or not body:  # the same text again would cost a call for nothing
            await self._update(key, ref.message_id, body)
            live.body = body
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
        except PlatformError as exc:
            if not _unclear(exc):
                raise
            # Slack may or may not have taken the delta: appending it again could show it
            # twice. Set the whole text with chat.update from now on instead.
            log.info("stream %s: unclear append (%s); editing instead", ts, exc)
            self._to_updates(ts, live)
            live.stop_first = True
            raise
        self._to_updates(ts, live)
        return False

    def _to_updates(self, ts: str, live: _Live) -> None:
        self._append_budget(live.key.workspace).close(ts)
        live.mode, live.body = "update", ""
        self.edit_budget(live.key.workspace).open(ts)

    def _finish(self, ts: str, live: _Live) -> None:
        self._budget_for(live).close(ts)
        self._live.pop(ts, None)

    async def typing(self, key: ConversationKey, question: str = "") -> None:
        """assistant.threads.setStatus in a thread; elsewhere (or where Slack refuses it) a
        placeholder message that the first text of the answer to `question` (its ts) then
        replaces — no other message, so answers stay in the order of their questions."""
        after = question or (self._asked.get((key.channel, key.thread)) or "")
        if (key, after) in self._placeholders or any(
            live.key == key for live in self._live.values()
        ):
            return
        if lost := await self._adopt_lost_post(key, after):
            self._placeholders[(key, after)] = _done(lost)
            return
        thinking = self.thinking.get((key.channel, key.thread)) or THINKING
        if key.thread and time.monotonic() >= self._no_status.get(key.channel, 0.0):
            try:
                await self._api(
                    "assistant.threads.setStatus",
                    channel_id=key.channel,
                    thread_ts=key.thread,
                    status=thinking,
                )
                return
            except SlackRefused as exc:
                # Refused here (a channel the app may not set a status in, a missing
                # scope): placeholders in this channel for a while, then try again.
                log.info(
                    "thinking status refused in %s (%s); placeholders there for %.0f s",
                    key.channel,
                    exc.error,
                    STATUS_RETRY,
                )
                self._no_status[key.channel] = time.monotonic() + STATUS_RETRY
        posting = asyncio.ensure_future(self._post(key, f"_{thinking}_", after))
        posting.add_done_callback(lambda done: done.cancelled() or done.exception())
        self._placeholders[(key, after)] = posting
        # Shielded: when the first words cancel the typing loop mid-call, Slack may still
        # post the placeholder, and send() must find it (and wait for it) to turn it into
        # the answer — else it would stay "is thinking…" next to the answer for good.
        await asyncio.shield(posting)


def _done(ts: str) -> asyncio.Future[str]:
    """A placeholder that is already posted."""
    future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    future.set_result(ts)
    return future


async def _posted(posting: asyncio.Future[str]) -> str:
    """The ts of a placeholder once posted; "" if posting it failed."""
    try:
        return await asyncio.shield(posting)
    except (PlatformError, SlackClientError, aiohttp.ClientError, TimeoutError):
        return ""
