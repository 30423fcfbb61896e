"""StreamFlusher: turns a stream of tokens into the few message edits a platform accepts.

Chat platforms limit how often a message may be edited, so the answer cannot follow every
token. The flusher keeps the latest text and pushes it on the adapter's cadence: the first
text goes out once it has a few words (or after one interval: a message reading "Al" or a
lone quote until the next edit is worse than a moment more of "typing"), then at most one
edit per interval, never an unchanged text. Past the platform's length limit the current
message is finished and the answer continues in a new one. Intermediate edits are
disposable (on a 429 they are skipped until the pause is over, after failures for longer
each time); the final text is not: it is retried until delivered or until `give_up_after`
has passed.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from adapters.base import (
    Adapter,
    MessageTooLong,
    PlatformError,
    RateLimited,
    Refused,
)
from bot.i18n import N_, Texts, english
from bot.types import ConversationKey, MessageRef, Progress, Source

log = logging.getLogger(__name__)

T = TypeVar("T")

TYPING_EVERY = 4.0  # Telegram's typing action lasts ~5 s; Slack's status until replaced.
THINKING = N_("💭 Thinking…")
MIN_PIECE = 64  # never split messages smaller than this, however small the limit gets
FIRST_WORDS = 3  # the first text goes out once it has this many whole words...
FIRST_CHARS = 12  # ...or this many characters (scripts without spaces: Chinese, Japanese)
MAX_STREAM_BACKOFF = 30.0  # seconds between streaming updates while the platform fails


class DeliveryFailed(Exception):
    """The platform kept failing past the bound; the answer could not be delivered."""


class _Outcome(enum.Enum):
    DONE = "done"  # the platform shows the text
    SKIPPED = "skipped"  # a streaming update was dropped (rate limited); try later
    RESPLIT = "resplit"  # the platform wants it otherwise (shorter, or as a new message)


@dataclass(slots=True)
class _Message:
    ref: MessageRef | None = None
    shown: str = ""  # what the platform currently shows
    final: bool = False
    replaced: bool = False  # an edit was refused and a new message was sent instead


def split_point(text: str, limit: int) -> int:
    """Where to cut `text` so the first piece is at most `limit` characters: after the last
    newline or space in the second half of the window if there is one, else hard at `limit`."""
    if len(text) <= limit:
        return len(text)
    window = text[:limit]
    for sep in ("\n\n", "\n", " "):
        cut = window.rfind(sep)
        if cut >= limit // 2:
            return cut + len(sep)
    # Don't split a surrogate pair or a combining sequence start; Python strs are code points,
    # so a plain cut never splits a character.
    return limit


class StreamFlusher:
    def __init__(
        self,
        adapter: Adapter,
        key: ConversationKey,
        *,
        reply_to: str = "",
        give_up_after: float = 120.0,
        on_edit: Callable[[], None] | None = None,
        clock: Callable[[], float] | None = None,
        texts: Texts | None = None,
    ) -> None:
        # The asker's language, for the texts the core and the flusher show around the answer.
        self.texts = texts or english()
        self._adapter = adapter
        self._key = key
        self._reply_to = reply_to
        self._give_up_after = give_up_after
        self._on_edit = on_edit
        # The event loop's clock by default: the one its waits (sleep, wait_for) run on, so
        # the cadence is one timeline, and a test on a fast-forwarded loop moves both.
        self._clock = clock or asyncio.get_running_loop().time
        self._limit = adapter.limits.max_message_len
        self._text = ""  # the answer so far
        self._sources: tuple[Source, ...] = ()  # shown under the final text's last message
        self._footer = 0  # characters the rendered sources take in the last message
        self._status = ""  # shown while there is no text yet ("queued (position 2)")
        self._frozen = 0  # offset in _text where the live message starts
        self._messages: list[_Message] = []
        self._next_edit_at = 0.0
        self._first_text_at: float | None = None
        self._text_shown = False  # some of the answer's own text (not a status) is out
        self._failures = 0  # streaming updates failed in a row (PlatformError)
        self._progress = Progress()
        self._progress_sent = Progress()
        self._wake = asyncio.Event()
        self._finishing = asyncio.Event()
        self._lock = asyncio.Lock()
        self._pump_task: asyncio.Task[None] | None = None
        self._typing_task: asyncio.Task[None] | None = None

    # -- feeding -------------------------------------------------------------------------

    def start(self) -> None:
        if self._pump_task is None:
            self._pump_task = asyncio.create_task(self._pump(), name=f"flusher {self._key}")

    def status(self, text: str) -> None:
        """Show `text` (e.g. a queue position) until the answer starts."""
        if text != self._status:
            self._status = text
            self._wake.set()

    def start_typing(self) -> None:
        """Keep the platform's typing indicator on until the first text arrives (and turn a
        queue placeholder into a "thinking" one)."""
        if self._status:
            self.status(self.texts.gettext(THINKING))
        if self._adapter.shows_typing and self._typing_task is None and not self._text:
            self._typing_task = asyncio.create_task(self._typing())

    def feed(self, text: str) -> None:
        if text:
            if self._first_text_at is None:
                self._first_text_at = self._clock()
            self._text += text
            self._stop_typing()
            self._wake.set()

    def progress(self, info: Progress) -> None:
        self._progress = info
        self._wake.set()

    @property
    def text(self) -> str:
        return self._text

    # -- finishing -----------------------------------------------------------------------

    async def finish(self, final_text: str, sources: Sequence[Source] = ()) -> None:
        """Deliver `final_text` in full (it replaces whatever was streamed), with `sources`
        under its last message, and stop.

        Raises DeliveryFailed if the platform refused it for longer than `give_up_after`.
        """
        self._stop_typing()
        self._finishing.set()
        self._wake.set()
        if self._pump_task is not None:
            await self._pump_task
        if not final_text.startswith(self._text[: self._frozen]):
            # The caller rewrote text that is already in finished messages; keep those and
            # send what differs after them, rather than losing or duplicating anything.
            final_text = self._text[: self._frozen] + final_text[self._frozen :]
        self._text = final_text
        self._sources = tuple(sources)
        if sources:
            # Plus a blank line's worth: the adapter puts the footer under the text.
            self._footer = len(self._adapter.render_sources(sources)) + 2
        deadline = self._clock() + self._give_up_after
        delay = self._next_edit_at - self._clock()
        if delay > 0:  # the final edit keeps the cadence too
            await asyncio.sleep(delay)
        async with self._lock:
            await self._sync(final=True, deadline=deadline)

    async def notice(self, text: str) -> bool:
        """A short separate message after a failed delivery, retried like a final text for
        up to `give_up_after` more: a platform that was down past the bound is often back
        soon after, and one attempt at the moment it is still down would leave the chat
        silent. True if it was delivered."""
        deadline = self._clock() + self._give_up_after
        try:
            await self._call(
                lambda: self._adapter.send(self._key, text, reply_to=self._reply_to, final=True),
                deadline,
            )
        except Exception as exc:
            log.warning("could not post a notice in %s either: %s", self._key, exc)
            return False
        return True

    async def close(self) -> None:
        """Stop background work without delivering anything more (used on cancellation)."""
        self._stop_typing()
        self._finishing.set()
        self._wake.set()
        if self._pump_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump_task

    # -- internals -----------------------------------------------------------------------

    def _stop_typing(self) -> None:
        if self._typing_task is not None:
            self._typing_task.cancel()
            self._typing_task = None

    async def _typing(self) -> None:
        while True:
            try:
                await self._adapter.typing(self._key, reply_to=self._reply_to)
            except Exception as exc:  # a missing indicator is cosmetic
                log.debug("typing indicator failed: %s", exc)
            await asyncio.sleep(TYPING_EVERY)

    def _hold(self) -> float:
        """Seconds to keep a too-short first text back (more words may come meanwhile)."""
        if self._text_shown or self._first_text_at is None or _enough(self._text):
            return 0.0
        interval = self._adapter.edit_interval(self._key)
        return self._first_text_at + interval - self._clock()

    async def _pump(self) -> None:
        held = False
        while not self._finishing.is_set():
            if not held:
                await self._wake.wait()
            self._wake.clear()
            if self._finishing.is_set():
                return
            hold = self._hold()
            held = hold > 0
            if held:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), hold)  # more text, or finish()
                continue
            delay = self._next_edit_at - self._clock()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._finishing.wait(), delay)
                if self._finishing.is_set():
                    return
            async with self._lock:
                try:
                    await self._sync(final=False, deadline=None)
                except Exception as exc:  # only the final delivery is owed; keep streaming
                    log.warning("streaming update failed for %s: %s", self._key, exc)

    async def _sync(self, *, final: bool, deadline: float | None) -> None:
        """Bring the platform's messages in line with the text (splitting past the limit)."""
        while True:
            live = self._text[self._frozen :]
            if not self._text and not final:
                live = self._status
            room = max(MIN_PIECE, self._limit - (self._footer if final else 0))
            if len(live) > room:
                cut = split_point(live, room)
                outcome = await self._show(live[:cut], final=True, deadline=deadline, last=False)
                if outcome is _Outcome.SKIPPED:
                    return
                if outcome is _Outcome.DONE:
                    self._frozen += cut
                    self._messages.append(_Message())
                continue
            if (final or live) and (
                await self._show(live, final=final, deadline=deadline) is _Outcome.RESPLIT
            ):
                continue
            if self._text:
                self._text_shown = True
            break
        if self._adapter.shows_progress and self._progress != self._progress_sent:
            self._progress_sent = self._progress
            await self._adapter.progress(self._key, self._current().ref, self._progress)

    def _current(self) -> _Message:
        if not self._messages:
            self._messages.append(_Message())
        return self._messages[-1]

    async def _show(
        self, text: str, *, final: bool, deadline: float | None, last: bool = True
    ) -> _Outcome:
        """Make the live message show `text` (with the sources if it is the final text's
        `last` message)."""
        message = self._current()
        if text == message.shown and (message.final or not final):
            return _Outcome.DONE
        if not text.strip():
            text = "…"  # platforms refuse empty messages
        ref = message.ref
        sources = self._sources if final and last else ()
        try:
            if ref is None:
                message.ref = await self._call(
                    lambda: self._adapter.send(
                        self._key, text, reply_to=self._reply_to, final=final, sources=sources
                    ),
                    deadline,
                )
            else:
                await self._call(
                    lambda: self._adapter.edit(ref, text, final=final, sources=sources),
                    deadline,
                )
        except RateLimited as exc:  # only raised for disposable updates (deadline None)
            self._next_edit_at = self._clock() + exc.retry_after
            return _Outcome.SKIPPED
        except Refused as exc:
            if ref is None or message.replaced:
                raise DeliveryFailed(f"{self._key} refused the message: {exc}") from exc
            # The message is gone (deleted by someone?): post the text as a new one.
            log.info("editing a message in %s was refused (%s); sending a new one", self._key, exc)
            message.ref, message.shown, message.replaced = None, "", True
            return _Outcome.RESPLIT
        except MessageTooLong as exc:
            if len(text) <= MIN_PIECE:
                raise DeliveryFailed(f"{self._key} refuses even short messages: {exc}") from exc
            # The platform counts differently than we do (markup, UTF-16 units): shrink.
            self._limit = max(MIN_PIECE, int(min(self._limit, len(text)) * 0.75))
            return _Outcome.RESPLIT
        message.shown = text
        message.final = final
        self._failures = 0
        if self._on_edit is not None:
            self._on_edit()
        self._next_edit_at = self._clock() + self._adapter.edit_interval(self._key)
        return _Outcome.DONE

    async def _call(self, op: Callable[[], Awaitable[T]], deadline: float | None) -> T:
        """Run a send/edit. Streaming updates (deadline None) get one try and surface a
        RateLimited; the final text waits out rate limits and retries transient errors."""
        backoff = 0.5
        while True:
            try:
                return await op()
            except RateLimited as exc:
                if deadline is None:
                    raise
                wait = exc.retry_after
            except (MessageTooLong, Refused):
                raise
            except PlatformError as exc:
                if deadline is None:
                    # Disposable: skip it, and wait longer after each failure in a row.
                    self._failures += 1
                    pause = min(0.5 * 2 ** (self._failures - 1), MAX_STREAM_BACKOFF)
                    if self._failures == 1:
                        log.warning(
                            "streaming to %s failed (%s); backing off from %.1fs",
                            self._key,
                            exc,
                            pause,
                        )
                    raise RateLimited(pause, f"platform error: {exc}") from exc
                wait = backoff
                backoff = min(backoff * 2, 10.0)
                log.warning("delivery to %s failed (%s); retrying in %.1fs", self._key, exc, wait)
            if self._clock() + wait > deadline:
                raise DeliveryFailed(f"gave up delivering to {self._key}")
            await asyncio.sleep(wait)


def _enough(text: str) -> bool:
    """Is `text` worth showing as the start of an answer (a few whole words)?"""
    whole = len(text.split()) - (0 if text[-1:].isspace() else 1)
    return whole >= FIRST_WORDS or len(text.strip()) >= FIRST_CHARS
