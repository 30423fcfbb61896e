"""The live part of the browser chat: who watches which thread, and what is still being written.

Stored turns come from the core (`handler.history`); this keeps only what storage does not
have yet — the question being answered and its reply as it grows — so a tab that opens or
reloads mid-answer catches up. An exchange is dropped as soon as its `handle()` task ends (by
then the core has stored the turn) and a thread as soon as nothing runs in it, so memory
follows what is live, not what was ever said. Streams are per browser (its tabs share one
through a SharedWorker, see static/events.js), and every event names its thread.

Every event carries a global sequence number; a page that fetched a snapshot ignores older
events for the same message, which makes "subscribe, then fetch" free of races.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bot.types import ConversationKey, Progress, Source

# A tab that falls this far behind is disconnected; its EventSource reconnects and resyncs.
MAX_BACKLOG = 1000
RECENT = 64  # finished exchanges kept for history reads that overlap their end
NOTICE = "notice-"  # exchange ids of messages that answer no question of this page


class Subscriber:
    """One open event stream: all threads of a browser (`thread` None), or just one."""

    def __init__(self, browser: str, thread: str | None) -> None:
        self.browser = browser
        self.thread = thread
        self._frames: deque[str] = deque()
        self._wake = asyncio.Event()
        self.closed = False

    def push(self, frame: str) -> None:
        if self.closed:
            return
        if len(self._frames) >= MAX_BACKLOG:
            self.close()
            return
        self._frames.append(frame)
        self._wake.set()

    def close(self) -> None:
        self.closed = True
        self._wake.set()

    async def wait(self, seconds: float) -> list[str] | None:
        """The frames pending now (an empty list after `seconds`), or None once closed and
        drained: frames pushed before the close (a cut answer's last text, its `done`) are
        still written, however far behind the page's connection is."""
        if not self._frames and not self.closed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), seconds)
        self._wake.clear()
        if self.closed and not self._frames:
            return None
        frames = list(self._frames)
        self._frames.clear()
        return frames


@dataclass
class Reply:
    id: str
    text: str
    final: bool
    seq: int
    sources: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "text": self.text,
            "final": self.final,
            "seq": self.seq,
            "sources": self.sources,
        }


@dataclass
class Exchange:
    """A question (None for a message the core sent on its own) and the replies to it so far."""

    id: str
    question: str | None
    seq: int
    replies: dict[str, Reply] = field(default_factory=dict)
    progress: dict[str, Any] | None = None
    running: bool = True

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "question": self.question,
            "seq": self.seq,
            "replies": [reply.as_dict() for reply in self.replies.values()],
            "progress": self.progress,
        }


@dataclass
class Thread:
    exchanges: dict[str, Exchange] = field(default_factory=dict)


