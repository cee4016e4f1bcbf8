"""The state generation (what servers' caches are checked against), spent ceremony ids, and read-only
transactions, on both dialects."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from tests.storage.conftest import START

from devicetrust.errors import NotFoundError
from devicetrust.storage.backend import Backend
from devicetrust.storage.repositories import Store

HOUR = timedelta(hours=1)
ROLE = {"kind": "role", "metadata": {"name": "r"}}


def generation(backend: Backend) -> int:
    with backend.read() as store:
        return store.generation.current()


@pytest.mark.parametrize(
    "write",
    [
        lambda store: store.resources.create("role", "r", ROLE),
        lambda store: store.resources.upsert("cluster_auth_preference", "cap", {}),
        lambda store: store.resources.create("bot", "b", {}),
        lambda store: store.users.create("u", {"kind": "user"}),
        lambda store: store.locks.create("l", "user", "u", {}, None),
    ],
    ids=["role", "auth-preference", "bot", "user", "lock"],
)
def test_writes_to_what_servers_cache_move_the_generation_on(backend: Backend, write: object) -> None:
    before = generation(backend)
    with backend.begin() as store:
        write(store)  # type: ignore[operator]
    assert generation(backend) == before + 1


def test_updates_and_deletes_move_it_on_too(backend: Backend) -> None:
    with backend.begin() as store:
        store.resources.create("role", "r", ROLE)
        store.users.create("u", {"kind": "user"})
        store.locks.create("l", "user", "u", {}, None)
    steps = [
        lambda store: store.resources.update("role", "r", ROLE),
        lambda store: store.resources.delete("role", "r"),
        lambda store: store.users.update("u", {"kind": "user", "v": 2}),
        lambda store: store.users.delete("u"),
        lambda store: store.locks.delete("l"),
    ]
    for step in steps:
        before = generation(backend)
        with backend.begin() as store:
            step(store)
        assert generation(backend) == before + 1


def test_other_writes_leave_it_alone(backend: Backend) -> None:
    before = generation(backend)
    with backend.begin() as store:
        store.resources.create("node", "n", {})
        store.devices.create("d1", "linux", "SN1", {"kind": "device"})
        store.audit.append("e", "C", START, "u", True, {})
        store.users.create("u", {"kind": "user"})
    with backend.begin() as store:
        store.users.set_password_hash("u", "hash")  # a password is not part of what callers resolve to
    assert generation(backend) == before + 1  # the user's creation only


def test_a_rolled_back_write_leaves_the_generation(backend: Backend) -> None:
    before = generation(backend)
    with pytest.raises(RuntimeError), backend.begin() as store:
        store.resources.create("role", "r", ROLE)
        raise RuntimeError("abandon")
    assert generation(backend) == before


def test_a_ceremony_id_is_spent_once(backend: Backend) -> None:
    with backend.begin() as store:
        store.spent_ceremonies.spend("c1", START + HOUR)
    with pytest.raises(NotFoundError), backend.begin() as store:
        store.spent_ceremonies.spend("c1", START + HOUR)
    with backend.begin() as store:
        store.spent_ceremonies.spend("c2", START + HOUR)  # another id is another ceremony


def test_of_concurrent_spends_of_one_id_exactly_one_commits(backend: Backend) -> None:
    barrier = threading.Barrier(8)
    outcomes: list[str] = []

    def spend() -> None:
        barrier.wait()
        try:
            with backend.begin() as store:
                store.spent_ceremonies.spend("raced", START + HOUR)
        except NotFoundError:
            outcomes.append("refused")
        else:
            outcomes.append("spent")

    threads = [threading.Thread(target=spend) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["refused"] * 7 + ["spent"]


def test_purging_keeps_ids_until_they_expire(backend: Backend) -> None:
    with backend.begin() as store:
        store.spent_ceremonies.spend("old", START)
        store.spent_ceremonies.spend("new", START + HOUR)
    with backend.begin() as store:
        assert store.spent_ceremonies.purge_expired(START) == 1
    with pytest.raises(NotFoundError), backend.begin() as store:
        store.spent_ceremonies.spend("new", START + HOUR)


def test_a_read_transaction_sees_one_snapshot_and_does_not_block_writers(backend: Backend) -> None:
    with backend.read() as reader:
        first = reader.generation.current()
        with backend.begin() as writer:  # would wait for a lock if the reader held one
            writer.resources.create("role", "r", ROLE)
        assert isinstance(reader, Store)
        if backend.dialect_name == "sqlite":
            assert reader.generation.current() == first  # SQLite: the snapshot of the transaction's first read
    assert generation(backend) == first + 1
