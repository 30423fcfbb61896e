"""Schema creation and upgrades through the Alembic migrations shipped in the package."""

from __future__ import annotations

import asyncio
import fnmatch
import sqlite3
import threading
import tomllib
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from storage.database import create_db_engine
from storage.migrate import current_revision, head_revision, upgrade
from storage.tables import include_object, metadata
from tests.storage_support import key, open_repo

ROOT = Path(__file__).resolve().parent.parent


async def _inspect(url, fn):
    engine = create_db_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(fn)
    finally:
        await engine.dispose()


async def test_upgrade_creates_the_schema_from_an_empty_database(url):
    assert await current_revision(url) is None
    assert await upgrade(url) == head_revision()
    assert await current_revision(url) == head_revision()

    def describe(conn):
        inspector = inspect(conn)
        return {
            "tables": set(inspector.get_table_names()),
            "indexes": {
                i["name"] for t in ("conversations", "turns") for i in inspector.get_indexes(t)
            },
            "fk": inspector.get_foreign_keys("turns")[0]["options"].get("ondelete"),
        }

    found = await _inspect(url, describe)
    assert {"conversations", "turns", "alembic_version"} <= found["tables"]
    assert {
        "ix_conversations_last_active_at",
        "ix_turns_platform_user_id",
        "ix_turns_conversation_id_id",
    } <= found["indexes"]
    assert found["fk"] == "CASCADE"


async def test_running_the_upgrade_again_changes_nothing_and_keeps_data(url):
    async with open_repo(url) as repo:  # start() upgrades
        await repo.append_turn(key(), user_id="U", question="q", answer="a")
    assert await upgrade(url) == head_revision()
    async with open_repo(url) as repo:
        assert [t.question for t in await repo.load_history(key())] == ["q"]


async def test_two_processes_upgrading_at_once_both_succeed(url):
    results = await asyncio.gather(upgrade(url), upgrade(url), upgrade(url))
    assert list(results) == [head_revision()] * 3


async def test_models_and_migrations_describe_the_same_schema(url):
    await upgrade(url)

    def diff(conn):
        context = MigrationContext.configure(conn, opts={"include_object": include_object})
        return compare_metadata(context, metadata)

    assert await _inspect(url, diff) == []


def test_every_migration_file_is_declared_as_package_data():
    """A wheel only ships what [tool.setuptools.package-data] names; a missing pattern
    would install a bot that cannot create its tables."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["storage"]
    package = ROOT / "storage"
    shipped = [
        path.relative_to(package).as_posix()
        for path in (package / "migrations").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    ]
    assert "migrations/env.py" in shipped
    assert any(p.startswith("migrations/versions/") for p in shipped)
    missing = [p for p in shipped if not any(fnmatch.fnmatch(p, pat) for pat in patterns)]
    assert missing == []


async def test_a_new_database_another_process_is_writing_to_still_opens(tmp_path):
    """SQLite refuses the switch to WAL at once (no busy wait) while another connection
    holds a write lock on a rollback-journal database: three bots creating one database
    together failed with "database is locked" now and then."""
    path = tmp_path / "fresh.db"
    locked, release = threading.Event(), threading.Event()

    def writer() -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("CREATE TABLE t (i)")
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t VALUES (1)")
        locked.set()
        release.wait(30)
        conn.execute("COMMIT")
        conn.close()

    thread = threading.Thread(target=writer)
    thread.start()
    assert locked.wait(30)
    threading.Timer(0.3, release.set).start()  # the writer commits while we try to connect
    engine = create_db_engine(f"sqlite+aiosqlite:///{path}")
    try:
        async with engine.connect() as conn:
            mode = (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar()
    finally:
        release.set()
        await engine.dispose()
        thread.join()
    assert mode == "wal"