class LiveState:
    """All live threads of the browser chat, keyed by ConversationKey."""

    def __init__(self) -> None:
        self._threads: dict[ConversationKey, Thread] = {}
        self._subscribers: dict[str, set[Subscriber]] = {}  # browser id -> its streams
        self._finished: deque[tuple[int, ConversationKey, Exchange]] = deque(maxlen=RECENT)
        self._seq = 0

    @property
    def seq(self) -> int:
        """The sequence number of the latest event."""
        return self._seq

    @property
    def thread_count(self) -> int:
        return len(self._threads)

    @property
    def subscriber_count(self) -> int:
        return sum(len(subs) for subs in self._subscribers.values())

    def running(self, key: ConversationKey) -> int:
        thread = self._threads.get(key)
        return 0 if thread is None else sum(ex.running for ex in thread.exchanges.values())

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _thread(self, key: ConversationKey) -> Thread:
        thread = self._threads.get(key)
        if thread is None:
            thread = self._threads[key] = Thread()
        return thread

    def publish(self, key: ConversationKey, event: dict[str, Any]) -> None:
        subscribers = self._subscribers.get(key.channel)
        if not subscribers:
            return
        event["thread"] = key.thread
        frame = "data: " + json.dumps(event, ensure_ascii=False, separators=(",", ":")) + "\n\n"
        for subscriber in list(subscribers):
            if subscriber.thread is None or subscriber.thread == key.thread:
                subscriber.push(frame)
                if subscriber.closed:
                    self.unsubscribe(subscriber)

    # --- subscribers ---------------------------------------------------------------------

    def subscribe(self, browser: str, thread: str | None = None) -> Subscriber:
        subscriber = Subscriber(browser, thread)
        self._subscribers.setdefault(browser, set()).add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        subscribers = self._subscribers.get(subscriber.browser)
        if subscribers is not None:
            subscribers.discard(subscriber)
            if not subscribers:
                del self._subscribers[subscriber.browser]

    def close_all(self) -> None:
        for subscribers in list(self._subscribers.values()):
            for subscriber in subscribers:
                subscriber.close()
        self._subscribers.clear()

    # --- exchanges -----------------------------------------------------------------------

    def ask(self, key: ConversationKey, question_id: str, text: str) -> None:
        seq = self._next_seq()
        self._thread(key).exchanges[question_id] = Exchange(question_id, text, seq)
        self.publish(key, {"type": "question", "id": question_id, "text": text, "seq": seq})

    def finish(self, key: ConversationKey, question_id: str, *, command: bool) -> None:
        """The question's handle() returned: storage has the turn, the buffer can go (after a
        short stay in `_finished`, for a history read that raced with the store)."""
        seq = self._next_seq()
        thread = self._threads.get(key)
        exchange = None if thread is None else thread.exchanges.pop(question_id, None)
        if exchange is not None:
            exchange.running = False
            self._finished.append((seq, key, exchange))
        event = {"type": "done", "question": question_id, "command": command, "seq": seq}
        self.publish(key, event)
        self._forget_if_idle(key)

    def attach(self, key: ConversationKey, reply_to: str) -> str:
        """The exchange a new message belongs to: the question it answers, else the question
        being worked on, else a new notice (a message the core sent on its own)."""
        thread = self._thread(key)
        exchange = thread.exchanges.get(reply_to) if reply_to else None
        exchange = exchange or self._current(key)
        if exchange is None:
            seq = self._next_seq()
            exchange = Exchange(f"{NOTICE}{seq}", None, seq, running=False)
            thread.exchanges[exchange.id] = exchange
        return exchange.id

    def reply(
        self,
        key: ConversationKey,
        exchange_id: str,
        reply_id: str,
        text: str,
        *,
        final: bool,
        sources: list[dict[str, Any]] | None = None,
    ) -> None:
        """A message was sent or edited: remember its latest text and tell the tabs."""
        seq = self._next_seq()
        thread = self._threads.get(key)
        exchange = None if thread is None else thread.exchanges.get(exchange_id)
        if exchange is not None:  # else a late edit of a finished exchange: only publish it
            exchange.replies[reply_id] = Reply(reply_id, text, final, seq, sources or [])
        self.publish(
            key,
            {
                "type": "reply",
                "id": reply_id,
                "question": None if exchange_id.startswith(NOTICE) else exchange_id,
                "text": text,
                "final": final,
                "sources": sources or [],
                "seq": seq,
            },
        )
        if (
            thread is not None
            and exchange is not None
            and exchange.question is None
            and all(r.final for r in exchange.replies.values())
        ):
            # Nothing will be stored for a notice and no task ends it: drop it once final.
            thread.exchanges.pop(exchange.id, None)
            self._forget_if_idle(key)

    def typing(self, key: ConversationKey) -> None:
        exchange = self._current(key)
        question = exchange.id if exchange else None
        self.publish(key, {"type": "typing", "question": question, "seq": self._next_seq()})

    def progress(
        self, key: ConversationKey, exchange_id: str, reply_id: str | None, info: Progress
    ) -> None:
        thread = self._threads.get(key)
        exchange = None if thread is None else thread.exchanges.get(exchange_id)
        exchange = exchange or self._current(key)
        event: dict[str, Any] = {
            "type": "progress",
            "question": exchange.id if exchange and exchange.question is not None else None,
            "reply": reply_id,
            "queue_position": info.queue_position,
            "tokens": info.tokens,
            "tokens_per_second": round(info.tokens_per_second, 2),
            "done": info.done,
            "seq": self._next_seq(),
        }
        if exchange is not None:
            exchange.progress = event
        self.publish(key, event)

    def snapshot(self, key: ConversationKey, finished_since: int) -> list[dict[str, Any]]:
        """The thread's live exchanges, plus those finished after sequence `finished_since`
        (their turn may have been stored just too late for a history read that began then)."""
        thread = self._threads.get(key)
        exchanges = [] if thread is None else list(thread.exchanges.values())
        exchanges += [ex for seq, k, ex in self._finished if k == key and seq > finished_since]
        return [ex.as_dict() for ex in sorted(exchanges, key=lambda ex: ex.seq)]

    # --- helpers -------------------------------------------------------------------------

    def _current(self, key: ConversationKey) -> Exchange | None:
        """The question being worked on: the oldest running one still without a final reply."""
        thread = self._threads.get(key)
        if thread is None:
            return None
        for exchange in thread.exchanges.values():
            if exchange.running and not any(r.final for r in exchange.replies.values()):
                return exchange
        return None

    def _forget_if_idle(self, key: ConversationKey) -> None:
        thread = self._threads.get(key)
        if thread is not None and not thread.exchanges:
            del self._threads[key]


def source_dicts(sources: Sequence[Source]) -> list[dict[str, Any]]:
    """Sources as the page and /api/history carry them."""
    return [
        {
            "number": s.number,
            "title": s.title,
            "location": s.location,
            "url": s.url if s.url.lower().startswith(("http://", "https://")) else "",
            "heading": s.heading,
            "score": round(s.score, 4),
        }
        for s in sources
    ]
