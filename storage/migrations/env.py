"""Alembic environment for edgeqa's schema.

Normally storage.migrate hands us an open connection in `config.attributes["connection"]`
(already inside the transaction that serialises upgrades). Run without one (developers'
`python -m storage.migrate revision --autogenerate`), it connects to `sqlalchemy.url` with the
async driver itself. `render_as_batch` lets future migrations ALTER tables on SQLite, which
can only do that by copying the table.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import Connection

from storage.database import create_db_engine
from storage.tables import include_object, metadata

config = context.config


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=True,
        compare_type=True,
        include_object=include_object,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_standalone(url: str) -> None:
    engine = create_db_engine(url, foreign_keys=False)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_configure)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=metadata,
        literal_binds=True,
        render_as_batch=True,
        include_object=include_object,
    )
    with context.begin_transaction():
        context.run_migrations()
else:
    given = config.attributes.get("connection")
    if given is not None:
        _configure(given)
    else:
        url = config.get_main_option("sqlalchemy.url")
        if not url:
            raise RuntimeError("no connection and no sqlalchemy.url for the migrations")
        asyncio.run(_run_standalone(url))
