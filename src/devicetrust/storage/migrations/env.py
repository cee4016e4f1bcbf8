"""Alembic environment: migrates the connection ``Backend.migrate()`` hands over in ``config.attributes``.

Runs inside the caller's transaction, so a failed migration leaves nothing behind (both dialects have
transactional DDL once SQLAlchemy emits BEGIN) and the same engine, URL and search_path are used.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from devicetrust.storage.schema import metadata

connection = context.config.attributes.get("connection")
if not isinstance(connection, Connection):
    raise RuntimeError("run migrations through devicetrust.storage.Backend.migrate(); offline mode is not supported")

context.configure(
    connection=connection,
    target_metadata=metadata,
    # SQLite cannot ALTER most things: autogenerate "move and copy" batch operations for it
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
