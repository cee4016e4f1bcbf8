"""One sync of one inventory entry: walk Jamf's pages, write through the sink, settle the missing devices.

Full sync (``id:asc``):
    1. walk the inventory; per page, the sink looks up the page's devices (one call, compact: key, id, source,
       fingerprint — never bodies), the pure planner (:func:`~devicetrust.mdm.diff.plan_page`) drops what is
       unchanged or someone else's, and the sink writes the rest in one transaction; seen keys are remembered;
    2. this source's devices of the entry's platforms that were not seen are *missing* (read from the sink by
       page, without documents, once the walk is done): each is re-checked by its Jamf id (404 -> delete; serial
       or platform mismatch -> delete; no longer matching any inventory filter of this kind -> delete; error ->
       keep). A sync that read zero records deletes nothing. on_missing NOOP keeps them all.
Partial sync (``general.reportDate:desc``): the same per page; the walk stops at the previous sync's cut (the
newest report time it saw, less an overlap). Without a cut (first run) a full sync runs instead.

Memory stays flat as the inventory grows: pages are streamed (PAGE_PREFETCH ahead), and what is held per device
is its key in the seen set; the stored inventory is never held whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from devicetrust.errors import DevicetrustError
from devicetrust.mdm.diff import (
    Gone,
    Observation,
    Present,
    Recheck,
    Skipped,
    SourceDevice,
    StoredDevice,
    Unknown,
    chunked,
    decide_missing,
    lookup_keys,
    missing,
    missing_policy,
    plan_page,
)
from devicetrust.mdm.jamf.client import JamfClient
from devicetrust.mdm.jamf.config import InventoryEntry
from devicetrust.mdm.jamf.errors import JamfAPIError, JamfAuthError, JamfPermissionError
from devicetrust.mdm.jamf.mapping import (
    FULL_SORT,
    ID_FIELD,
    OS_TYPES,
    PARTIAL_SORT,
    REPORT_FILTER_FIELD,
    map_record,
    parse_jamf_time,
    recheck_identity,
    report_time,
)
from devicetrust.mdm.jamf.records import InventoryRecord
from devicetrust.mdm.sink import InventorySink, Removal, SyncReport
from devicetrust.types import DeviceSource
from devicetrust.types.clock import utcnow

__all__ = [
    "DELETE_BATCH_SIZE",
    "FULL",
    "MAX_LOGGED_SKIPS",
    "PARTIAL",
    "PARTIAL_SYNC_OVERLAP",
    "RECHECK_BATCH_SIZE",
    "JamfSync",
    "SyncProgress",
    "cut_state_key",
    "last_full_state_key",
    "since_filter",
]

log = logging.getLogger(__name__)

FULL = "full"
PARTIAL = "partial"
#: a partial sync re-reads devices reported this long before the last cut: Jamf stamps reportDate when an
#: inventory report starts, and may commit it after a sync that began later has read past it
PARTIAL_SYNC_OVERLAP = timedelta(minutes=10)
#: missing devices re-checked concurrently per round (the client still keeps to MAX_CONCURRENT_REQUESTS)
RECHECK_BATCH_SIZE = 50
#: devices deleted per transaction
DELETE_BATCH_SIZE = 500
#: skipped records logged one by one per sync; the rest are only counted
MAX_LOGGED_SKIPS = 20


def since_filter(entry: InventoryEntry, since: datetime) -> str:
    """The entry's filter narrowed to devices that reported at or after ``since``."""
    stamp = since.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    condition = f'{REPORT_FILTER_FIELD[entry.kind]}=ge="{stamp}"'
    return f"({entry.filter_rsql});{condition}" if entry.filter_rsql else condition


def cut_state_key(source_name: str, entry: InventoryEntry) -> str:
    return f"jamf/{source_name}/{entry.key}/cut"


def last_full_state_key(source_name: str, entry: InventoryEntry) -> str:
    return f"jamf/{source_name}/{entry.key}/last_full"


class SyncProgress(Protocol):
    """What a progress display is told (the CLI draws a rich bar from it)."""

    def started(self, kind: str, entry: InventoryEntry) -> None: ...

    def page(self, *, records: int, total: int | None) -> None: ...

    def phase(self, text: str) -> None: ...


