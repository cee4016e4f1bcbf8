"""Backend: opening URLs, migrations, transactions, time zones."""

from __future__ import annotations

import stat
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import alembic.command
import alembic.config
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from tests.storage.conftest import START, FakeClock
from tests.storage.raw import raw_engine

from devicetrust.errors import ConfigError, NotFoundError
from devicetrust.storage.backend import MIGRATIONS_DIR, Backend
from devicetrust.storage.schema import metadata
from devicetrust.types.mdm_parts import spec_fingerprint

TABLES = {
    "alembic_version",
    "audit_events",
    "certificate_authorities",
    "cluster_state",
    "devices",
    "locks",
    "pending_ceremonies",
    "rate_limits",
    "resources",
    "sessions",
    "spent_ceremonies",
    "state_generation",
    "tokens",
    "users",
}


def _tables(backend_url: str) -> set[str]:
    with raw_engine(backend_url) as engine, engine.connect() as conn:
        return set(sa.inspect(conn).get_table_names())


def test_migrate_creates_the_schema_and_twice_is_a_no_op(backend_url: str) -> None:
    with Backend.open(backend_url) as backend:
        assert backend.current_revision() is None
        backend.migrate()
        assert backend.current_revision() == "0005"
        with backend.begin() as store:
            store.cluster.set("name", "kept")
        backend.migrate()
        assert backend.current_revision() == "0005"
        with backend.begin() as store:
            assert store.cluster.get("name") == "kept"
    # on PostgreSQL, in the schema named by the URL's search_path and nowhere else
    assert _tables(backend_url) == TABLES


def test_migrated_schema_matches_the_table_metadata(backend: Backend, backend_url: str) -> None:
    with raw_engine(backend_url) as engine, engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, metadata) == []


def _downgrade(backend_url: str, revision: str) -> None:
    config = alembic.config.Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    with raw_engine(backend_url) as engine, engine.begin() as conn:
        config.attributes["connection"] = conn
        alembic.command.downgrade(config, revision)


def test_devices_written_before_0005_get_their_fingerprint_from_their_document(
    backend: Backend, backend_url: str, raw_sql: Callable[[str], None]
) -> None:
    _downgrade(backend_url, "0004")
    assert backend.current_revision() == "0004"
    raw_sql(
        "INSERT INTO devices (id, os_type, asset_tag, enroll_status, owner, source_name, source_origin, external_id,"
        " body, revision, created, updated) VALUES ('d1', 'macos', 'OLD1', 'not_enrolled', '', 'jamf', 'jamf', '7',"
        ' \'{"spec": {"source": {"name": "jamf", "origin": "jamf"}, "profile": {"model": "m"}}}\','
        " 3, '2026-01-01 00:00:00', '2026-01-01 00:00:00')"
    )
    backend.migrate()
    assert backend.current_revision() == "0005"
    with backend.read() as store:
        (found,) = store.devices.find_fingerprints_by_asset_tag([("macos", "OLD1")])
        body = store.devices.get("d1").body
    assert (found.revision, found.stored) == (3, False)
    assert found.fingerprint == spec_fingerprint(body)
    with backend.begin() as store:
        store.devices.store_fingerprints([found])
    with backend.read() as store:
        assert store.devices.find_fingerprints_by_asset_tag([("macos", "OLD1")]) == [replace(found, stored=True)]


def test_a_schema_newer_than_the_code_is_a_config_error(backend: Backend, raw_sql: Callable[[str], None]) -> None:
    raw_sql("UPDATE alembic_version SET version_num = '9999'")
    with pytest.raises(ConfigError, match=r"cannot migrate the storage schema.*9999"):
        backend.migrate()


def test_dialect_name(backend: Backend, backend_url: str) -> None:
    expected = "sqlite" if backend_url.startswith("sqlite") else "postgresql"
    assert backend.dialect_name == expected


