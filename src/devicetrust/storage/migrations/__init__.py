"""Alembic migrations of the storage schema, run by ``Backend.migrate()`` (no alembic.ini needed)."""
