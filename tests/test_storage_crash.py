"""A process killed with SIGKILL while writing leaves a consistent SQLite database.

A child process appends turns as fast as it can (each turn carries its own checksum: its
number and the length of its answer) and reports every commit. It is killed mid-stream,
several times; afterwards the database must pass integrity_check, hold every turn the child
reported as committed, and contain no half-written turn.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from bot.types import ConversationKey
    from storage.sql import SqlRepository

    def size(i):
        return 1 + (i * 7919) % 200_000  # up to 200 KB, so writes take a while

    async def main(url, start):
        repo = SqlRepository(url)
        await repo.start()
        i = start
        while True:
            key = ConversationKey("slack", "T", f"C{i % 3}", "")
            await repo.append_turn(
                key, user_id="U", question=f"q{i}", answer="x" * size(i),
                prompt_tokens=i, completion_tokens=size(i),
            )
            print(i, flush=True)
            i += 1

    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
    """
)


def _size(i: int) -> int:
    return 1 + (i * 7919) % 200_000


def _write_until_killed(db: Path, start: int, commits: int) -> list[int]:
    """Run the child until it has reported `commits` commits, SIGKILL it, return them."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, f"sqlite+aiosqlite:///{db}", str(start)],
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    done: list[int] = []
    try:
        assert child.stdout is not None
        for line in child.stdout:
            done.append(int(line))
            if len(done) >= commits:
                break
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    assert len(done) >= commits, "the writer died on its own"
    return done


@pytest.mark.timeout(180)
def test_sigkill_mid_write_leaves_every_turn_whole(tmp_path):
    db = tmp_path / "crash.db"
    committed: list[int] = []
    start = 0
    for _round in range(4):
        committed += _write_until_killed(db, start, commits=25)
        start = committed[-1] + 1000  # the next writer's numbers never collide

    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        rows = conn.execute(
            "SELECT t.question, length(t.answer), t.answer = printf('%.*c', length(t.answer), 'x'),"
            " t.prompt_tokens, t.completion_tokens, t.created_at <= c.last_active_at"
            " FROM turns t JOIN conversations c ON c.id = t.conversation_id"
        ).fetchall()
        orphans = conn.execute(
            "SELECT count(*) FROM turns WHERE conversation_id NOT IN (SELECT id FROM conversations)"
        ).fetchone()
    assert orphans == (0,)
    stored = set()
    for question, length, all_x, number, completion, in_order in rows:
        assert question == f"q{number}"
        assert length == completion == _size(number)
        assert all_x == 1
        assert in_order == 1
        stored.add(number)
    assert set(committed) <= stored  # nothing reported as committed was lost
