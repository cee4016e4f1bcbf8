"""The Jamf service: schedules partial and full syncs of every inventory entry, with jitter.

How the daemon runs it (``devicetrust start`` with ``jamf_service.enabled: true``)::

    from devicetrust.mdm.jamf import parse_jamf_service_config, JamfServiceThread
    jamf = parse_jamf_service_config(raw_doc.get("jamf_service"))    # ConfigError at start, before serving
    if jamf.enabled:
        thread = JamfServiceThread(jamf, server.backend, audit=server.audit)
        thread.start()                      # own event loop in a daemon thread; uvicorn keeps the main one
        ...                                 # serve
        thread.stop()                       # on shutdown: cancels an in-flight sync, waits for the thread

or, from a coroutine on the daemon's loop, ``await run_jamf_service(jamf, server.backend, audit=server.audit,
stop=event)``. Either ends with an exception when the service cannot go on — refused credentials
(:class:`~devicetrust.mdm.jamf.errors.JamfAuthError`), a missing privilege, a filter Jamf rejects
(ConfigError) — after logging it; any other failure of a sync (Jamf down, 5xx, database busy, a bug) only fails
that sync: it is logged and retried after FAILED_SYNC_RETRY, or at the next period if that is sooner.

Schedule per entry: at start a full sync if none completed within ``sync_period_full`` (the time of the last
one is kept in the cluster state, so restarts do not force one), else a partial sync; then partial syncs every
``sync_period_partial`` and full syncs every ``sync_period_full``. Every due time gets a random delay of up to
``sync_delay``, so several auth servers (or a restarted fleet) do not hit Jamf at once. Entries sync one after
the other, never concurrently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from devicetrust.errors import ConfigError, ConnectionFailedError, DevicetrustError
from devicetrust.mdm.jamf.client import DEFAULT_RETRY, JamfClient, RetryPolicy
from devicetrust.mdm.jamf.config import InventoryEntry, JamfServiceConfig
from devicetrust.mdm.jamf.engine import JamfSync, SyncProgress, last_full_state_key
from devicetrust.mdm.jamf.errors import JamfAPIError, JamfAuthError, JamfPermissionError
from devicetrust.mdm.jamf.mapping import parse_jamf_time
from devicetrust.mdm.sink import AuditFn, BackendSink, InventorySink, SyncReport
from devicetrust.storage.backend import Backend
from devicetrust.types.clock import utcnow

__all__ = [
    "FAILED_SYNC_RETRY",
    "JamfService",
    "JamfServiceThread",
    "run_jamf_service",
]

log = logging.getLogger(__name__)

#: a failed sync is tried again this soon (or at its normal period, if that is sooner)
FAILED_SYNC_RETRY = timedelta(minutes=5)
#: how long start-up waits between attempts to reach Jamf to validate the filters
STARTUP_RETRY = timedelta(seconds=30)
#: how long stop() waits for the service thread to finish an in-flight write
THREAD_STOP_TIMEOUT_S = 30.0

ClientFactory = Callable[[JamfServiceConfig], JamfClient]


def default_client(config: JamfServiceConfig, retry: RetryPolicy = DEFAULT_RETRY) -> JamfClient:
    if config.credentials is None:
        raise ConfigError("jamf_service: credentials missing")
    return JamfClient(config.api_endpoint, config.credentials, ca_file=config.ca_file, retry=retry)


@dataclass
class _Schedule:
    entry: InventoryEntry
    #: monotonic times
    next_full: float
    next_partial: float

    def due(self) -> float:
        return min(self.next_full, self.next_partial)


class JamfService:
    def __init__(
        self,
        config: JamfServiceConfig,
        sink: InventorySink,
        *,
        client_factory: ClientFactory = default_client,
        clock: Callable[[], datetime] = utcnow,
        monotonic: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        if not config.enabled:
            raise ConfigError("jamf_service is not enabled")
        self._config = config
        self._sink = sink
        self._client_factory = client_factory
        self._clock = clock
        self._monotonic = monotonic
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not secrets

    def _jitter(self) -> float:
        return self._rng.uniform(0, self._config.sync_delay.total_seconds())

    def _sync(self, client: JamfClient, entry: InventoryEntry, progress: SyncProgress | None) -> JamfSync:
        return JamfSync(
            client,
            self._sink,
            source_name=self._config.name,
            entry=entry,
            entries=self._config.inventory,
            clock=self._clock,
            progress=progress,
        )

    async def sync_once(self, *, full: bool, progress: SyncProgress | None = None) -> list[SyncReport]:
        """Validate the filters, then sync every entry once (``devicetrust jamf sync --once``)."""
        async with self._client_factory(self._config) as client:
            await self._validate(client)
            return [await self._sync(client, entry, progress).run(full=full) for entry in self._config.inventory]

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Sync on schedule until ``stop`` is set (or the task is cancelled). Raises on fatal errors."""
        stop = stop or asyncio.Event()
        try:
            async with self._client_factory(self._config) as client:
                if not await self._validate_until_reachable(client, stop):
                    return
                schedules = [await self._initial(entry) for entry in self._config.inventory]
                log.info(
                    "jamf service started",
                    extra={"source": self._config.name, "jamf_host": client.address, "entries": len(schedules)},
                )
                while not stop.is_set():
                    current = min(schedules, key=_Schedule.due)
                    delay = current.due() - self._monotonic()
                    if delay > 0:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stop.wait(), timeout=delay)
                        continue
                    try:
                        completed = await self._until_stopped(self._run_due(client, current), stop)
                    except (JamfAuthError, JamfPermissionError, ConfigError):
                        raise
                    except Exception:  # one bad run must not end the schedule: log it and try again later
                        log.exception("jamf sync failed", extra={"source": self._config.name})
                        self._retry_later(current)
                        continue
                    if not completed:
                        log.info("jamf sync cancelled: the service is stopping", extra={"source": self._config.name})
        except (JamfAuthError, JamfPermissionError, ConfigError) as err:
            log.error("jamf service stopped: %s", err, extra={"source": self._config.name})
            raise
        log.info("jamf service stopped", extra={"source": self._config.name})

    @staticmethod
    async def _until_stopped(work: Coroutine[Any, Any, None], stop: asyncio.Event) -> bool:
        """Run ``work`` unless ``stop`` is set first, in which case it is cancelled (False). A page being
        written when that happens is written whole or not at all: each is one transaction."""
        task = asyncio.create_task(work)
        stopped = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            stopped.cancel()
        if task.done():
            task.result()  # fatal errors propagate
            return True
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return False

    async def _run_due(self, client: JamfClient, schedule: _Schedule) -> None:
        entry = schedule.entry
        now = self._monotonic()
        full = schedule.next_full <= now
        report = await self._sync(client, entry, None).run(full=full)
        finished = self._monotonic()
        if report.error is not None:
            self._retry_later(schedule)
            return
        log.info(
            "jamf %s sync done",
            report.kind,
            extra={
                "source": report.source,
                "inventory": report.inventory,
                "devices_created": report.created,
                "devices_updated": report.updated,
                "devices_deleted": report.deleted,
                "duration_s": round(report.duration_s, 3),
            },
        )
        if report.kind == "full":
            schedule.next_full = finished + entry.sync_period_full.total_seconds() + self._jitter()
        schedule.next_partial = finished + entry.sync_period_partial.total_seconds() + self._jitter()

    def _retry_later(self, schedule: _Schedule) -> None:
        """After a failed sync: try again after FAILED_SYNC_RETRY, or at the normal period if that is sooner."""
        now = self._monotonic()
        retry = now + min(FAILED_SYNC_RETRY, schedule.entry.sync_period_partial).total_seconds() + self._jitter()
        if schedule.next_full <= now:
            schedule.next_full = retry
        schedule.next_partial = retry

    async def _initial(self, entry: InventoryEntry) -> _Schedule:
        now = self._monotonic()
        try:
            last_full = parse_jamf_time(await self._sink.load_state(last_full_state_key(self._config.name, entry)))
        except DevicetrustError as err:  # e.g. the database is busy: a full sync first is always safe
            log.warning("cannot read the time of the last full jamf sync: %s", err)
            last_full = None
        next_full = now + self._jitter()
        if last_full is not None:
            since = (self._clock() - last_full).total_seconds()
            next_full = max(next_full, now + entry.sync_period_full.total_seconds() - since)
        # a partial sync first when a full one is not due: cheap, and it catches up on the downtime
        return _Schedule(entry, next_full=next_full, next_partial=now + self._jitter())

    async def _validate(self, client: JamfClient) -> None:
        for entry in self._config.inventory:
            matching = await client.validate_filter(entry.kind, entry.filter_rsql)
            log.info(
                "jamf inventory filter accepted",
                extra={"source": self._config.name, "inventory": entry.describe(), "matching": matching},
            )

    async def _validate_until_reachable(self, client: JamfClient, stop: asyncio.Event) -> bool:
        while not stop.is_set():
            try:
                await self._validate(client)
                return True
            except (ConnectionFailedError, JamfAPIError) as err:
                if isinstance(err, JamfAPIError) and err.status and err.status < 500 and err.status != 429:
                    raise ConfigError(f"jamf_service: {err}") from None
                log.warning("cannot validate the jamf inventory filters yet: %s", err)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=STARTUP_RETRY.total_seconds())
        return False


