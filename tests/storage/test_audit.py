"""The audit log: append, search and paging, and the triggers that keep it append-only."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta

import pytest
import sqlalchemy as sa
from tests.storage.conftest import START

from devicetrust.errors import ValidationError
from devicetrust.storage.backend import Backend
from devicetrust.storage.records import AuditEntry, AuditRecord
from devicetrust.storage.repositories import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from devicetrust.storage.schema import AUDIT_APPEND_ONLY_MESSAGE

MINUTE = timedelta(minutes=1)


def _append_events(backend: Backend, count: int) -> list[AuditRecord]:
    with backend.begin() as store:
        return [
            store.audit.append(
                "device.enroll" if i % 2 else "user.login",
                "TV005I" if i % 2 else "T1000I",
                START + i * MINUTE,
                "alice" if i % 3 else "bob",
                i != 4,
                {"i": i},
            )
            for i in range(count)
        ]


def test_append_returns_the_stored_record(backend: Backend) -> None:
    with backend.begin() as store:
        first = store.audit.append("device.enroll", "TV005I", START, "alice", True, {"device": {"id": "d1"}})
        second = store.audit.append("device.enroll", "TV005I", START, "alice", False, {"reason": "bad quote"})
    assert second.id > first.id
    assert uuid.UUID(first.uid).version == 4
    assert first.uid != second.uid
    assert (first.event, first.code, first.time, first.user, first.success, first.body) == (
        "device.enroll",
        "TV005I",
        START,
        "alice",
        True,
        {"device": {"id": "d1"}},
    )
    with backend.begin() as store:
        assert store.audit.search() == [first, second]


def test_append_many_stores_events_in_their_order(backend: Backend) -> None:
    with backend.begin() as store:
        before = store.audit.append("session.start", "T2000I", START, "alice", True, {"n": -1})
        store.audit.append_many(
            [AuditEntry("session.start", "T2000I", START + n * MINUTE, f"u{n}", n != 2, {"n": n}) for n in range(300)]
        )
        store.audit.append_many([])
    with backend.read() as store:
        stored = store.audit.search(limit=MAX_PAGE_SIZE)
    assert stored[0] == before
    appended = stored[1:]
    assert [e.body["n"] for e in appended] == list(range(300))
    assert [e.id for e in appended] == sorted(e.id for e in appended) and appended[0].id > before.id
    assert len({e.uid for e in stored}) == 301
    assert (appended[2].user, appended[2].success, appended[2].time) == ("u2", False, START + 2 * MINUTE)


def test_append_many_writes_the_events_in_order(backend: Backend) -> None:
    entries = [
        AuditEntry("device.authenticate", "TV006I", START, "alice", True, {"device": {"id": "d1"}}),
        AuditEntry("cert.create", "TC000I", START, "alice", True, {"cert_type": "user"}),
    ]
    with backend.begin() as store:
        store.audit.append_many(entries)
        store.audit.append_many([])
    with backend.begin() as store:
        stored = store.audit.search()
    assert [(r.event, r.code, r.time, r.user, r.success, r.body) for r in stored] == [
        (e.event, e.code, e.time, e.user, e.success, e.body) for e in entries
    ]
    assert stored[0].id < stored[1].id and stored[0].uid != stored[1].uid


def test_search_filters(backend: Backend) -> None:
    events = _append_events(backend, 10)
    with backend.begin() as store:
        audit = store.audit
        assert audit.search() == events
        # since is inclusive, until exclusive
        assert audit.search(since=START + 2 * MINUTE, until=START + 5 * MINUTE) == events[2:5]
        assert audit.search(event_types=["device.enroll"]) == events[1::2]
        assert audit.search(event_types=["device.enroll", "user.login"]) == events
        assert audit.search(event_types=["nothing"]) == []
        assert audit.search(user="bob") == [e for e in events if e.user == "bob"]
        assert audit.search(user="bob", event_types=["user.login"], since=START + MINUTE) == [events[6]]
        assert [e.success for e in audit.search(since=START + 4 * MINUTE, limit=1)] == [False]


def test_search_pages_by_id(backend: Backend) -> None:
    events = _append_events(backend, 7)
    pages: list[list[AuditRecord]] = []
    after: int | None = None
    with backend.begin() as store:
        while page := store.audit.search(limit=3, after_id=after):
            pages.append(page)
            after = page[-1].id
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [e for p in pages for e in p] == events


def test_search_newest_returns_the_latest_page_oldest_first(backend: Backend) -> None:
    events = _append_events(backend, 7)
    with backend.begin() as store:
        assert store.audit.search(limit=3, newest=True) == events[-3:]
        assert store.audit.search(limit=2, newest=True, user="bob") == [e for e in events if e.user == "bob"][-2:]
        assert store.audit.search(limit=100, newest=True) == events


def test_search_limit_is_capped(backend: Backend) -> None:
    with backend.begin() as store:
        for i in range(MAX_PAGE_SIZE + 1):
            store.audit.append("e", "C", START, "u", True, {"i": i})
    with backend.begin() as store:
        assert len(store.audit.search()) == DEFAULT_PAGE_SIZE
        assert len(store.audit.search(limit=MAX_PAGE_SIZE + 500)) == MAX_PAGE_SIZE
        with pytest.raises(ValidationError, match="limit must be at least 1"):
            store.audit.search(limit=0)


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_events SET success = NOT success",
        "UPDATE audit_events SET username = 'mallory' WHERE username = 'alice'",
        "DELETE FROM audit_events",
        "DELETE FROM audit_events WHERE username = 'bob'",
    ],
)
def test_database_refuses_to_change_audit_events(
    backend: Backend, raw_sql: Callable[[str], None], statement: str
) -> None:
    events = _append_events(backend, 3)
    with pytest.raises(sa.exc.DBAPIError, match=AUDIT_APPEND_ONLY_MESSAGE):
        raw_sql(statement)
    with backend.begin() as store:
        assert store.audit.search() == events


# SQLite has no TRUNCATE
@pytest.mark.parametrize("backend_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
def test_postgres_refuses_to_truncate_audit_events(backend: Backend, raw_sql: Callable[[str], None]) -> None:
    events = _append_events(backend, 2)
    with pytest.raises(sa.exc.DBAPIError, match=AUDIT_APPEND_ONLY_MESSAGE):
        raw_sql("TRUNCATE audit_events")
    with backend.begin() as store:
        assert store.audit.search() == events
