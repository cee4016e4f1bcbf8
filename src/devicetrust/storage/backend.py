"""Opening the backend (SQLite or PostgreSQL), migrating it, and handing out transactions."""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import alembic.command
import alembic.config
import alembic.util
import sqlalchemy as sa
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import URL, Connection, Engine

from devicetrust.errors import ConfigError
from devicetrust.storage.repositories import Clock, Store
from devicetrust.types.clock import utcnow

__all__ = [
    "IDLE_PING_SECONDS",
    "MIGRATIONS_DIR",
    "MIGRATION_LOCK_KEY",
    "POOL_MAX_OVERFLOW",
    "POOL_SIZE",
    "POOL_TIMEOUT",
    "POSTGRES_CONNECT_TIMEOUT",
    "SQLITE_BUSY_TIMEOUT",
    "Backend",
]

MIGRATIONS_DIR = Path(__file__).parent / "migrations"

#: how long a SQLite writer waits for another writer's lock before "database is locked"
SQLITE_BUSY_TIMEOUT = timedelta(seconds=10)
#: how long opening a PostgreSQL connection may take before the backend counts as unreachable
POSTGRES_CONNECT_TIMEOUT = timedelta(seconds=10)
#: connections kept open per process, and the extra ones allowed under bursts
POOL_SIZE = 10
POOL_MAX_OVERFLOW = 20
#: how long a request waits for a free pooled connection
POOL_TIMEOUT = timedelta(seconds=30)
#: a pooled PostgreSQL connection unused for longer than this is pinged before it is handed out
IDLE_PING_SECONDS = 1.0
#: pg_advisory_xact_lock key that serialises migrations of auth servers starting together ("devtrust")
MIGRATION_LOCK_KEY = 0x6465767472757374


def _one_line(exc: BaseException) -> str:
    return re.sub(r"\s+", " ", str(exc)).strip()


class Backend:
    """The storage backend: an engine plus the schema migrations. Thread safe; one per process."""

    def __init__(self, engine: Engine, *, clock: Clock = utcnow) -> None:
        self._engine = engine
        self._clock = clock

    @classmethod
    def open(cls, url: str, *, clock: Clock = utcnow) -> Backend:
        """Connect to ``sqlite:///path.db`` or ``postgresql://user@host:port/db?…``; ConfigError if it fails.

        ``clock`` stamps created/updated times (tests pass a fixed one).
        """
        try:
            parsed = sa.make_url(url)
        except sa.exc.ArgumentError:
            raise ConfigError("invalid storage URL: expected sqlite:///path or postgresql://…") from None
        backend_name = parsed.get_backend_name()
        if backend_name == "sqlite":
            engine, where = _sqlite_engine(parsed)
        elif backend_name in ("postgresql", "postgres"):
            engine, where = _postgres_engine(parsed)
        else:
            raise ConfigError(f'unsupported storage URL scheme "{parsed.drivername}": use sqlite or postgresql')
        try:
            with engine.connect():
                pass
        except sa.exc.DBAPIError as exc:
            engine.dispose()
            reason = _one_line(exc.orig) if exc.orig is not None else _one_line(exc)
            raise ConfigError(f"cannot open {where}: {reason}") from exc
        return cls(engine, clock=clock)

    @property
    def dialect_name(self) -> str:
        """The SQLAlchemy dialect: ``sqlite`` or ``postgresql``."""
        return self._engine.dialect.name

    def migrate(self) -> None:
        """Bring the schema to the newest revision. Idempotent; safe when several servers start at once."""
        config = alembic.config.Config()
        # ConfigParser would read "%" as interpolation
        config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
        config.set_main_option("path_separator", "os")
        with self._engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                # SQLite's BEGIN IMMEDIATE already serialises; PostgreSQL would race on CREATE TABLE
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
            config.attributes["connection"] = conn
            try:
                alembic.command.upgrade(config, "head")
            except alembic.util.CommandError as exc:
                # typically a schema written by a newer devicetrust (unknown revision)
                raise ConfigError(f"cannot migrate the storage schema: {_one_line(exc)}") from exc

    def current_revision(self) -> str | None:
        """The schema revision the database is at (None before the first migrate)."""
        with self._engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    @contextlib.contextmanager
    def begin(self) -> Iterator[Store]:
        """One transaction: commits when the block ends, rolls back if it raises."""
        with self._engine.begin() as conn:
            yield Store(conn, self._clock)

    @contextlib.contextmanager
    def read(self, *, latest: bool = False) -> Iterator[Store]:
        """A transaction for reading only. On SQLite it takes no write lock, so readers never queue behind
        writers (WAL gives them a snapshot); writing through it is a bug and may fail with "database is
        locked".

        With ``latest``, the reads need no common snapshot, only what is committed when each runs: on PostgreSQL
        each statement then runs on its own, without the round trips of BEGIN and COMMIT (what a device
        ceremony reads before every session)."""
        with self._engine.connect() as conn:
            conn.execution_options(devicetrust_read_only=True)
            if latest and conn.dialect.name == "postgresql":
                conn.execution_options(isolation_level="AUTOCOMMIT")
            with conn.begin():
                yield Store(conn, self._clock)

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _sqlite_engine(url: URL) -> tuple[Engine, str]:
    database = url.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        raise ConfigError("the SQLite storage URL must name a database file: sqlite:///absolute/path.db")
    path = Path(database)
    if not path.parent.is_dir():
        raise ConfigError(f'the directory of the SQLite database "{path}" does not exist')
    # The file holds CA private keys: create it private (SQLite gives -wal/-shm the same mode).
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    engine = sa.create_engine(
        url.set(drivername="sqlite+pysqlite"),
        pool_size=POOL_SIZE,
        max_overflow=POOL_MAX_OVERFLOW,
        pool_timeout=POOL_TIMEOUT.total_seconds(),
        # the most recently used connection first: it is warm, and the others may idle out
        pool_use_lifo=True,
    )
    sa.event.listen(engine, "connect", _sqlite_on_connect)
    sa.event.listen(engine, "begin", _sqlite_on_begin)
    return engine, f'the SQLite database "{path}"'


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # SQLAlchemy's documented pysqlite recipe: the driver stops issuing BEGIN itself; _sqlite_on_begin does.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        # busy_timeout first: switching to WAL needs a lock another connection may hold
        cursor.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT.total_seconds() * 1000)}")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA journal_mode = WAL")
        # In WAL mode NORMAL never corrupts the database; a power cut may lose the last commits, not the file.
        # FULL would fsync on every commit, which dominates the cost of a ceremony.
        cursor.execute("PRAGMA synchronous = NORMAL")
    finally:
        cursor.close()


