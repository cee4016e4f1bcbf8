"""The Jamf service: schedule (full first, then partial/full by period), restarts, fatal errors, the thread runner."""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from devicetrust.errors import ConfigError
from devicetrust.mdm.jamf.client import JamfClient
from devicetrust.mdm.jamf.config import JamfServiceConfig
from devicetrust.mdm.jamf.errors import JamfAuthError
from devicetrust.mdm.jamf.service import JamfService, JamfServiceThread, default_client
from devicetrust.mdm.sink import BackendSink, SyncReport
from devicetrust.storage.backend import Backend
from devicetrust.storage.repositories import Store
from tests.fakes.jamf.server import FakeJamf
from tests.mdm.conftest import FAST_RETRY, JamfSetup

FAST_PERIODS = [{"sync_period_partial": "1s", "sync_period_full": "2s"}]


def _fast_client(config: JamfServiceConfig) -> JamfClient:
    return default_client(config, FAST_RETRY)


def _run_for(service: JamfService, seconds: float) -> None:
    async def main() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(seconds, stop.set)
        await service.run(stop)

    asyncio.run(main())


def _sync_kinds(backend: Backend) -> list[str]:
    with backend.begin() as store:
        return [e.body["kind"] for e in store.audit.search(event_types=["mdm.sync"], limit=100)]


def _wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_full_first_then_partials_then_full_again(jamf: JamfSetup, sqlite_backend: Backend) -> None:
    service = JamfService(jamf.config(inventory=FAST_PERIODS), BackendSink(sqlite_backend), client_factory=_fast_client)
    _run_for(service, 2.6)
    kinds = _sync_kinds(sqlite_backend)
    assert kinds[0] == "full"
    assert "partial" in kinds[1:]
    assert kinds.count("full") >= 2
    with sqlite_backend.begin() as store:
        assert store.devices.count("jamf") == 10


def test_a_restart_does_not_force_a_full_sync(jamf: JamfSetup, sqlite_backend: Backend) -> None:
    config = jamf.config(inventory=[{"sync_period_partial": "1h", "sync_period_full": "24h"}])
    sink = BackendSink(sqlite_backend)
    asyncio.run(JamfService(config, sink, client_factory=_fast_client).sync_once(full=True))
    _run_for(JamfService(config, sink, client_factory=_fast_client), 0.5)
    assert _sync_kinds(sqlite_backend) == ["full", "partial"]


def test_stopping_cancels_a_sync_in_flight(jamf: JamfSetup, fake: FakeJamf, sqlite_backend: Backend) -> None:
    fake.faults.page_delay_s = 0.5  # six pages of two: three seconds
    config = jamf.config(inventory=[{"page_size": 2}])
    started = time.monotonic()
    _run_for(JamfService(config, BackendSink(sqlite_backend), client_factory=_fast_client), 0.6)
    assert time.monotonic() - started < 2
    assert _sync_kinds(sqlite_backend) == []  # no summary for a sync that did not finish


def test_sync_delay_spreads_the_first_syncs(jamf: JamfSetup, sqlite_backend: Backend) -> None:
    config = jamf.config(sync_delay="2s")

    async def first_due() -> list[float]:
        service = JamfService(config, BackendSink(sqlite_backend), rng=random.Random(7), monotonic=lambda: 100.0)
        schedule = await service._initial(config.inventory[0])
        return [schedule.next_full, schedule.next_partial]

    due = asyncio.run(first_due())
    assert all(100.0 <= when <= 102.0 for when in due)
    assert len(set(due)) == 2


@pytest.mark.parametrize(
    ("setup", "error", "message"),
    [
        (lambda fake: setattr(fake.faults, "always_unauthorized", True), JamfAuthError, "refused a freshly issued"),
        (lambda fake: None, ConfigError, "Jamf rejects filter_rsql 'general.secret==1'"),
    ],
    ids=["repeated-401", "bad-filter"],
)
def test_fatal_errors_stop_the_service(
    jamf: JamfSetup,
    fake: FakeJamf,
    sqlite_backend: Backend,
    setup: Callable[[FakeJamf], None],
    error: type[Exception],
    message: str,
) -> None:
    setup(fake)
    inventory = [{"filter_rsql": "general.secret==1"}] if error is ConfigError else None
    config = jamf.config(**({"inventory": inventory} if inventory else {}))
    service = JamfService(config, BackendSink(sqlite_backend), client_factory=_fast_client)
    with pytest.raises(error, match=message):
        _run_for(service, 5)


