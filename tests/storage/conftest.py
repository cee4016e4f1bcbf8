"""Storage tests run on both dialects: SQLite (a file under tmp_path) and PostgreSQL (a fresh schema per test).

PostgreSQL is the server at 127.0.0.1:5432 (trust auth, database ``test``). Missing locally: those variants skip;
missing with CI=true: they fail.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from tests.storage.raw import raw_engine

from devicetrust.storage.backend import Backend

#: a fixed, microsecond-bearing instant, so round trips that drop precision or time zones show
START = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


class FakeClock:
    def __init__(self, now: datetime = START) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def backend(backend_url: str, clock: FakeClock) -> Iterator[Backend]:
    """A migrated backend whose created/updated stamps come from ``clock``."""
    opened = Backend.open(backend_url, clock=clock)
    try:
        opened.migrate()
        yield opened
    finally:
        opened.close()


@pytest.fixture
def raw_sql(backend_url: str) -> Iterator[Callable[[str], None]]:
    """Run one statement past the repositories (its own engine and transaction), as a bug or a script would."""
    with raw_engine(backend_url) as engine:

        def run(statement: str) -> None:
            with engine.begin() as conn:
                conn.execute(sa.text(statement))

        yield run
