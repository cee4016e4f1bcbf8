"""A SQLAlchemy engine on a storage URL past the Backend (its own connections), as a script or a bug would use it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa


@contextmanager
def raw_engine(storage_url: str) -> Iterator[sa.Engine]:
    """An engine on ``storage_url`` (``postgresql://`` through psycopg, as the Backend uses), disposed after."""
    url = sa.make_url(storage_url)
    if url.get_backend_name() == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    engine = sa.create_engine(url)
    try:
        yield engine
    finally:
        engine.dispose()
