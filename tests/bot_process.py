"""The bot as a real child process, for tests that kill it, signal it or restart it.

`BotProcess` starts `python -m bot run` (or any argv, e.g. the Docker image's `edgeqa run`)
with its own environment, waits until `/healthz` answers, and talks to the browser chat over
HTTP like a browser would. The port is 0 and read back from the log line the HTTP server
prints, so no two tests (or test runs) ever race for a port. The log (stderr) goes to a file
that tests can wait on ("shutting down ...").

Shared by tests/test_crash.py, tests/test_shutdown.py and tests/test_deploy.py.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import aiohttp

from tests.web_support import EventStream

ROOT = Path(__file__).resolve().parent.parent
BROWSER = "browser-crash1"
LISTENING = re.compile(r"HTTP server on http://(\S+):(\d+)")

# Small and fast, like tests/harness.py; a test raises max_tokens for a long answer.
BASE_ENV = {
    "EDGEQA_WEB__PORT": "0",
    "EDGEQA_ENGINE__THREADS": "1",
    "EDGEQA_ENGINE__SLOTS": "2",
    "EDGEQA_ENGINE__CONTEXT_SIZE": "1024",
    "EDGEQA_ENGINE__MAX_TOKENS": "24",
    "EDGEQA_ENGINE__SEED": "7",
    "EDGEQA_BOT__CONTEXT_TOKENS": "768",
    "EDGEQA_BOT__RATE_LIMIT_PER_MINUTE": "0",
    "EDGEQA_WEB__EDIT_INTERVAL": "0.05",
}
# Long enough (~8000 characters, several seconds on the tiny model) to be caught mid-answer.
LONG_ANSWER_ENV = {"EDGEQA_ENGINE__CONTEXT_SIZE": "8192", "EDGEQA_ENGINE__MAX_TOKENS": "8000"}


def clean_environ() -> dict[str, str]:
    """This process's environment without any EDGEQA_ setting a developer may have exported."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEQA_")}
    env["HF_HUB_OFFLINE"] = "1"
    return env


def sqlite_url(db: Path) -> str:
    return f"sqlite+aiosqlite:///{db}"


def bot_env(db: Path, model: Path, **overrides: str) -> dict[str, str]:
    """Environment for `python -m bot run` on the tiny model and the SQLite file `db`."""
    return {
        **clean_environ(),
        **BASE_ENV,
        "EDGEQA_MODEL": str(model),
        "EDGEQA_HISTORY__DATABASE_URL": sqlite_url(db),
        **overrides,
    }


class BotProcess:
    """One run of the bot. Use `async with BotProcess(...) as bot:`; leaving kills what is left."""

    def __init__(
        self,
        env: dict[str, str],
        log: Path,
        *,
        argv: list[str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.env = env
        self.log = log
        self.argv = argv or [sys.executable, "-m", "bot", "run", "--config", os.devnull]
        self.cwd = cwd or ROOT
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.port = 0
        self.session: aiohttp.ClientSession | None = None
        self._log_from = 0

    async def __aenter__(self) -> BotProcess:
        try:
            await self.start()
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    async def start(self, within: float = 60.0) -> None:
        self._log_from = self.log.stat().st_size if self.log.exists() else 0
        self.proc = await asyncio.to_thread(self._spawn)
        deadline = time.monotonic() + within
        while not self.port:
            self._check_alive()
            match = LISTENING.search(self.log_text())
            if match:
                self.port = int(match.group(2))
            elif time.monotonic() > deadline:
                raise AssertionError(f"the bot did not start listening:\n{self.log_text()}")
            else:
                await asyncio.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}"
        self.session = aiohttp.ClientSession(self.url)
        while True:
            self._check_alive()
            with suppress(aiohttp.ClientError):
                async with self.http.get("/healthz") as response:
                    if response.status == 200:
                        return
            if time.monotonic() > deadline:
                raise AssertionError(f"/healthz never answered 200:\n{self.log_text()}")
            await asyncio.sleep(0.05)

    def _spawn(self) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as log:
            return subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def _check_alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"the bot exited with {self.proc.returncode}:\n{self.log_text()}")

    @property
    def http(self) -> aiohttp.ClientSession:
        assert self.session is not None, "not started"
        return self.session

    def log_text(self) -> str:
        """What this run has logged (several runs may share one log file)."""
        if not self.log.exists():
            return ""
        with self.log.open("rb") as log:
            log.seek(self._log_from)
            return log.read().decode(errors="replace")

    # --- signals and exit ----------------------------------------------------------------

    def send(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait_exit(self, within: float = 60.0) -> int:
        assert self.proc is not None
        deadline = time.monotonic() + within
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"the bot did not exit within {within}s:\n{self.log_text()}")
            await asyncio.sleep(0.05)
        return self.proc.returncode

    async def wait_log(self, pattern: str, within: float = 30.0) -> None:
        deadline = time.monotonic() + within
        while not re.search(pattern, self.log_text()):
            if time.monotonic() > deadline:
                raise AssertionError(f"no log line matching {pattern!r}:\n{self.log_text()}")
            await asyncio.sleep(0.02)

    # --- the browser chat ----------------------------------------------------------------

    async def ask(self, thread: str, text: str, browser: str = BROWSER) -> str:
        body = {"browser": browser, "thread": thread, "text": text}
        async with self.http.post("/api/ask", json=body) as response:
            assert response.status == 202, await response.text()
            data: dict[str, str] = await response.json()
            return data["id"]

    async def history(self, thread: str, browser: str = BROWSER) -> dict[str, Any]:
        params = {"browser": browser, "thread": thread}
        async with self.http.get("/api/history", params=params) as response:
            assert response.status == 200, await response.text()
            data: dict[str, Any] = await response.json()
            return data

    @asynccontextmanager
    async def events(self, browser: str = BROWSER) -> AsyncIterator[EventStream]:
        """The event stream of all the browser's threads (as the page opens it)."""
        async with self.http.get("/api/events", params={"browser": browser}) as response:
            assert response.status == 200, await response.text()
            stream = EventStream(response)
            assert (await stream.next())["type"] == "hello"
            yield stream

    async def metric(self, name: str) -> float:
        """A counter or gauge from /metrics (summed over its labels); 0 if not there yet."""
        async with self.http.get("/metrics") as response:
            text = await response.text()
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and line[len(name) : len(name) + 1] in (" ", "{"):
                total += float(line.rsplit(" ", 1)[1])
        return total


async def answer_of(stream: EventStream, question: str) -> list[dict[str, Any]]:
    """The events of one question, once it is done (other threads' events stay in `seen`)."""

    def finished(event: dict[str, Any]) -> bool:
        return event["type"] == "done" and event["question"] == question

    if not any(finished(e) for e in stream.seen):
        await stream.until(finished)
    return [e for e in stream.seen if e.get("question") == question]


def final_text(events: list[dict[str, Any]]) -> str:
    finals = [e["text"] for e in events if e["type"] == "reply" and e["final"]]
    assert len(finals) == 1, events
    return str(finals[0])


def stored_turns(db: Path, thread: str, browser: str = BROWSER) -> list[dict[str, Any]]:
    """The thread's turns straight from the SQLite file, oldest first."""
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute(
            "SELECT t.question, t.answer, t.status, t.prompt_tokens, t.completion_tokens"
            " FROM turns t JOIN conversations c ON c.id = t.conversation_id"
            " WHERE c.platform = 'web' AND c.channel = ? AND c.thread = ? ORDER BY t.id",
            (browser, thread),
        ).fetchall()
    return [dict(row) for row in rows]
