"""One place that turns a database URL into a correctly configured async engine.

SQLite needs per-connection settings that are easy to forget and dangerous to miss:
foreign keys are off by default (so ON DELETE CASCADE would silently not happen), the
default rollback journal blocks readers during writes, and without a busy timeout a second
process gets "database is locked" at once instead of waiting its turn. A `connect` event
listener applies them to every new connection.

PostgreSQL URLs may carry `?schema=NAME`: the connection's search_path is set to that schema
(created if missing), which lets several installations, or test runs, share one database.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

BUSY_TIMEOUT_MS = 30_000
"""How long an SQLite writer waits for another process's write lock before failing."""


def is_sqlite(url: str | URL) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def is_memory_sqlite(url: URL) -> bool:
    database = url.database or ""
    return database in ("", ":memory:") or "mode=memory" in str(url)


def split_schema(url: str | URL) -> tuple[URL, str | None]:
    """Remove our own `schema` query parameter (PostgreSQL only) from the URL."""
    parsed = make_url(url)
    schema = parsed.query.get("schema")
    if schema is None or parsed.get_backend_name() != "postgresql":
        return parsed, None
    if not isinstance(schema, str):
        raise ValueError("the database URL has more than one ?schema=")
    return parsed.difference_update_query(["schema"]), schema


def create_db_engine(url: str | URL, *, foreign_keys: bool = True) -> AsyncEngine:
    """An AsyncEngine for `url`; SQLite files get their directory created.

    `foreign_keys=False` is only for migrations: SQLite's batch ALTER recreates tables and
    with foreign keys on, dropping the old `conversations` would cascade into `turns`.
    """
    parsed, schema = split_schema(url)
    kwargs: dict[str, Any] = {"pool_pre_ping": parsed.get_backend_name() == "postgresql"}
    if parsed.get_backend_name() == "sqlite":
        if is_memory_sqlite(parsed):
            kwargs["poolclass"] = StaticPool  # one shared connection, or each sees its own DB
        elif parsed.database:
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": BUSY_TIMEOUT_MS / 1000}
    elif schema is not None:
        kwargs["connect_args"] = {"server_settings": {"search_path": schema}}
    engine = create_async_engine(parsed, **kwargs)
    if parsed.get_backend_name() == "sqlite":
        _install_sqlite_pragmas(engine, foreign_keys=foreign_keys)
    return engine


def _install_sqlite_pragmas(engine: AsyncEngine, *, foreign_keys: bool) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            # busy_timeout first: switching to WAL needs a lock another process may hold.
            cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            _switch_to_wal(cursor)
            # FULL: a commit survives power loss too; one fsync per turn is nothing here.
            cursor.execute("PRAGMA synchronous = FULL")
            cursor.execute(f"PRAGMA foreign_keys = {'ON' if foreign_keys else 'OFF'}")
            # Deleted rows are overwritten, not left in free space (/forget, /reset, expiry);
            # many builds default to this already, not all.
            cursor.execute("PRAGMA secure_delete = ON")
        finally:
            cursor.close()


def _switch_to_wal(cursor: Any) -> None:
    """`PRAGMA journal_mode = WAL`, retried while another connection writes.

    On a database still in rollback-journal mode (a new file), the switch fails at once with
    "database is locked" while another connection holds a write lock: SQLite does not call
    the busy handler for it. Three processes creating one database together hit that. The
    mode is stored in the file, so once any of them has switched, the others just see WAL.
    The short sleeps block only while connecting, and only in that race.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except Exception as exc:  # the driver's OperationalError, wrapped by the adapter
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.02)
