"""Where a sync writes: the narrow interface (:class:`InventorySink`) and its in-process implementation.

A sync engine needs seven operations, and nothing else, from the cluster:

=================================  =========================================================================
``lookup(keys)``                   the stored devices with these (os_type, asset_tag) identities, compactly
                                   (:class:`~devicetrust.mdm.diff.StoredDevice`) — one call per page
``source_devices(source, token)``  the source's devices without their documents, by page — a full sync's
                                   missing set, read once the walk is done
``apply(source, obs, new)``        register/update one batch of observations in one transaction, with audit
``delete(source, removals)``       remove devices the MDM retired, in one transaction, with audit
``load_state`` / ``save_state``    a small string per key (a partial sync's cut, the last full sync)
``record_sync(report)``            the ``mdm.sync`` summary event
=================================  =========================================================================

:class:`BackendSink` runs them against the :class:`~devicetrust.storage.backend.Backend` (``devicetrust start`` with the
service enabled, and ``devicetrust jamf sync``). A remote MDM agent joining with a ``--type=mdm`` token runs them
over HTTPS (:mod:`devicetrust.mdm.api_sink`), against a BackendSink in the auth service; the merge of the MDM's
parts into a stored document happens on the cluster side (in ``apply``), so the agent never sees a device's
credential.

``apply`` reads the batch's devices with one query (their columns and fingerprints, not their documents) and writes
the MDM's parts onto their documents, each write checked against the revision read
(``DeviceRepository.update_source_parts``: on PostgreSQL one statement, the server merging each document). A device
written by someone else in between — an enrollment storing its credential — is not overwritten: it is read again
and the MDM's parts merged onto what it now holds, at most MAX_UPDATE_ATTEMPTS times (then counted as a conflict,
for the next sync).

Audit, in the same transaction as the change: ``device.create``/``device.update``/``device.delete`` by
``jamf_service:<name>`` with ``source: {name, origin: jamf}`` — one event per device, or one event listing them
all when a batch changes more than AUDIT_PER_DEVICE_LIMIT devices of a kind (a first import of 100k devices would
otherwise spend most of its time appending audit rows one at a time) — and one ``mdm.sync`` event per sync. Names
and codes come from :mod:`devicetrust.audit`, as the auth service's do.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Protocol, TypeVar

import sqlalchemy as sa

from devicetrust import audit as events
from devicetrust.errors import ConflictError, ConnectionFailedError
from devicetrust.mdm.diff import (
    Action,
    Observation,
    SourceDevice,
    StoredDevice,
    device_key,
    new_device_body,
    reconcile,
    registration,
    spec_fingerprint,
)
from devicetrust.storage.backend import Backend
from devicetrust.storage.records import DeviceFingerprint, DeviceRecord, DeviceSourceParts, DeviceUpsert
from devicetrust.storage.repositories import CLUSTER_NAME_KEY, DEVICE_ENROLL_TOKEN_KIND, MAX_PAGE_SIZE, Store
from devicetrust.types import DeviceSource, os_display_name
from devicetrust.types.clock import utcnow
from devicetrust.types.device import format_timestamp
from devicetrust.types.mdm_parts import credential_id

__all__ = [
    "AUDIT_PER_DEVICE_LIMIT",
    "MAX_APPLY_ATTEMPTS",
    "MAX_UPDATE_ATTEMPTS",
    "SCAN_PAGE_SIZE",
    "STATE_KEY_PREFIX",
    "ApplyResult",
    "AuditFn",
    "BackendSink",
    "InventorySink",
    "Removal",
    "SyncReport",
    "audit_user",
]

log = logging.getLogger(__name__)
_T = TypeVar("_T")

#: batches with more changes of one kind than this get one event listing them all instead of one per device
AUDIT_PER_DEVICE_LIMIT = 100
#: rows per scan page (the storage layer's largest page; the scan serves remote agents that predate lookup)
SCAN_PAGE_SIZE = MAX_PAGE_SIZE
#: a batch whose bulk insert met a device registered concurrently is redone device by device, at most this often
MAX_APPLY_ATTEMPTS = 3
#: a device written by someone else while its update was merged is read and merged again at most this often
MAX_UPDATE_ATTEMPTS = 3
#: devices read per query by a lookup
LOOKUP_CHUNK = 500
#: where the sync keeps its state in the cluster key/value store
STATE_KEY_PREFIX = "mdm/"


def audit_user(source: DeviceSource) -> str:
    """Who MDM audit events are attributed to: ``jamf_service:jamf``."""
    return f"{source.origin}_service:{source.name}"


@dataclass(frozen=True)
class ApplyResult:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    #: registered by hand or by another source: left alone
    foreign: int = 0
    #: changed by someone else while the batch was written: left for the next sync
    conflicts: int = 0


@dataclass(frozen=True)
class Removal:
    """A device to delete: only if it still is this source's device with this identity."""

    device_id: str
    os_type: str
    asset_tag: str
    reason: str