async def run_jamf_service(
    config: JamfServiceConfig,
    backend: Backend,
    *,
    audit: AuditFn | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Run the service in-process against ``backend`` until ``stop`` is set. ``audit``: the auth server's
    ``AuthServer.audit`` (adds the cluster name); by default events are appended to the backend directly."""
    await JamfService(config, BackendSink(backend, audit=audit)).run(stop)


class JamfServiceThread:
    """The service on its own event loop in a daemon thread, for a daemon whose main thread serves HTTP."""

    def __init__(
        self,
        config: JamfServiceConfig,
        backend: Backend,
        *,
        audit: AuditFn | None = None,
        on_exit: Callable[[BaseException | None], None] | None = None,
    ) -> None:
        self._service = JamfService(config, BackendSink(backend, audit=audit))
        self._on_exit = on_exit
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name=f"jamf-service-{config.name}", daemon=True)
        #: the exception the service stopped with (None while running or after a clean stop)
        self.error: BaseException | None = None

    def start(self) -> None:
        self._thread.start()
        self._ready.wait()

    def stop(self, timeout: float = THREAD_STOP_TIMEOUT_S) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop finished in the meantime
                loop.call_soon_threadsafe(stop.set)
        self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def _main(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self._ready.set()
            await self._service.run(self._stop)

        try:
            asyncio.run(main())
        except DevicetrustError as err:
            self.error = err
        except Exception as err:  # a bug: keep the traceback in the log
            log.exception("jamf service crashed")
            self.error = err
        finally:
            self._ready.set()
            if self._on_exit is not None:
                self._on_exit(self.error)
