"""Storage: SQLAlchemy Core over SQLite or PostgreSQL, Alembic migrations, repositories (docs/architecture.md, Storage).

Stores plain values (str, bytes, datetimes, JSON bodies) and knows nothing of ``devicetrust.types``::

    backend = Backend.open(url)
    backend.migrate()
    with backend.begin() as store:  # one transaction
        store.resources.create("role", "access", body)
"""