@dataclass
class SyncReport:
    """What one sync did; its audit event (``mdm.sync``) and the CLI's summary."""

    source: str
    inventory: str
    kind: str
    started: datetime
    origin: str = "jamf"
    duration_s: float = 0.0
    pages: int = 0
    #: inventory records read (including skipped and foreign ones)
    records: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    #: unsupported platform, no serial, invalid values
    skipped: int = 0
    #: registered by hand or by another source
    foreign: int = 0
    duplicates: int = 0
    conflicts: int = 0
    #: devices of this source not seen by a full sync
    missing: int = 0
    deleted: int = 0
    #: missing, but re-checked as present, or the re-check failed, or on_missing is NOOP
    kept: int = 0
    error: str | None = None
    notes: list[str] = field(default_factory=list)

    def add(self, result: ApplyResult) -> None:
        self.created += result.created
        self.updated += result.updated
        self.unchanged += result.unchanged
        self.foreign += result.foreign
        self.conflicts += result.conflicts

    def audit_body(self) -> dict[str, object]:
        body = asdict(self)
        body["started"] = self.started.isoformat()
        body["duration_s"] = round(self.duration_s, 3)
        if not self.notes:
            del body["notes"]
        if self.error is None:
            del body["error"]
        return body


class InventorySink(Protocol):
    """The cluster as an MDM sync sees it (see the module docstring)."""

    async def lookup(self, keys: Sequence[tuple[str, str]]) -> list[StoredDevice]: ...

    async def source_devices(
        self, source: DeviceSource, page_token: str | None
    ) -> tuple[list[SourceDevice], str | None]: ...

    async def apply(
        self, source: DeviceSource, observations: Sequence[Observation], *, new_keys: frozenset[str]
    ) -> ApplyResult: ...

    async def delete(self, source: DeviceSource, removals: Sequence[Removal]) -> int: ...

    async def load_state(self, key: str) -> str | None: ...

    async def save_state(self, key: str, value: str) -> None: ...

    async def record_sync(self, report: SyncReport) -> None: ...


class AuditFn(Protocol):
    """``AuthServer.audit``'s signature: append one event inside the caller's transaction."""

    def __call__(self, store: Store, event: tuple[str, str], user: str, success: bool, /, **body: Any) -> None: ...


def _interned(value: str | None) -> str | None:
    return None if value is None else sys.intern(value)


def stored_device(record: DeviceRecord) -> StoredDevice:
    return _stored(record, spec_fingerprint(record.body))


def _stored_from_fingerprint(device: DeviceFingerprint) -> StoredDevice:
    return _stored(device, device.fingerprint)


def _stored(device: DeviceRecord | DeviceFingerprint, fingerprint: int) -> StoredDevice:
    # a full sync holds one of these per stored device: the few distinct OS and source names are shared
    return StoredDevice(
        id=device.id,
        os_type=sys.intern(device.os_type),
        asset_tag=device.asset_tag,
        source_name=_interned(device.source_name),
        source_origin=_interned(device.source_origin),
        external_id=device.external_id,
        revision=device.revision,
        fingerprint=fingerprint,
    )


def _audit_device(device_id: str, os_type: str, asset_tag: str, credential_id: str = "") -> dict[str, str]:
    # the shape of devicetrust.auth.devices.device_audit, without parsing the whole document
    return {
        "device_id": device_id,
        "asset_tag": asset_tag,
        "os": os_display_name(os_type),
        "credential_id": credential_id,
    }


