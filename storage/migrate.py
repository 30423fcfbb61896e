"""Bring a database schema to the newest revision with the Alembic migrations in this package.

There is no alembic.ini: the configuration is built here, so `edgeqa db upgrade` and
`SqlRepository.start()` work from an installed wheel in any working directory. The
migrations run on a connection we open (async drivers via `run_sync`), inside one
transaction that also serialises concurrent upgrades: `BEGIN IMMEDIATE` on SQLite, a
transaction-scoped advisory lock on PostgreSQL. Two processes starting at once therefore
never both try to create the tables.

For development, `python -m storage.migrate revision -m "what changed" [--autogenerate]`
writes a new revision next to the others (needs EDGEQA_DATABASE_URL for --autogenerate).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from storage.database import create_db_engine, split_schema

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def alembic_config(url: str | URL | None = None) -> Config:
    """An Alembic Config pointing at the migrations inside this package."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    if url is not None:
        rendered = url if isinstance(url, str) else url.render_as_string(hide_password=False)
        config.set_main_option("sqlalchemy.url", rendered.replace("%", "%%"))
    return config


def head_revision() -> str:
    """The newest revision shipped with this version of edgeqa."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


async def upgrade(url: str | URL) -> str:
    """Create or upgrade the schema at `url` to head; returns the revision it is now at."""
    engine = create_db_engine(url, foreign_keys=False)
    try:
        return await upgrade_engine(engine, schema=split_schema(url)[1])
    finally:
        await engine.dispose()


async def current_revision(url: str | URL) -> str | None:
    """The revision the database is at (None for an empty database)."""
    engine = create_db_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(_current)
    finally:
        await engine.dispose()


async def upgrade_engine(engine: AsyncEngine, *, schema: str | None = None) -> str:
    """Upgrade through an existing engine (an in-memory SQLite has no other way in)."""
    async with engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            await _upgrade_sqlite(conn)
        else:
            await _upgrade_postgresql(conn, schema)
        return await conn.run_sync(_current) or ""


async def _upgrade_sqlite(conn: AsyncConnection) -> None:
    # PRAGMA foreign_keys is a no-op inside a transaction, so set it before BEGIN.
    await conn.exec_driver_sql("PRAGMA foreign_keys = OFF")
    await conn.commit()
    await conn.exec_driver_sql("BEGIN IMMEDIATE")  # the write lock, held until commit
    await conn.run_sync(_run_upgrade)
    broken = (await conn.exec_driver_sql("PRAGMA foreign_key_check")).fetchall()
    if broken:
        await conn.rollback()
        raise RuntimeError(f"migration would leave {len(broken)} dangling rows; rolled back")
    await conn.commit()
    await conn.exec_driver_sql("PRAGMA foreign_keys = ON")
    await conn.commit()


async def _upgrade_postgresql(conn: AsyncConnection, schema: str | None) -> None:
    # One transaction: wait for any other process upgrading the same schema, then see its
    # result. PostgreSQL DDL is transactional, CREATE SCHEMA included.
    name = schema or (await conn.execute(text("SELECT current_schema()"))).scalar()
    await conn.execute(
        text("SELECT pg_advisory_xact_lock(hashtext('edgeqa.migrate.' || :name))"),
        {"name": name or "public"},
    )
    if schema is not None:
        quoted = conn.dialect.identifier_preparer.quote_identifier(schema)
        await conn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {quoted}"))
    await conn.run_sync(_run_upgrade)
    await conn.commit()


def _run_upgrade(connection: Connection) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


def _current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def main(argv: list[str] | None = None) -> None:
    """`python -m storage.migrate revision -m MESSAGE [--autogenerate]` for developers."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m storage.migrate")
    sub = parser.add_subparsers(dest="cmd", required=True)
    rev = sub.add_parser("revision", help="write a new migration file")
    rev.add_argument("-m", "--message", required=True)
    rev.add_argument("--autogenerate", action="store_true")
    args = parser.parse_args(argv)
    url = os.environ.get("EDGEQA_DATABASE_URL")
    if args.autogenerate and not url:
        sys.exit("set EDGEQA_DATABASE_URL to a database at head for --autogenerate")
    command.revision(alembic_config(url), message=args.message, autogenerate=args.autogenerate)


if __name__ == "__main__":
    main()
