"""Storage tests run on both dialects: SQLite (a file under tmp_path) and PostgreSQL (a fresh schema per test).

PostgreSQL is the server at 127.0.0.1:5432 (trust auth, database ``test``). Missing locally: those variants skip;
missing with CI=true: they fail.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

from devicetrust.storage import Backend

POSTGRES_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
POSTGRES_CONNECT_TIMEOUT_S = 3
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


@pytest.fixture(scope="session")
def postgres_admin() -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    try:
        conn = psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=POSTGRES_CONNECT_TIMEOUT_S)
    except psycopg.OperationalError as err:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL is required in CI: {err}")
        pytest.skip(f"PostgreSQL not reachable: {err}")
    with conn:
        yield conn


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database: a SQLite file, or a PostgreSQL schema of its own (dropped afterwards)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'backend.sqlite'}"
        return
    admin: psycopg.Connection[tuple[object, ...]] = request.getfixturevalue("postgres_admin")
    schema = f"dt_test_{secrets.token_hex(6)}"
    admin.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{POSTGRES_ADMIN_URL}?options=-csearch_path%3D{schema}"
    finally:
        admin.execute(f"DROP SCHEMA {schema} CASCADE")


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
    url = sa.make_url(backend_url)
    if url.get_backend_name() == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    engine = sa.create_engine(url)

    def run(statement: str) -> None:
        with engine.begin() as conn:
            conn.execute(sa.text(statement))

    try:
        yield run
    finally:
        engine.dispose()