async def _in_thread(function: Callable[..., _T], *args: Any) -> _T:
    """Run a storage call in a worker thread; an unreachable or busy database fails the sync (a
    ConnectionFailedError, retried at the next period), it does not crash the service."""
    try:
        return await asyncio.to_thread(function, *args)
    except (sa.exc.OperationalError, sa.exc.InterfaceError) as err:
        reason = " ".join(str(err.orig if err.orig is not None else err).split())
        raise ConnectionFailedError(f"the device inventory's database is unavailable: {reason}") from err


@dataclass
class _Updated:
    """What :meth:`BackendSink._update` wrote (with the document written) and what it left."""

    #: with the id of the credential each written document holds
    written: list[tuple[Observation, StoredDevice, str]] = field(default_factory=list)
    unchanged: int = 0
    foreign: int = 0
    conflicts: int = 0


class _Collision(Exception):
    """A bulk insert met a device registered since it was looked up: redo the batch device by device."""


class BackendSink:
    """:class:`InventorySink` on the Backend, in this process. Each call is one short transaction, run in a
    worker thread so the event loop (and the HTTP client's prefetching) keeps going while it writes."""

    def __init__(self, backend: Backend, *, audit: AuditFn | None = None, clock: Callable[[], datetime] = utcnow):
        self._backend = backend
        self._audit_fn = audit
        self._clock = clock

    # -- protocol -----------------------------------------------------------------------------------------
    async def lookup(self, keys: Sequence[tuple[str, str]]) -> list[StoredDevice]:
        return await _in_thread(self._lookup, keys)

    async def source_devices(
        self, source: DeviceSource, page_token: str | None
    ) -> tuple[list[SourceDevice], str | None]:
        return await _in_thread(self._source_devices, source, page_token)

    async def scan(self, page_token: str | None) -> tuple[list[StoredDevice], str | None]:
        """Every stored device, compactly, by page (for remote agents that predate :meth:`lookup`)."""
        return await _in_thread(self._scan, page_token)

    async def apply(
        self, source: DeviceSource, observations: Sequence[Observation], *, new_keys: frozenset[str]
    ) -> ApplyResult:
        return await _in_thread(self._apply, source, observations, new_keys)

    async def delete(self, source: DeviceSource, removals: Sequence[Removal]) -> int:
        return await _in_thread(self._delete, source, removals)

    async def load_state(self, key: str) -> str | None:
        return await _in_thread(self._load_state, key)

    async def save_state(self, key: str, value: str) -> None:
        await _in_thread(self._save_state, key, value)

    async def record_sync(self, report: SyncReport) -> None:
        await _in_thread(self._record_sync, report)

    # -- implementation -----------------------------------------------------------------------------------
    def _audit(self, store: Store, event: tuple[str, str], user: str, success: bool, **body: Any) -> None:
        if self._audit_fn is not None:
            self._audit_fn(store, event, user, success, **body)
            return
        cluster_name = store.cluster.get(CLUSTER_NAME_KEY)
        if cluster_name is not None:
            body.setdefault("cluster_name", cluster_name)
        store.audit.append(event[0], event[1], self._clock(), user, success, body)

    def _lookup(self, keys: Sequence[tuple[str, str]]) -> list[StoredDevice]:
        found: list[StoredDevice] = []
        computed: list[DeviceFingerprint] = []
        # a read-only transaction: what is read only plans the page; _apply reads each device again as it writes
        with self._backend.read() as store:
            for start in range(0, len(keys), LOOKUP_CHUNK):
                for device in store.devices.find_fingerprints_by_asset_tag(keys[start : start + LOOKUP_CHUNK]):
                    if not device.stored:
                        computed.append(device)
                    found.append(_stored_from_fingerprint(device))
        if computed:
            # devices written before fingerprints were stored: keep them (each only if still at the revision it
            # was computed at), so the next lookups read them instead of decoding the parts again
            with self._backend.begin() as store:
                store.devices.store_fingerprints(computed)
        return found

    def _source_devices(self, source: DeviceSource, page_token: str | None) -> tuple[list[SourceDevice], str | None]:
        with self._backend.read() as store:
            identities, next_token = store.devices.identities_page(source_name=source.name, page_token=page_token)
        devices = [
            SourceDevice(identity.id, sys.intern(identity.os_type), identity.asset_tag, identity.external_id)
            for identity in identities
            if identity.source_origin == source.origin
        ]
        return devices, next_token

    def _scan(self, page_token: str | None) -> tuple[list[StoredDevice], str | None]:
        with self._backend.begin() as store:
            records, next_token = store.devices.list_page(page_size=SCAN_PAGE_SIZE, page_token=page_token)
        return [stored_device(record) for record in records], next_token

    def _apply(
        self, source: DeviceSource, observations: Sequence[Observation], new_keys: frozenset[str]
    ) -> ApplyResult:
        for attempt in range(1, MAX_APPLY_ATTEMPTS + 1):
            try:
                return self._apply_once(source, observations, new_keys if attempt == 1 else frozenset())
            except _Collision:
                log.info("a device was registered while the sync wrote its batch; writing it device by device")
        raise ConflictError(
            f"devices kept being registered concurrently while the {source.name} sync wrote them; retrying next sync"
        )

    def _apply_once(
        self, source: DeviceSource, observations: Sequence[Observation], new_keys: frozenset[str]
    ) -> ApplyResult:
        now = self._clock()
        creates: list[tuple[Observation, DeviceUpsert]] = []
        updates: list[tuple[Observation, StoredDevice]] = []
        unchanged = foreign = 0
        with self._backend.begin() as store:
            looked_up = store.devices.find_fingerprints_by_asset_tag(
                (observation.os_type, observation.asset_tag)
                for observation in observations
                if observation.key not in new_keys
            )
            records = {
                device_key(found.os_type, found.asset_tag): _stored_from_fingerprint(found) for found in looked_up
            }
            for observation in observations:
                record = records.get(observation.key)
                action = reconcile(observation, record, source)
                if action is Action.CREATE:
                    device_id = str(uuid.uuid4())
                    body = new_device_body(observation, source, device_id, now)
                    creates.append(
                        (
                            observation,
                            DeviceUpsert(
                                id=device_id,
                                os_type=observation.os_type,
                                asset_tag=observation.asset_tag,
                                body=body,
                                source_name=source.name,
                                source_origin=source.origin,
                                external_id=observation.external_id,
                            ),
                        )
                    )
                elif action is Action.UPDATE:
                    assert record is not None
                    updates.append((observation, record))
                elif action is Action.UNCHANGED:
                    unchanged += 1
                else:
                    foreign += 1
                    log.info(
                        "device registered by another source left alone",
                        extra={"asset_tag": observation.asset_tag, "os_type": observation.os_type},
                    )
            if creates:
                result = store.devices.upsert_many([row for _, row in creates])
                if result.created != len(creates):
                    # an insert hit an existing (os_type, asset_tag): it may belong to someone else; the
                    # transaction rolls back and the batch is redone with a lookup per device
                    raise _Collision
            outcome = self._update(store, source, updates, now)
            self._audit_changes(store, source, creates, outcome.written)
        return ApplyResult(
            len(creates),
            len(outcome.written),
            unchanged + outcome.unchanged,
            foreign + outcome.foreign,
            outcome.conflicts,
        )

    def _update(
        self, store: Store, source: DeviceSource, updates: Sequence[tuple[Observation, StoredDevice]], now: datetime
    ) -> _Updated:
        """Write the MDM's parts onto each device as stored, checked against the revision read; a device someone
        wrote since (an enrollment storing its credential) is read again and reconciled with what it holds."""
        outcome = _Updated()
        pending = list(updates)
        stamp = format_timestamp(now)
        for _ in range(MAX_UPDATE_ATTEMPTS):
            if not pending:
                return outcome
            parts = []
            for observation, stored in pending:
                source_part, profile_part = registration(observation, source)
                parts.append(
                    DeviceSourceParts(
                        id=stored.id,
                        source=source_part,
                        profile={**profile_part, "update_time": stamp},
                        update_time=stamp,
                        source_name=source.name,
                        source_origin=source.origin,
                        external_id=observation.external_id,
                        expected_revision=stored.revision,
                    )
                )
            written = store.devices.update_source_parts(parts)
            outcome.written.extend(
                (observation, stored, written[stored.id]) for observation, stored in pending if stored.id in written
            )
            lost = [(observation, stored) for observation, stored in pending if stored.id not in written]
            current = {record.id: record for record in store.devices.find_many(stored.id for _, stored in lost)}
            pending = []
            for observation, stored in lost:
                now_stored = current.get(stored.id)
                if (
                    now_stored is None
                    or now_stored.os_type != stored.os_type
                    or now_stored.asset_tag != stored.asset_tag
                ):
                    outcome.conflicts += 1  # removed meanwhile: the next sync registers it again
                    continue
                again = stored_device(now_stored)
                action = reconcile(observation, again, source)
                if action is Action.UPDATE:
                    pending.append((observation, again))
                elif action is Action.UNCHANGED:
                    outcome.unchanged += 1
                else:
                    outcome.foreign += 1
        outcome.conflicts += len(pending)
        if pending:
            log.info(
                "devices kept changing while the sync wrote them; left for the next sync",
                extra={"source": source.name, "devices": len(pending)},
            )
        return outcome

    def _audit_changes(
        self,
        store: Store,
        source: DeviceSource,
        creates: Sequence[tuple[Observation, DeviceUpsert]],
        updates: Sequence[tuple[Observation, StoredDevice, str]],
    ) -> None:
        created = [
            (_audit_device(row.id, row.os_type, row.asset_tag), {"external_id": observation.external_id})
            for observation, row in creates
        ]
        updated = [
            (
                _audit_device(stored.id, stored.os_type, stored.asset_tag, credential),
                {"external_id": observation.external_id},
            )
            for observation, stored, credential in updates
        ]
        self._audit_batch(store, events.DEVICE_CREATE, source, created)
        self._audit_batch(store, events.DEVICE_UPDATE, source, updated)

    def _audit_batch(
        self,
        store: Store,
        event: tuple[str, str],
        source: DeviceSource,
        items: Sequence[tuple[dict[str, str], Mapping[str, str | None]]],
    ) -> None:
        """One event per device, or one listing them all when there are more than AUDIT_PER_DEVICE_LIMIT."""
        if not items:
            return
        user = audit_user(source)
        source_part = {"name": source.name, "origin": source.origin}
        if len(items) <= AUDIT_PER_DEVICE_LIMIT:
            for device, extra in items:
                self._audit(store, event, user, True, device=device, source=source_part, **extra)
            return
        self._audit(
            store,
            event,
            user,
            True,
            devices=[{**device, **extra} for device, extra in items],
            count=len(items),
            source=source_part,
        )

    def _delete(self, source: DeviceSource, removals: Sequence[Removal]) -> int:
        deleted: list[tuple[dict[str, str], str | None, str]] = []
        with self._backend.begin() as store:
            for removal in removals:
                record = store.devices.find(removal.device_id)
                if (
                    record is None
                    or (record.os_type, record.asset_tag) != (removal.os_type, removal.asset_tag)
                    or (record.source_name, record.source_origin) != (source.name, source.origin)
                ):
                    continue  # gone already, or someone else's now
                store.devices.delete(record.id)
                store.tokens.delete_by_subject(DEVICE_ENROLL_TOKEN_KIND, record.id)
                device = _audit_device(record.id, record.os_type, record.asset_tag, credential_id(record.body))
                deleted.append((device, record.external_id, removal.reason))
            self._audit_batch(
                store,
                events.DEVICE_DELETE,
                source,
                [(device, {"external_id": external_id, "reason": reason}) for device, external_id, reason in deleted],
            )
        return len(deleted)

    def _load_state(self, key: str) -> str | None:
        with self._backend.begin() as store:
            return store.cluster.get(STATE_KEY_PREFIX + key)

    def _save_state(self, key: str, value: str) -> None:
        with self._backend.begin() as store:
            store.cluster.set(STATE_KEY_PREFIX + key, value)

    def _record_sync(self, report: SyncReport) -> None:
        event = events.MDM_SYNC if report.error is None else events.MDM_SYNC_FAILURE
        source = DeviceSource(report.source, report.origin)
        with self._backend.begin() as store:
            self._audit(store, event, audit_user(source), report.error is None, **report.audit_body())