async def _cancelled(task: asyncio.Future[Any]) -> None:
    """Cancel ``task`` and wait for it to end, whatever it ends with."""
    task.cancel()
    with contextlib.suppress(BaseException):
        await task


@dataclass
class _Walk:
    seen: set[str]
    max_report: datetime | None = None
    skips_logged: int = 0
    #: the previous page's plan and writes, under way while the walk reads the next page
    writing: asyncio.Task[None] | None = None


class JamfSync:
    """Syncs one inventory entry of one Jamf service (``run(full=…)`` once per sync)."""

    def __init__(
        self,
        client: JamfClient,
        sink: InventorySink,
        *,
        source_name: str,
        entry: InventoryEntry,
        entries: Sequence[InventoryEntry] = (),
        clock: Callable[[], datetime] = utcnow,
        progress: SyncProgress | None = None,
    ) -> None:
        self._client = client
        self._sink = sink
        self._source = DeviceSource(source_name, "jamf")
        self._entry = entry
        # a device missing from this entry may still be in scope of another entry of the same kind
        self._scope_filters = [e.filter_rsql for e in (entries or (entry,)) if e.kind == entry.kind]
        self._clock = clock
        self._progress = progress

    async def run(self, *, full: bool) -> SyncReport:
        """One sync; the report says what happened (``error`` set if it failed). JamfAuthError and
        JamfPermissionError propagate: they are fatal for the service."""
        entry = self._entry
        cut: datetime | None = None
        if not full:
            try:
                cut = parse_jamf_time(await self._sink.load_state(cut_state_key(self._source.name, entry)))
            except DevicetrustError as err:
                log.warning("cannot read the last partial sync's cut: %s", err)
            full = cut is None
        report = SyncReport(
            source=self._source.name,
            inventory=entry.describe(),
            kind=FULL if full else PARTIAL,
            started=self._clock(),
            origin=self._source.origin,
        )
        if self._progress is not None:
            self._progress.started(report.kind, entry)
        started = time.monotonic()
        try:
            if full:
                await self._full(report)
            else:
                assert cut is not None
                await self._partial(report, cut)
        except (JamfAuthError, JamfPermissionError) as err:
            report.error = str(err)
            report.duration_s = time.monotonic() - started
            await self._record(report)
            raise
        except DevicetrustError as err:
            report.error = str(err)
            log.warning("jamf sync failed: %s", err, extra={"source": self._source.name, "inventory": report.inventory})
        report.duration_s = time.monotonic() - started
        self._phase("done" if report.error is None else "failed")
        await self._record(report)
        return report

    async def _record(self, report: SyncReport) -> None:
        try:
            await self._sink.record_sync(report)
        except DevicetrustError as err:  # the sync's own writes are done; losing the summary is not fatal
            log.warning("could not record the jamf sync summary: %s", err)

    # -- walks --------------------------------------------------------------------------------------------
    async def _full(self, report: SyncReport) -> None:
        entry = self._entry
        started = time.monotonic()
        walk = _Walk(seen=set())
        self._phase(f"reading Jamf {entry.kind}")
        pages = self._client.pages(
            entry.kind,
            sort=FULL_SORT[entry.kind],
            filter_rsql=entry.filter_rsql,
            page_size=entry.page_size,
            each=self._map,
        )
        async with contextlib.aclosing(pages), self._writes_of(walk):
            async for page in pages:
                observations = self._observe(page.results, report, walk)
                await self._write_behind(observations, walk, report)
                report.pages += 1
                if self._progress is not None:
                    self._progress.page(records=len(page.results), total=page.total_count)
            await self._written(walk)
        cut = self._next_cut(walk, time.monotonic() - started) or self._clock()
        await self._settle_missing(walk, report)
        await self._sink.save_state(cut_state_key(self._source.name, entry), cut.isoformat())
        await self._sink.save_state(last_full_state_key(self._source.name, entry), self._clock().isoformat())

    async def _partial(self, report: SyncReport, cut: datetime) -> None:
        entry = self._entry
        stop_before = cut - PARTIAL_SYNC_OVERLAP
        walk = _Walk(seen=set())
        self._phase(f"reading Jamf {entry.kind} reported since {cut.isoformat()}")
        started = time.monotonic()
        query = await self._since_filter(stop_before)
        pages = self._client.pages(
            entry.kind,
            sort=PARTIAL_SORT[entry.kind],
            filter_rsql=query,
            page_size=entry.page_size,
            each=self._map_dated,
        )
        async with contextlib.aclosing(pages), self._writes_of(walk):
            async for page in pages:
                dated = page.results
                reached = False
                for position, (when, _) in enumerate(dated):
                    if when is None or when < stop_before:
                        dated, reached = dated[:position], True
                        break
                records = [mapped for _, mapped in dated]
                observations = self._observe(records, report, walk)
                await self._write_behind(observations, walk, report)
                report.pages += 1
                if self._progress is not None:
                    self._progress.page(records=len(records), total=page.total_count)
                if reached:
                    break
            await self._written(walk)
        new_cut = self._next_cut(walk, time.monotonic() - started)
        if new_cut is not None and new_cut > cut:
            await self._sink.save_state(cut_state_key(self._source.name, entry), new_cut.isoformat())

    async def _since_filter(self, since: datetime) -> str:
        """The entry's filter narrowed to devices reported since ``since``, if Jamf takes the date in a filter (it
        does); if it refuses it, the walk still stops at the cut, having read a page more than needed."""
        entry = self._entry
        query = since_filter(entry, since)
        try:
            await self._client.count(entry.kind, query)
        except JamfAPIError as err:
            if err.status != 400:
                raise
            log.info("Jamf refuses a date in the filter (%s); partial syncs read by date order only", err)
            return entry.filter_rsql
        return query

    def _next_cut(self, walk: _Walk, duration_s: float) -> datetime | None:
        """The newest report time seen, less the walk's duration: a device that reported while the walk was
        under way, after its page was read, has a report time after the walk began, so the next sync reads it."""
        if walk.max_report is None:
            return None
        return walk.max_report - timedelta(seconds=duration_s)

    def _map(self, record: InventoryRecord) -> Observation | Skipped:
        return map_record(self._entry.kind, record)

    def _map_dated(self, record: InventoryRecord) -> tuple[datetime | None, Observation | Skipped]:
        """The record's report time (a partial walk stops at the cut) and what it maps to."""
        return report_time(self._entry.kind, record), map_record(self._entry.kind, record)

    def _observe(self, records: Sequence[Observation | Skipped], report: SyncReport, walk: _Walk) -> list[Observation]:
        observations: list[Observation] = []
        for mapped in records:
            report.records += 1
            if isinstance(mapped, Skipped):
                report.skipped += 1
                if walk.skips_logged < MAX_LOGGED_SKIPS:
                    walk.skips_logged += 1
                    log.info(
                        "jamf record skipped: %s",
                        mapped.reason,
                        extra={"jamf_id": mapped.external_id, "jamf_name": mapped.name, "source": self._source.name},
                    )
                continue
            if mapped.report_time is not None and (walk.max_report is None or mapped.report_time > walk.max_report):
                walk.max_report = mapped.report_time
            observations.append(mapped)
        return observations

    # -- writes, one page behind the walk -----------------------------------------------------------------
    async def _write_behind(self, observations: list[Observation], walk: _Walk, report: SyncReport) -> None:
        """Look the page's devices up at once (beside the previous page's writes), then, once the previous page is
        written, plan and write this one while the walk reads the next page. Pages are planned in order, each
        after the one before it is written, so the seen set and the duplicates come out as in a serial walk."""
        keys = lookup_keys(observations, walk.seen)
        lookup = asyncio.ensure_future(self._sink.lookup(keys)) if keys else None
        try:
            await self._written(walk)
        except BaseException:
            if lookup is not None:
                await _cancelled(lookup)
            raise
        walk.writing = asyncio.create_task(self._write(observations, lookup, walk, report))

    @staticmethod
    async def _written(walk: _Walk) -> None:
        """Wait for the page being written; its failure is the walk's."""
        writing, walk.writing = walk.writing, None
        if writing is not None:
            await writing

    @staticmethod
    @contextlib.asynccontextmanager
    async def _writes_of(walk: _Walk) -> AsyncIterator[None]:
        """A walk that ends early (an error, a stop) cancels the page still being written (a page is one
        transaction: written whole or not at all)."""
        try:
            yield
        finally:
            if walk.writing is not None:
                await _cancelled(walk.writing)
                walk.writing = None

    async def _write(
        self,
        observations: list[Observation],
        lookup: asyncio.Future[list[StoredDevice]] | None,
        walk: _Walk,
        report: SyncReport,
    ) -> None:
        stored = {device.key: device for device in await lookup} if lookup is not None else {}
        plan = plan_page(observations, stored, walk.seen, self._source)
        walk.seen.update(plan.seen)
        report.unchanged += plan.unchanged
        report.foreign += len(plan.foreign)
        report.duplicates += plan.duplicates
        for observation in plan.foreign[:MAX_LOGGED_SKIPS]:
            log.info(
                "device registered by hand or by another source left alone",
                extra={"asset_tag": observation.asset_tag, "os_type": observation.os_type, "source": self._source.name},
            )
        if plan.apply:
            report.add(await self._sink.apply(self._source, plan.apply, new_keys=plan.new_keys))

    # -- missing devices ----------------------------------------------------------------------------------
    async def _missing(self, walk: _Walk) -> list[SourceDevice]:
        """This source's devices of the entry's platforms that the walk did not see."""
        self._phase("looking for devices Jamf no longer reports")
        candidates: list[SourceDevice] = []
        token: str | None = None
        while True:
            devices, token = await self._sink.source_devices(self._source, token)
            candidates.extend(missing(devices, walk.seen, OS_TYPES[self._entry.kind]))
            if token is None:
                return candidates

    async def _settle_missing(self, walk: _Walk, report: SyncReport) -> None:
        entry = self._entry
        candidates = await self._missing(walk)
        report.missing = len(candidates)
        if not candidates:
            return
        kept = missing_policy(len(candidates), records_read=report.records, delete_missing=entry.deletes_missing)
        if kept is not None:
            report.kept += len(candidates)
            report.notes.append(kept)
            log.warning("jamf full sync deletes nothing: %s", kept, extra={"source": self._source.name})
            return
        self._phase(f"re-checking {len(candidates)} missing device(s)")
        removals: list[Removal] = []
        for batch in chunked(candidates, RECHECK_BATCH_SIZE):
            rechecks = await asyncio.gather(*(self._recheck(device) for device in batch))
            for device, recheck in zip(batch, rechecks, strict=True):
                verdict = decide_missing(device, recheck)
                log.info(
                    "missing device %s: %s",
                    "deleted" if verdict.delete else "kept",
                    verdict.reason,
                    extra={"asset_tag": device.asset_tag, "jamf_id": device.external_id, "source": self._source.name},
                )
                if verdict.delete:
                    removals.append(Removal(device.id, device.os_type, device.asset_tag, verdict.reason))
                else:
                    report.kept += 1
        for removal_batch in chunked(removals, DELETE_BATCH_SIZE):
            deleted = await self._sink.delete(self._source, removal_batch)
            report.deleted += deleted
            report.kept += len(removal_batch) - deleted

    async def _recheck(self, device: SourceDevice) -> Recheck:
        kind = self._entry.kind
        if not device.external_id or not device.external_id.isdigit():
            return Unknown("no Jamf id recorded")
        try:
            record = await self._client.device(kind, device.external_id)
            if record is None:
                return Gone()
            os_type, serial = recheck_identity(kind, record)
            in_scope: bool | None = None
            if os_type == device.os_type and serial == device.asset_tag:
                in_scope = await self._in_scope(device.external_id)
            return Present(os_type, serial, in_scope)
        except (JamfAuthError, JamfPermissionError):
            raise
        except DevicetrustError as err:
            return Unknown(str(err))

    async def _in_scope(self, jamf_id: str) -> bool | None:
        """Whether the device still matches a filter of this kind's entries (None: no filter limits them)."""
        filters = self._scope_filters
        if not filters or any(not text for text in filters):
            return None
        union = ",".join(f"({text})" for text in filters)
        query = f'{ID_FIELD[self._entry.kind]}=="{jamf_id}";({union})'
        return await self._client.count(self._entry.kind, query) > 0

    def _phase(self, text: str) -> None:
        if self._progress is not None:
            self._progress.phase(text)
