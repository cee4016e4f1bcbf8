"""Locks: CRUD, errors and expiry, on both dialects."""

from __future__ import annotations

from datetime import timedelta

import pytest
from tests.storage.conftest import START

from devicetrust.errors import AlreadyExistsError, NotFoundError
from devicetrust.storage.backend import Backend
from devicetrust.storage.records import LockRecord

HOUR = timedelta(hours=1)


def _body(name: str) -> dict[str, object]:
    return {"kind": "lock", "metadata": {"name": name}, "spec": {"message": "incident 42"}}


def test_lock_create_get_find_list(backend: Backend) -> None:
    with backend.begin() as store:
        forever = store.locks.create("forever", "user", "alice", _body("forever"), None)
        timed = store.locks.create("timed", "device", "5a2b3c4d", _body("timed"), START + HOUR)
    assert forever == LockRecord("forever", "user", "alice", _body("forever"), None, START)
    assert timed == LockRecord("timed", "device", "5a2b3c4d", _body("timed"), START + HOUR, START)
    with backend.begin() as store:
        assert store.locks.get("forever") == forever
        assert store.locks.find("timed") == timed
        assert store.locks.find("nothing") is None
        assert store.locks.list() == [forever, timed]
        stored = store.locks.get("timed").expires
        assert stored is not None
        assert stored.utcoffset() == timedelta(0)


def test_lock_errors_name_the_lock(backend: Backend) -> None:
    with backend.begin() as store:
        store.locks.create("l", "user", "alice", {}, None)
        with pytest.raises(AlreadyExistsError, match=r'^lock "l" already exists$'):
            store.locks.create("l", "role", "editor", {}, START + HOUR)
        with pytest.raises(NotFoundError, match=r'^lock "m" not found$'):
            store.locks.get("m")
        with pytest.raises(NotFoundError, match=r'^lock "m" not found$'):
            store.locks.delete("m")
        # the transaction is still usable after refused writes (no aborted PostgreSQL transaction)
        assert store.locks.get("l").target_kind == "user"


def test_lock_delete(backend: Backend) -> None:
    with backend.begin() as store:
        store.locks.create("a", "user", "alice", {}, None)
        store.locks.create("b", "user", "bob", {}, None)
    with backend.begin() as store:
        store.locks.delete("a")
    with backend.begin() as store:
        assert [lock.name for lock in store.locks.list()] == ["b"]
        # the name is free again
        store.locks.create("a", "device", "d", {}, None)


def test_lock_expiry_in_listing_and_purge(backend: Backend) -> None:
    with backend.begin() as store:
        store.locks.create("expired", "user", "a", {}, START - HOUR)
        store.locks.create("at-now", "user", "b", {}, START)
        store.locks.create("later", "user", "c", {}, START + HOUR)
        store.locks.create("forever", "user", "d", {}, None)
    with backend.begin() as store:
        # a lock is in force until (not at) its expiry
        assert [lock.name for lock in store.locks.list(START)] == ["forever", "later"]
        assert [lock.name for lock in store.locks.list(START - 2 * HOUR)] == ["at-now", "expired", "forever", "later"]
        assert [lock.name for lock in store.locks.list(START + 2 * HOUR)] == ["forever"]
        assert len(store.locks.list()) == 4
    with backend.begin() as store:
        assert store.locks.purge_expired(START) == 2
        assert store.locks.purge_expired(START) == 0
    with backend.begin() as store:
        assert [lock.name for lock in store.locks.list()] == ["forever", "later"]
        assert store.locks.purge_expired(START + 100 * HOUR) == 1
        assert [lock.name for lock in store.locks.list()] == ["forever"]
