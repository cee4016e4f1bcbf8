"""The ceremony's statements on the driver's cursor (storage/driver.py) read and write what SQLAlchemy's own
execution would: times in UTC to the microsecond whatever zone they came in, JSON documents, booleans; on both
dialects."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from tests.storage.raw import raw_engine

from devicetrust.storage import schema
from devicetrust.storage.backend import Backend
from devicetrust.storage.driver import DriverStatement, JsonText
from devicetrust.storage.records import AuditEntry
from devicetrust.storage.repositories import Store

#: an instant with microseconds, given in a zone two hours east of UTC
EAST = timezone(timedelta(hours=2))
INSTANT = datetime(2026, 3, 1, 14, 30, 5, 654321, tzinfo=EAST)


def test_a_spent_ceremony_reads_back_the_same_through_both_paths(backend: Backend, backend_url: str) -> None:
    with backend.begin() as store:
        store.spent_ceremonies.spend("ceremony-1", INSTANT)
    t = schema.spent_ceremonies
    query = sa.select(t).where(t.c.id == sa.bindparam("id"))
    with raw_engine(backend_url) as engine, engine.connect() as conn:
        through_driver = DriverStatement(query).one_or_none(conn, {"id": "ceremony-1"})
        through_sqlalchemy = conn.execute(query, {"id": "ceremony-1"}).one()
        assert DriverStatement(query).rows(conn, {"id": "none"}) == []
    assert through_driver is not None
    assert through_driver.expires == through_sqlalchemy.expires == INSTANT
    assert through_driver.expires.tzinfo == UTC


def test_audit_events_written_on_the_driver_path_read_back_as_written(backend: Backend) -> None:
    entries = [
        AuditEntry("device.authenticate", "TV006I", INSTANT, "alice", True, {"device": {"id": "d1"}, "n": [1, 2]}),
        AuditEntry("device.authenticate", "TV006W", INSTANT, "bob", False, {"reason": "locked ✓"}),
    ]
    with backend.begin() as store:
        store.audit.append_many(entries)
    with backend.read() as store:
        found = store.audit.search(event_types=["device.authenticate"])
    assert [(e.user, e.success, e.time, e.body) for e in found] == [
        ("alice", True, INSTANT, {"device": {"id": "d1"}, "n": [1, 2]}),
        ("bob", False, INSTANT, {"reason": "locked ✓"}),
    ]
    assert all(isinstance(e.success, bool) for e in found)


def test_a_naive_time_is_refused_as_the_column_type_refuses_it(backend: Backend) -> None:
    with pytest.raises(ValueError, match="naive datetime"), backend.begin() as store:
        store.spent_ceremonies.spend("ceremony-2", datetime(2026, 3, 1, 12, 0))


def test_a_constraint_violation_is_sqlalchemys_error(backend: Backend, backend_url: str) -> None:
    insert = DriverStatement(sa.insert(schema.spent_ceremonies), ("id", "expires"))
    twice = [{"id": "twice", "expires": INSTANT}, {"id": "twice", "expires": INSTANT}]
    with raw_engine(backend_url) as engine, pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        insert.execute_many(conn, twice)


def test_reads_of_the_latest_state_leave_no_autocommit_behind(backend: Backend) -> None:
    """``read(latest=True)`` runs each statement on its own on PostgreSQL (no BEGIN/COMMIT round trips); the
    pooled connection it used must come back transactional, or a later write would not be atomic."""
    with backend.read(latest=True) as store:
        assert store.devices.find_by_asset_tag("linux", "SN-NONE") is None
        driver = store.audit._conn.connection.driver_connection
        assert driver is not None
        if backend.dialect_name == "postgresql":
            assert driver.autocommit
    for _ in range(3):  # LIFO pool: the same connection again
        with pytest.raises(RuntimeError), backend.begin() as store:
            store.spent_ceremonies.spend("half-done", INSTANT)
            raise RuntimeError("abort the transaction")
        with backend.begin() as store:
            # the first spend was rolled back, so spending it again succeeds
            store.spent_ceremonies.spend("half-done", INSTANT)
            raise_if_autocommit(store)
        with backend.begin() as store:
            store.audit._conn.execute(sa.delete(schema.spent_ceremonies))


def raise_if_autocommit(store: Store) -> None:
    driver = store.audit._conn.connection.driver_connection
    assert driver is not None
    if hasattr(driver, "autocommit"):
        assert not driver.autocommit


def test_a_json_column_takes_a_string_as_a_value_and_json_text_as_encoded(backend: Backend, backend_url: str) -> None:
    insert = DriverStatement(
        sa.insert(schema.audit_events), ("uid", "event", "code", "time", "username", "success", "body")
    )
    rows = [
        {"uid": "plain", "event": "e", "code": "c", "time": INSTANT, "username": "u", "success": True, "body": "abc"},
        {
            "uid": "encoded",
            "event": "e",
            "code": "c",
            "time": INSTANT,
            "username": "u",
            "success": True,
            "body": JsonText('{"a": [1, 2]}'),
        },
    ]
    t = schema.audit_events
    with raw_engine(backend_url) as engine:
        with engine.begin() as conn:
            insert.execute_many(conn, rows)
        with engine.connect() as conn:
            stored = {row.uid: row.body for row in conn.execute(sa.select(t.c.uid, t.c.body))}
    assert stored == {"plain": "abc", "encoded": {"a": [1, 2]}}
