"""Races between transactions, as between request threads or auth servers sharing one backend.

Each worker runs its own ``Backend.begin()`` on its own pooled connection; a barrier releases them together.
On SQLite the database is a file, so the threads really contend for it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import TypeVar

from tests.storage.conftest import START

from devicetrust.errors import NotFoundError
from devicetrust.storage.backend import Backend
from devicetrust.storage.repositories import Store

WORKERS = 8
T = TypeVar("T")


def _race(backend: Backend, work: Callable[[Store, int], T]) -> list[T | NotFoundError]:
    """Run ``work`` in WORKERS threads at once, one transaction each; NotFoundError counts as an outcome."""
    barrier = threading.Barrier(WORKERS)

    def run(worker: int) -> T | NotFoundError:
        barrier.wait()
        try:
            with backend.begin() as store:
                return work(store, worker)
        except NotFoundError as err:
            return err

    with ThreadPoolExecutor(WORKERS) as pool:
        return list(pool.map(run, range(WORKERS)))


def test_single_use_token_is_spent_exactly_once(backend: Backend) -> None:
    with backend.begin() as store:
        store.tokens.create("h", "device_enroll", "dev-1", {}, START + timedelta(hours=1), single_use=True)
    outcomes = _race(backend, lambda store, _: store.tokens.consume("h", "device_enroll", START).subject)
    assert sorted(map(str, outcomes)) == ["dev-1"] + ["invalid token"] * (WORKERS - 1)


def test_multi_use_token_serves_everyone(backend: Backend) -> None:
    with backend.begin() as store:
        store.tokens.create("h", "node", "", {}, START + timedelta(hours=1), single_use=False)
    outcomes = _race(backend, lambda store, _: store.tokens.consume("h", "node", START).token_hash)
    assert outcomes == ["h"] * WORKERS


def test_pending_ceremony_is_finished_exactly_once(backend: Backend) -> None:
    with backend.begin() as store:
        store.pending.create("c", "enroll", "dev-1", {}, START + timedelta(seconds=60))
    outcomes = _race(backend, lambda store, _: store.pending.consume("c", "enroll", START).subject)
    assert sorted(map(str, outcomes)) == ["ceremony not found or expired"] * (WORKERS - 1) + ["dev-1"]


def test_rate_limit_counts_every_concurrent_hit(backend: Backend) -> None:
    window = timedelta(minutes=5)
    outcomes = _race(backend, lambda store, _: store.rate_limits.hit("login:alice", START, window))
    counts = [count for count in outcomes if isinstance(count, int)]
    assert sorted(counts) == list(range(1, WORKERS + 1))
    with backend.begin() as store:
        assert store.rate_limits.count("login:alice", START, window) == WORKERS


def test_racing_first_starts_agree_on_cluster_name_and_ca(backend: Backend) -> None:
    def first_start(store: Store, worker: int) -> tuple[str, dict[str, str]]:
        name = store.cluster.insert_if_absent("cluster_name", f"cluster-{worker}")
        return name, store.cas.insert_if_absent("user", {"private_key": f"key-{worker}"})

    outcomes = _race(backend, first_start)
    assert len(set(map(str, outcomes))) == 1
    with backend.begin() as store:
        winner = store.cluster.get("cluster_name")
        assert outcomes[0] == (winner, store.cas.get("user"))


def test_racing_migrations_are_safe(backend_url: str) -> None:
    backends = [Backend.open(backend_url) for _ in range(4)]
    try:
        barrier = threading.Barrier(len(backends))

        def migrate(backend: Backend) -> str | None:
            barrier.wait()
            backend.migrate()
            return backend.current_revision()

        with ThreadPoolExecutor(len(backends)) as pool:
            assert list(pool.map(migrate, backends)) == ["0005"] * len(backends)
    finally:
        for backend in backends:
            backend.close()
