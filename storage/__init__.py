"""Conversation history: SQLAlchemy tables, the SQL repository, Alembic migrations, expiry.

Import what you need from the submodules (`storage.sql.SqlRepository`,
`storage.migrate.upgrade`, `storage.pruning.schedule_pruning`); importing this package
itself stays cheap for code that only needs the `storage.base` protocol.
"""