def _sqlite_on_begin(conn: Connection) -> None:
    # Take the write lock up front: a deferred transaction that reads, then writes, cannot wait for the lock
    # (SQLITE_BUSY at once, busy_timeout or not), so concurrent writers would fail instead of queueing.
    # Read-only transactions (Backend.read) need no lock.
    read_only = conn.get_execution_options().get("devicetrust_read_only", False)
    # on the driver's connection: a transaction is begun for every request, and SQLAlchemy's statement
    # machinery would cost more than the BEGIN itself
    driver = conn.connection.driver_connection
    if driver is None:  # pragma: no cover - SQLAlchemy begins only on an open connection
        raise sa.exc.ResourceClosedError("this connection is closed")
    driver.execute("BEGIN" if read_only else "BEGIN IMMEDIATE")


def _postgres_engine(url: URL) -> tuple[Engine, str]:
    url = url.set(drivername="postgresql+psycopg")
    where = f"PostgreSQL at {url.host or 'localhost'}:{url.port or 5432}"
    connect_args: dict[str, int] = {}
    if "connect_timeout" not in url.query:
        connect_args["connect_timeout"] = int(POSTGRES_CONNECT_TIMEOUT.total_seconds())
    engine = sa.create_engine(
        url,
        connect_args=connect_args,
        pool_size=POOL_SIZE,
        max_overflow=POOL_MAX_OVERFLOW,
        pool_timeout=POOL_TIMEOUT.total_seconds(),
        # the most recently used connection first: it is warm, and the others may idle out
        pool_use_lifo=True,
    )
    # A restarted or failed-over server leaves dead pooled connections behind: one idle for a while is pinged
    # before use (a dead one is replaced). One in constant use is not (a ping per transaction would cost a round
    # trip each time); if it died, its transaction fails and SQLAlchemy discards every older pooled connection.
    sa.event.listen(engine, "checkout", _ping_if_idle)
    sa.event.listen(engine, "checkin", _note_checkin)
    return engine, where


def _note_checkin(_dbapi_connection: Any, record: Any) -> None:
    record.info["devicetrust_checked_in"] = time.monotonic()


def _ping_if_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
    last_used = record.info.get("devicetrust_checked_in")
    if last_used is None or time.monotonic() - last_used < IDLE_PING_SECONDS:
        return
    try:
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        # the ping began a transaction: end it, so the connection is handed out idle (a reader that runs each
        # statement on its own could not switch to autocommit inside one)
        dbapi_connection.rollback()
    except Exception as exc:
        # The pool discards the connection and checks out another (or opens a new one).
        raise sa.exc.DisconnectionError(str(exc)) from exc