def test_unreachable_jamf_at_start_is_retried_until_stopped(jamf: JamfSetup, sqlite_backend: Backend) -> None:
    config = jamf.config(api_endpoint="https://127.0.0.1:9")
    started = time.monotonic()
    _run_for(JamfService(config, BackendSink(sqlite_backend), client_factory=_fast_client), 0.5)
    assert time.monotonic() - started < 5
    assert _sync_kinds(sqlite_backend) == []


def test_thread_runner_for_the_daemon(jamf: JamfSetup, fake: FakeJamf, sqlite_backend: Backend) -> None:
    audited: list[tuple[str, str]] = []

    def audit(store: Store, event: tuple[str, str], user: str, success: bool, /, **body: Any) -> None:
        # as AuthServer.audit: append inside the caller's transaction
        audited.append((event[0], user))
        store.audit.append(event[0], event[1], datetime.now(UTC), user, success, body)

    exits: list[BaseException | None] = []
    thread = JamfServiceThread(jamf.config(), sqlite_backend, audit=audit, on_exit=exits.append)
    thread.start()
    try:
        _wait_until(lambda: ("mdm.sync", "jamf_service:jamf") in audited)
    finally:
        thread.stop()
    assert not thread.is_alive()
    assert exits == [None] and thread.error is None
    assert ("device.create", "jamf_service:jamf") in audited

    fake.faults.always_unauthorized = True
    done = threading.Event()

    def exited(error: BaseException | None) -> None:
        exits.append(error)
        done.set()

    failing = JamfServiceThread(jamf.config(), sqlite_backend, on_exit=exited)
    failing.start()
    assert done.wait(10)
    assert isinstance(failing.error, JamfAuthError)
    failing.stop()


def test_run_jamf_service_coroutine(jamf: JamfSetup, sqlite_backend: Backend) -> None:
    from devicetrust.mdm.jamf.service import run_jamf_service

    async def main(until: Callable[[], Awaitable[None]]) -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(run_jamf_service(jamf.config(), sqlite_backend, stop=stop))
        await until()
        stop.set()
        await task

    async def until_synced() -> None:
        for _ in range(200):
            if _sync_kinds(sqlite_backend):
                return
            await asyncio.sleep(0.05)

    asyncio.run(main(until_synced))
    assert _sync_kinds(sqlite_backend) == ["full"]


class _FlakySink(BackendSink):
    """Fails its first ``record_sync`` with an unexpected error; stops the service after ``syncs`` recorded."""

    def __init__(self, backend: Backend, stop: asyncio.Event, syncs: int) -> None:
        super().__init__(backend)
        self._stop = stop
        self._left = syncs
        self.failed = False

    async def record_sync(self, report: SyncReport) -> None:
        if not self.failed:
            self.failed = True
            raise RuntimeError("a bug in the middle of a sync")
        await super().record_sync(report)
        self._left -= 1
        if self._left == 0:
            self._stop.set()


def test_an_unexpected_error_fails_one_sync_not_the_service(
    jamf: JamfSetup, sqlite_backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)  # the daemon's default level: every log call builds its record

    async def main() -> _FlakySink:
        stop = asyncio.Event()
        sink = _FlakySink(sqlite_backend, stop, syncs=2)
        service = JamfService(jamf.config(inventory=FAST_PERIODS), sink, client_factory=_fast_client)
        await asyncio.wait_for(service.run(stop), timeout=60)
        return sink

    sink = asyncio.run(main())
    assert sink.failed
    assert len(_sync_kinds(sqlite_backend)) == 2
    failures = [r for r in caplog.records if r.getMessage() == "jamf sync failed"]
    assert len(failures) == 1 and failures[0].exc_info is not None
    assert any(r.getMessage() == "jamf full sync done" for r in caplog.records)