def test_transaction_rolls_back_every_row_on_error(backend: Backend) -> None:
    expires = START + timedelta(hours=1)
    with pytest.raises(RuntimeError, match="boom"), backend.begin() as store:
        store.users.create("alice", {"roles": ["access"]}, "hash")
        store.sessions.create("s1", "alice", "user", {}, expires)
        store.resources.create("role", "access", {"spec": {}})
        store.tokens.create("t1", "node", "", {}, expires, single_use=False)
        store.pending.create("p1", "enroll", "dev", {}, expires)
        store.audit.append("user.create", "T1002I", START, "admin", True, {})
        store.cluster.set("name", "x")
        store.cas.insert_if_absent("user", {"key": "k"})
        store.rate_limits.hit("login:alice", START, timedelta(minutes=1))
        raise RuntimeError("boom")
    with backend.begin() as store:
        assert store.users.list() == []
        assert store.resources.list("role") == []
        assert store.tokens.list(START) == []
        with pytest.raises(NotFoundError):
            store.sessions.get_valid("s1", START)
        with pytest.raises(NotFoundError):
            store.pending.consume("p1", "enroll", START)
        assert store.audit.search() == []
        assert store.cluster.get("name") is None
        assert store.cas.get("user") is None
        assert store.rate_limits.count("login:alice", START, timedelta(minutes=1)) == 0


def test_times_come_back_timezone_aware_utc(backend: Backend, clock: FakeClock) -> None:
    with backend.begin() as store:
        created = store.resources.create("role", "r", {})
        event = store.audit.append("x", "X", START.astimezone(timezone(timedelta(hours=2))), "u", True, {})
    with backend.begin() as store:
        again = store.resources.get("role", "r")
        (stored_event,) = store.audit.search()
    assert created.created == again.created == START
    assert again.created.utcoffset() == timedelta(0)
    assert event.time == stored_event.time == START
    assert stored_event.time.utcoffset() == timedelta(0)


def test_naive_datetimes_are_refused(backend: Backend) -> None:
    with pytest.raises(sa.exc.StatementError, match="naive datetime"), backend.begin() as store:
        store.tokens.list(datetime(2025, 1, 1))


# ------------------------------------------------------------------------------------------- opening


def test_sqlite_file_is_private_and_in_wal_mode_with_foreign_keys(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    with Backend.open(f"sqlite:///{path}") as backend:
        backend.migrate()
        with backend.begin() as store:
            store.cluster.set("k", "v")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    engine = sa.create_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"
    finally:
        engine.dispose()


def test_user_session_needs_the_user(backend: Backend) -> None:
    with pytest.raises(NotFoundError, match='user "ghost" not found'), backend.begin() as store:
        store.sessions.create("s", "ghost", "user", {}, START + timedelta(hours=1))


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://root@localhost/db", 'unsupported storage URL scheme "mysql"'),
        ("not a url", "invalid storage URL"),
        ("sqlite://", "must name a database file"),
        ("sqlite:///:memory:", "must name a database file"),
    ],
)
def test_bad_urls_are_config_errors(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Backend.open(url)


def test_sqlite_in_a_missing_directory_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        Backend.open(f"sqlite:///{tmp_path / 'missing' / 'db.sqlite'}")


def test_unreachable_postgres_names_host_and_port_but_not_the_password() -> None:
    # port 1 on loopback: refused at once
    with pytest.raises(ConfigError) as caught:
        Backend.open("postgresql://alice:s3cret-pw@127.0.0.1:1/db?connect_timeout=2")
    message = str(caught.value)
    assert message.startswith("cannot open PostgreSQL at 127.0.0.1:1: ")
    assert "s3cret-pw" not in message
    assert "\n" not in message


def test_clock_stamps_created_and_updated(backend: Backend, clock: FakeClock) -> None:
    with backend.begin() as store:
        store.users.create("alice", {}, None)
    clock.advance(timedelta(minutes=5))
    with backend.begin() as store:
        updated = store.users.update("alice", {"x": 1})
    assert updated.created == START
    assert updated.updated == START + timedelta(minutes=5)
