"""End-to-end syncs: the fake Jamf over HTTPS -> the engine -> a real backend (SQLite and PostgreSQL), with faults."""

from __future__ import annotations

import asyncio
import threading
import uuid
from dataclasses import replace
from typing import Any

import pytest
import sqlalchemy as sa

from devicetrust.mdm.diff import fingerprint
from devicetrust.mdm.jamf.config import InventoryEntry
from devicetrust.mdm.jamf.engine import JamfSync, cut_state_key
from devicetrust.mdm.jamf.errors import JamfAuthError
from devicetrust.mdm.sink import MAX_UPDATE_ATTEMPTS, STATE_KEY_PREFIX, BackendSink, SyncReport
from devicetrust.storage.backend import Backend
from devicetrust.storage.records import DeviceFingerprint, DeviceRecord
from devicetrust.storage.repositories import DeviceRepository, Store
from devicetrust.types import (
    Device,
    DeviceCredential,
    DeviceProfile,
    DeviceSource,
    parse_resource,
    resource_to_dict,
)
from devicetrust.types.mdm_parts import MDM_PART_PATHS
from tests.fakes.jamf import server as fake_module
from tests.fakes.jamf.server import FakeJamf
from tests.mdm.conftest import JamfSetup
from tests.storage.raw import raw_engine

COMPUTERS = InventoryEntry()
MOBILE = InventoryEntry(kind="mobile_devices", filter_rsql="managed==true")
#: the example inventory: 12 computers, 11 managed, of which one has no serial
SYNCED_MACS = 10
ALICE = "C02XJ0ABHX87"


def sync(
    jamf: JamfSetup,
    backend: Backend,
    *,
    full: bool,
    entry: InventoryEntry = COMPUTERS,
    entries: tuple[InventoryEntry, ...] = (),
    **client_options: Any,
) -> SyncReport:
    async def main() -> SyncReport:
        async with jamf.client(**client_options) as client:
            engine = JamfSync(client, BackendSink(backend), source_name="jamf", entry=entry, entries=entries)
            return await engine.run(full=full)

    return asyncio.run(main())


def devices(backend: Backend) -> dict[str, DeviceRecord]:
    with backend.begin() as store:
        records, _ = store.devices.list_page(page_size=1000)
    return {record.asset_tag: record for record in records}


def device(record: DeviceRecord) -> Device:
    parsed = parse_resource(record.body)
    assert isinstance(parsed, Device)
    return parsed


def audit(backend: Backend, event: str | None = None) -> list[Any]:
    with backend.begin() as store:
        events = store.audit.search(limit=1000)
    return [e for e in events if event is None or e.event == event]


def test_first_full_sync_registers_then_nothing_changes(jamf: JamfSetup, backend: Backend) -> None:
    report = sync(jamf, backend, full=True)
    assert report.error is None
    assert (report.records, report.created, report.skipped, report.deleted) == (11, SYNCED_MACS, 1, 0)
    stored = devices(backend)
    assert len(stored) == SYNCED_MACS
    alice = stored[ALICE]
    assert (alice.os_type, alice.source_name, alice.source_origin, alice.external_id) == ("macos", "jamf", "jamf", "1")
    assert (alice.enroll_status, alice.owner) == ("not_enrolled", "")
    profile = device(alice).profile
    assert profile is not None
    assert (profile.model_identifier, profile.os_version, profile.os_usernames) == (
        "MacBookPro18,3",
        "14.6.1",
        ("alice", "jamfadmin"),
    )
    # the unmanaged loaner is outside the default filter
    assert "FVFGT1A2Q6L9" not in stored

    again = sync(jamf, backend, full=True)
    assert (again.created, again.updated, again.unchanged, again.deleted) == (0, 0, SYNCED_MACS, 0)
    assert {r.revision for r in devices(backend).values()} == {1}

    creates = audit(backend, "device.create")
    assert len(creates) == SYNCED_MACS
    assert {e.user for e in creates} == {"jamf_service:jamf"}
    assert creates[0].body["source"] == {"name": "jamf", "origin": "jamf"}
    assert {e.body["device"]["asset_tag"] for e in creates} == set(stored)
    summaries = audit(backend, "mdm.sync")
    assert [(e.code, e.body["kind"], e.body["created"], e.body["unchanged"]) for e in summaries] == [
        ("TMDM001I", "full", SYNCED_MACS, 0),
        ("TMDM001I", "full", 0, SYNCED_MACS),
    ]
    assert summaries[0].body["origin"] == "jamf" and summaries[0].body["duration_s"] >= 0


def test_partial_sync_reads_only_what_reported_since_the_cut(jamf: JamfSetup, fake: FakeJamf, backend: Backend) -> None:
    sync(jamf, backend, full=True)
    fake.computers.patch(4, "general", {"reportDate": "2026-11-25T11:30:00Z"})
    fake.computers.patch(4, "operatingSystem", {"version": "14.7.1", "build": "23H222"})
    report = sync(jamf, backend, full=False)
    assert report.kind == "partial" and report.error is None
    # Dave's Mac, plus the newest report before the cut (within the overlap)
    assert (report.records, report.updated, report.unchanged) == (2, 1, 1)
    dave = devices(backend)["C02ZW1HYMD6M"]
    assert dave.revision == 2
    profile = device(dave).profile
    assert profile is not None and (profile.os_version, profile.os_build) == ("14.7.1", "23H222")
    updates = audit(backend, "device.update")
    assert [e.body["device"]["asset_tag"] for e in updates] == ["C02ZW1HYMD6M"]
    with backend.begin() as store:
        cut = store.cluster.get(STATE_KEY_PREFIX + cut_state_key("jamf", COMPUTERS))
    assert cut is not None and cut.startswith("2026-11-25T11:")
    # the filter sent was narrowed to the cut
    assert any("general.reportDate%3Dge%3D" in r.query for r in fake.api_requests("/api/v2/computers-inventory"))


def test_partial_sync_without_a_cut_runs_a_full_one(jamf: JamfSetup, backend: Backend) -> None:
    report = sync(jamf, backend, full=False)
    assert (report.kind, report.created) == ("full", SYNCED_MACS)


def test_enrolled_device_keeps_credential_owner_and_history(jamf: JamfSetup, fake: FakeJamf, backend: Backend) -> None:
    # Alice's Mac was synced before and has since been enrolled by alice
    credential = DeviceCredential(
        id="cred-alice", attestation_type="macos_secure_enclave", public_key_der=b"0Y0\x13key"
    )
    enrolled = Device(
        id=str(uuid.uuid4()),
        os_type="macos",
        asset_tag=ALICE,
        enroll_status="enrolled",
        credential=credential,
        collected_data=({"serial_number": ALICE, "record_time": "2026-11-01T09:00:00+00:00"},),
        source=DeviceSource("jamf", "jamf"),
        profile=DeviceProfile(os_version="14.0", external_id="1"),
        owner="alice",
    )
    with backend.begin() as store:
        store.devices.create(
            enrolled.id,
            "macos",
            ALICE,
            resource_to_dict(enrolled),
            enroll_status="enrolled",
            owner="alice",
            source_name="jamf",
            source_origin="jamf",
            external_id="1",
        )
    full = sync(jamf, backend, full=True)
    assert (full.created, full.updated) == (SYNCED_MACS - 1, 1)
    fake.computers.patch(1, "general", {"reportDate": "2026-11-25T12:00:00Z"})
    fake.computers.patch(1, "operatingSystem", {"version": "15.1", "build": "24B83"})
    partial = sync(jamf, backend, full=False)
    assert partial.updated == 1
    record = devices(backend)[ALICE]
    after = device(record)
    assert (record.id, record.enroll_status, record.owner) == (enrolled.id, "enrolled", "alice")
    assert (after.credential, after.owner, after.collected_data) == (credential, "alice", enrolled.collected_data)
    assert after.profile is not None and after.profile.os_version == "15.1"
    assert audit(backend, "device.update")[-1].body["device"]["credential_id"] == "cred-alice"


def test_devices_registered_by_hand_or_by_another_source_are_left_alone(jamf: JamfSetup, backend: Backend) -> None:
    manual = Device(id=str(uuid.uuid4()), os_type="macos", asset_tag=ALICE)
    intune = Device(
        id=str(uuid.uuid4()), os_type="macos", asset_tag="H4TXK2JNQ5", source=DeviceSource("intune", "intune")
    )
    elsewhere = Device(
        id=str(uuid.uuid4()), os_type="macos", asset_tag="INTUNE-ONLY-1", source=DeviceSource("intune", "intune")
    )
    with backend.begin() as store:
        store.devices.create(manual.id, "macos", ALICE, resource_to_dict(manual))
        for other in (intune, elsewhere):
            store.devices.create(
                other.id,
                "macos",
                other.asset_tag,
                resource_to_dict(other),
                source_name="intune",
                source_origin="intune",
            )
    before = devices(backend)
    report = sync(jamf, backend, full=True)
    assert (report.created, report.foreign, report.deleted) == (SYNCED_MACS - 2, 2, 0)
    after = devices(backend)
    for tag in (ALICE, "H4TXK2JNQ5", "INTUNE-ONLY-1"):
        assert after[tag] == before[tag]  # not adopted, not updated, not deleted


def test_full_sync_removes_retired_devices_and_partial_never_does(
    jamf: JamfSetup, fake: FakeJamf, backend: Backend
) -> None:
    sync(jamf, backend, full=True)
    fake.computers.remove(7)  # Frank's MacBook Air is retired in Jamf
    partial = sync(jamf, backend, full=False)
    assert partial.deleted == 0 and "FVFDP3XLQ6LR" in devices(backend)
    full = sync(jamf, backend, full=True)
    assert (full.missing, full.deleted, full.kept) == (1, 1, 0)
    assert "FVFDP3XLQ6LR" not in devices(backend)
    (deleted,) = audit(backend, "device.delete")
    assert deleted.body["device"]["asset_tag"] == "FVFDP3XLQ6LR"
    assert deleted.body["reason"] == "no longer in the MDM"
    assert deleted.user == "jamf_service:jamf"


def test_on_missing_noop_keeps_retired_devices(jamf: JamfSetup, fake: FakeJamf, backend: Backend) -> None:
    noop = replace(COMPUTERS, on_missing="NOOP")
    sync(jamf, backend, full=True, entry=noop)
    fake.computers.remove(7)
    report = sync(jamf, backend, full=True, entry=noop)
    assert (report.missing, report.deleted, report.kept) == (1, 0, 1)
    assert "FVFDP3XLQ6LR" in devices(backend)


def test_a_sync_that_sees_zero_devices_deletes_nothing(jamf: JamfSetup, fake: FakeJamf, backend: Backend) -> None:
    sync(jamf, backend, full=True)
    for jamf_id in fake.computers.ids():
        fake.computers.remove(jamf_id)
    report = sync(jamf, backend, full=True)
    assert (report.records, report.missing, report.deleted, report.kept) == (0, SYNCED_MACS, 0, SYNCED_MACS)
    assert report.notes and "no devices" in report.notes[0]
    assert len(devices(backend)) == SYNCED_MACS


def test_missing_devices_are_rechecked_and_a_present_one_is_kept(
    jamf: JamfSetup, fake: FakeJamf, backend: Backend
) -> None:
    small_pages = replace(COMPUTERS, page_size=3)
    sync(jamf, backend, full=True, entry=small_pages)
    # during the next walk, after page 1 (ids 1-3), device 1 is retired: every later device moves up one place,
    # so page 2 starts at id 5 and id 4 (Dave's Mac) is never seen by the walk
    fake.faults.gap_after_pages = 1
    report = sync(jamf, backend, full=True, entry=small_pages)
    assert report.error is None
    assert (report.missing, report.deleted, report.kept) == (1, 0, 1)
    stored = devices(backend)
    assert "C02ZW1HYMD6M" in stored  # skipped by the gap: re-checked, present, kept
    assert [r.path for r in fake.api_requests("/api/v2/computers-inventory/")] == ["/api/v2/computers-inventory/4"]
    assert ALICE in stored  # read on page 1 just before it was retired: seen, so not missing yet
    after = sync(jamf, backend, full=True, entry=small_pages)
    assert (after.missing, after.deleted, after.kept) == (1, 1, 0)
    assert ALICE not in devices(backend)  # re-checked: 404


def test_recheck_deletes_on_serial_mismatch_and_when_out_of_scope(
    jamf: JamfSetup, fake: FakeJamf, backend: Backend
) -> None:
    sync(jamf, backend, full=True)
    fake.computers.patch(2, "hardware", {"serialNumber": "NEWBOARD0001"})  # logic board swap: a new Mac to us
    fake.computers.patch(3, "general", {"remoteManagement": {"managed": False}})  # unmanaged: out of the filter
    fake.faults.server_errors = 0
    report = sync(jamf, backend, full=True)
    assert (report.created, report.missing, report.deleted) == (1, 2, 2)
    stored = devices(backend)
    assert "FVFHK2ZYQ6L4" not in stored and "NEWBOARD0001" in stored
    assert "H4TXK2JNQ5" not in stored
    reasons = sorted(e.body["reason"] for e in audit(backend, "device.delete"))
    assert reasons == ["no longer matches the inventory filter", "the MDM id now belongs to serial NEWBOARD0001"]


def test_a_recheck_that_fails_keeps_the_device(jamf: JamfSetup, fake: FakeJamf, backend: Backend) -> None:
    sync(jamf, backend, full=True)
    fake.computers.remove(7)

    # the walk succeeds; the re-check of the missing device then meets 500s until retries run out
    class FailingRechecks(JamfSync):
        pass

    async def main() -> SyncReport:
        async with jamf.client() as client:
            original = client.device

            async def device_with_outage(*args: Any, **kwargs: Any) -> Any:
                fake.faults.server_errors = 10
                try:
                    return await original(*args, **kwargs)
                finally:
                    fake.faults.server_errors = 0

            client.device = device_with_outage  # type: ignore[method-assign]
            return await FailingRechecks(client, BackendSink(backend), source_name="jamf", entry=COMPUTERS).run(
                full=True
            )

    report = asyncio.run(main())
    assert (report.missing, report.deleted, report.kept) == (1, 0, 1)
    assert "FVFDP3XLQ6LR" in devices(backend)


@pytest.mark.parametrize(
    "fault",
    [
        {"revoke_tokens_after_pages": 2},  # 401 mid-sync: a new token, the request retried once
        {"server_errors": 2},  # 500s: retried
        {"rate_limited": 2, "retry_after_s": 1},  # 429: waits for Retry-After
        {"page_delay_s": 0.05},  # slow pages
    ],
    ids=["401-mid-sync", "500s", "429", "slow-pages"],
)
def test_full_sync_survives_faults(jamf: JamfSetup, fake: FakeJamf, backend: Backend, fault: dict[str, Any]) -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    for name, value in fault.items():
        setattr(fake.faults, name, value)
    report = sync(jamf, backend, full=True, entry=replace(COMPUTERS, page_size=3), sleep=sleep)
    assert report.error is None
    assert (report.created, report.deleted, report.pages) == (SYNCED_MACS, 0, 4)
    if "rate_limited" in fault:
        assert slept == [1.0, 1.0]
    if "revoke_tokens_after_pages" in fault:
        assert fake.tokens_issued == 2


def test_expiring_tokens_are_renewed_during_a_sync(jamf: JamfSetup, fake: FakeJamf, backend: Backend) -> None:
    fake.token_lifetime_s = 0.4  # renewed when under 0.1 s is left; some requests still meet an expired one
    fake.faults.page_delay_s = 0.15
    report = sync(jamf, backend, full=True, entry=replace(COMPUTERS, page_size=2))
    assert report.error is None and report.created == SYNCED_MACS
    assert fake.tokens_issued >= 2


def test_a_failed_sync_deletes_nothing_and_is_recorded(jamf: JamfSetup, fake: FakeJamf, backend: Backend) -> None:
    sync(jamf, backend, full=True)
    fake.computers.remove(7)
    fake.faults.server_errors = 100
    report = sync(jamf, backend, full=True)
    assert report.error is not None and "500" in report.error
    assert report.deleted == 0 and len(devices(backend)) == SYNCED_MACS
    failure = audit(backend, "mdm.sync")[-1]
    assert (failure.code, failure.success, failure.body["error"]) == ("TMDM001W", False, report.error)


def test_repeated_auth_failure_stops_with_a_clear_error(jamf: JamfSetup, fake: FakeJamf, backend: Backend) -> None:
    fake.faults.always_unauthorized = True
    with pytest.raises(JamfAuthError, match="refused a freshly issued token"):
        sync(jamf, backend, full=True)
    failure = audit(backend, "mdm.sync")[-1]
    assert failure.success is False and "401" in failure.body["error"]


def test_mobile_devices(jamf: JamfSetup, fake: FakeJamf, backend: Backend) -> None:
    sync(jamf, backend, full=True)
    report = sync(jamf, backend, full=True, entry=MOBILE, entries=(COMPUTERS, MOBILE))
    assert (report.records, report.created, report.skipped) == (5, 3, 2)
    stored = devices(backend)
    assert (stored["F17ZK3LQN72J"].os_type, stored["DMPZN4KLQ1GH"].os_type) == ("ios", "ipados")
    # a mobile full sync never counts the Macs as missing, nor the reverse
    assert report.missing == 0
    fake.mobile_devices.remove(3)
    mac_report = sync(jamf, backend, full=True, entries=(COMPUTERS, MOBILE))
    assert (mac_report.missing, mac_report.deleted) == (0, 0)
    mobile_report = sync(jamf, backend, full=True, entry=MOBILE, entries=(COMPUTERS, MOBILE))
    assert (mobile_report.missing, mobile_report.deleted) == (1, 1)
    assert "G6TQL9XNP0D2" not in devices(backend)


def test_v1_only_jamf(jamf: JamfSetup, fake: FakeJamf, backend: Backend) -> None:
    fake.faults.v2_computers = False
    fake.computers.remove(7)
    report = sync(jamf, backend, full=True)
    assert (report.created, report.error) == (SYNCED_MACS - 1, None)
    assert not [r for r in fake.api_requests("/api/v2/computers-inventory") if r.status == 200]


def test_a_partial_sync_without_date_filters_stops_at_the_cut(
    jamf: JamfSetup, fake: FakeJamf, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    sync(jamf, backend, full=True)
    # a Jamf that refuses general.reportDate in filters: the walk by date order still stops at the cut
    monkeypatch.setattr(
        fake_module, "COMPUTER_FILTER_FIELDS", fake_module.COMPUTER_FILTER_FIELDS - {"general.reportDate"}
    )
    fake.computers.patch(4, "general", {"reportDate": "2026-11-25T11:30:00Z"})
    fake.computers.patch(4, "operatingSystem", {"version": "14.7.1"})
    report = sync(jamf, backend, full=False, entry=replace(COMPUTERS, page_size=2))
    assert (report.kind, report.error, report.updated) == ("partial", None, 1)
    assert (report.records, report.pages) == (2, 2)  # the newest two; the next page starts past the cut


def test_an_unavailable_database_fails_the_sync_not_the_service(
    jamf: JamfSetup, sqlite_backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    def locked(*args: object) -> None:
        raise sa.exc.OperationalError("INSERT …", {}, Exception("database is locked"))

    monkeypatch.setattr(BackendSink, "_apply", locked)
    report = sync(jamf, sqlite_backend, full=True)
    assert report.error == "the device inventory's database is unavailable: database is locked"


# -- an enrollment racing a sync ------------------------------------------------------------------------------


def enroll(backend: Backend, asset_tag: str, credential_id: str) -> None:
    """An enrollment's write as the auth service makes it (DeviceService.enroll_finish): in one transaction, read
    the device, then store it enrolled with its credential — the whole document, no revision named."""
    with backend.begin() as store:
        record = store.devices.find_by_asset_tag("macos", asset_tag)
        assert record is not None
        write_enrollment(store, record, credential_id)


def write_enrollment(store: Store, record: DeviceRecord, credential_id: str) -> None:
    credential = DeviceCredential(
        id=credential_id, attestation_type="macos_secure_enclave", public_key_der=b"0Y0\x13" + credential_id.encode()
    )
    enrolled = replace(device(record), enroll_status="enrolled", credential=credential, owner="alice")
    store.devices.update(
        record.id,
        resource_to_dict(enrolled),
        enroll_status="enrolled",
        owner="alice",
        source_name=record.source_name,
        source_origin=record.source_origin,
        external_id=record.external_id,
    )


def test_an_enrollment_committed_while_a_sync_writes_keeps_its_credential(
    jamf: JamfSetup, fake: FakeJamf, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    sync(jamf, backend, full=True)
    fake.computers.patch(1, "general", {"reportDate": "2026-11-25T12:00:00Z"})
    fake.computers.patch(1, "operatingSystem", {"version": "15.1", "build": "24B83"})
    # Alice enrolls just after the sync's write transaction has read her device, before it writes it (the first
    # read is the sync's read-only lookup that plans the page; the second is the write transaction's)
    read_batch = DeviceRepository.find_fingerprints_by_asset_tag
    enrollments: list[threading.Thread] = []
    reads: list[int] = []

    def read_then_enroll(self: DeviceRepository, keys: Any) -> list[DeviceFingerprint]:
        records = read_batch(self, keys)
        if any(record.asset_tag == ALICE for record in records):
            reads.append(1)
        if not enrollments and len(reads) == 2:
            enrollment = threading.Thread(target=enroll, args=(backend, ALICE, "cred-race"))
            enrollments.append(enrollment)
            enrollment.start()
            if backend.dialect_name == "postgresql":
                # the sync's transaction only read Alice's row: the enrollment commits now, in between
                enrollment.join()
            # SQLite: the sync's transaction holds the write lock; the enrollment waits for it to end
        return records

    monkeypatch.setattr(DeviceRepository, "find_fingerprints_by_asset_tag", read_then_enroll)
    report = sync(jamf, backend, full=False)
    assert len(reads) == 2
    enrollments[0].join()
    assert (report.error, report.updated, report.conflicts) == (None, 1, 0)
    record = devices(backend)[ALICE]
    alice = device(record)
    # both writes survive: the enrollment's credential and owner, and the MDM's new profile
    assert (record.enroll_status, record.owner, record.revision) == ("enrolled", "alice", 3)
    assert alice.credential is not None and alice.credential.id == "cred-race"
    assert alice.profile is not None and alice.profile.os_version == "15.1"
    update = audit(backend, "device.update")[-1].body["device"]
    if backend.dialect_name == "postgresql":
        # the sync's write found Alice changed, read her again and merged onto the enrollment
        assert update["credential_id"] == "cred-race"
    else:
        assert update["credential_id"] == ""  # the sync wrote first; the enrollment then read its result


def test_a_device_that_keeps_changing_is_left_for_the_next_sync_not_overwritten(
    jamf: JamfSetup, fake: FakeJamf, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    sync(jamf, backend, full=True)
    for jamf_id in (1, 4):  # Alice's Mac and Dave's
        fake.computers.patch(jamf_id, "general", {"reportDate": "2026-11-25T12:00:00Z"})
        fake.computers.patch(jamf_id, "operatingSystem", {"version": "15.1", "build": "24B83"})
    # someone writes Alice's device before each of the sync's writes (in its transaction, so on both dialects)
    write_batch = DeviceRepository.update_source_parts
    writes: list[str] = []

    def enroll_first(self: DeviceRepository, updates: Any) -> dict[str, str]:
        record = self.find_by_asset_tag("macos", ALICE)
        assert record is not None
        writes.append(f"cred-{len(writes) + 1}")
        write_enrollment(Store(self._conn, self._clock), record, writes[-1])
        return write_batch(self, updates)

    monkeypatch.setattr(DeviceRepository, "update_source_parts", enroll_first)
    report = sync(jamf, backend, full=False)
    assert (report.error, report.updated, report.conflicts) == (None, 1, 1)
    assert writes == [f"cred-{attempt}" for attempt in range(1, MAX_UPDATE_ATTEMPTS + 1)]
    alice = device(devices(backend)[ALICE])
    assert alice.credential is not None and alice.credential.id == writes[-1]
    assert alice.profile is not None and alice.profile.os_version != "15.1"
    # the next sync merges the MDM's parts onto what the device now holds
    monkeypatch.undo()
    fake.computers.patch(1, "general", {"reportDate": "2026-11-25T12:05:00Z"})
    again = sync(jamf, backend, full=False)
    assert (again.updated, again.conflicts) == (1, 0)
    alice = device(devices(backend)[ALICE])
    assert alice.credential is not None and alice.credential.id == writes[-1]
    assert alice.profile is not None and alice.profile.os_version == "15.1"


# -- the stored fingerprints ---------------------------------------------------------------------------------


def stored_fingerprints(backend: Backend) -> dict[str, tuple[int, bool, int]]:
    """Each device's (fingerprint, whether it was stored for the current revision, what ``fingerprint(*parts)``
    computes from its stored document), by asset tag."""
    records = devices(backend)
    with backend.read() as store:
        found = store.devices.find_fingerprints_by_asset_tag([(r.os_type, r.asset_tag) for r in records.values()])
    parts: dict[str, tuple[Any, ...]] = {}
    for tag, record in records.items():
        spec = record.body["spec"]
        assert isinstance(spec, dict)
        parts[tag] = tuple(spec.get(path[1]) for path in MDM_PART_PATHS)
    return {d.asset_tag: (d.fingerprint, d.stored, fingerprint(*parts[d.asset_tag])) for d in found}


def raw_sql(backend_url: str, statement: str, **params: str) -> None:
    """A write past the repositories (a script, or a path that does not keep the fingerprint)."""
    with raw_engine(backend_url) as engine, engine.begin() as conn:
        conn.execute(sa.text(statement), params)


def test_the_stored_fingerprint_is_that_of_the_document_written(
    jamf: JamfSetup, fake: FakeJamf, backend: Backend
) -> None:
    sync(jamf, backend, full=True)
    created = stored_fingerprints(backend)
    assert len(created) == SYNCED_MACS
    assert all(stored and value == computed for value, stored, computed in created.values())
    fake.computers.patch(1, "general", {"reportDate": "2026-11-25T12:00:00Z"})
    fake.computers.patch(1, "operatingSystem", {"version": "15.1", "build": "24B83"})
    report = sync(jamf, backend, full=False)
    assert (report.error, report.updated) == (None, 1)
    updated = stored_fingerprints(backend)
    assert all(stored and value == computed for value, stored, computed in updated.values())
    assert updated[ALICE][0] != created[ALICE][0]
    assert devices(backend)[ALICE].revision == 2


def test_a_write_between_syncs_is_seen_by_the_next_sync(
    jamf: JamfSetup, fake: FakeJamf, backend: Backend, backend_url: str
) -> None:
    sync(jamf, backend, full=True)
    # an enrollment (as every device write of the auth service: the whole document, revision + 1)
    enroll(backend, ALICE, "cred-between")
    assert stored_fingerprints(backend)[ALICE][1]
    again = sync(jamf, backend, full=True)
    assert (again.error, again.updated, again.unchanged) == (None, 0, SYNCED_MACS)
    record = devices(backend)[ALICE]
    assert (record.revision, record.enroll_status) == (2, "enrolled")
    # a write that changes the MDM's parts and the revision but not the stored fingerprint: it is stale, not used
    statement = {
        "postgresql": "UPDATE devices SET body = jsonb_set(body, '{spec,profile,os_version}', '\"9.9\"'), "
        "revision = revision + 1 WHERE asset_tag = :tag",
        "sqlite": "UPDATE devices SET body = json_set(body, '$.spec.profile.os_version', '9.9'), "
        "revision = revision + 1 WHERE asset_tag = :tag",
    }[backend.dialect_name]
    raw_sql(backend_url, statement, tag=ALICE)
    stale = stored_fingerprints(backend)[ALICE]
    assert not stale[1] and stale[0] == stale[2]
    fixed = sync(jamf, backend, full=True)
    assert (fixed.error, fixed.updated, fixed.unchanged) == (None, 1, SYNCED_MACS - 1)
    record = devices(backend)[ALICE]
    alice = device(record)
    assert alice.profile is not None and alice.profile.os_version == "14.6.1"
    assert alice.credential is not None and alice.credential.id == "cred-between"
    assert record.revision == 4
    assert all(stored and value == computed for value, stored, computed in stored_fingerprints(backend).values())


def test_devices_without_a_stored_fingerprint_are_compared_by_their_parts_and_then_keep_one(
    jamf: JamfSetup, backend: Backend, backend_url: str
) -> None:
    sync(jamf, backend, full=True)
    # as rows written before the fingerprint was kept
    raw_sql(backend_url, "UPDATE devices SET mdm_fingerprint = NULL, mdm_fingerprint_revision = NULL")
    assert not any(stored for _, stored, _ in stored_fingerprints(backend).values())
    again = sync(jamf, backend, full=True)
    assert (again.error, again.updated, again.unchanged) == (None, 0, SYNCED_MACS)
    assert {r.revision for r in devices(backend).values()} == {1}
    assert all(stored and value == computed for value, stored, computed in stored_fingerprints(backend).values())


def test_the_lookup_takes_no_write_lock(jamf: JamfSetup, sqlite_backend: Backend) -> None:
    sync(jamf, sqlite_backend, full=True)
    sink = BackendSink(sqlite_backend)
    # another writer holds SQLite's write lock for the whole lookup: a read-only transaction does not queue
    with sqlite_backend.begin() as store:
        store.cluster.set("holder", "x")
        found = asyncio.run(sink.lookup([("macos", ALICE), ("macos", "NOPE")]))
    assert [d.asset_tag for d in found] == [ALICE]


# -- pages written one behind the walk ------------------------------------------------------------------------


def test_a_record_repeated_by_the_next_page_is_a_duplicate(
    jamf: JamfSetup, fake: FakeJamf, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a computer enrolled in Jamf while the walk is under way sorts first: every later record moves one place
    # down, and the next page starts with the last record of the page before
    newcomer = fake.computers.get(1)
    assert newcomer is not None
    newcomer = {**newcomer, "id": "0", "hardware": {**newcomer["hardware"], "serialNumber": "NEWCOMER0001"}}
    served_first_page = fake._after_page

    async def after_page(inventory: Any, ordering: Any) -> None:
        await served_first_page(inventory, ordering)
        if fake.pages_served == 1:
            fake.computers.put(newcomer)

    monkeypatch.setattr(fake, "_after_page", after_page)
    report = sync(jamf, backend, full=True, entry=replace(COMPUTERS, page_size=3))
    assert (report.error, report.duplicates, report.created, report.conflicts) == (None, 1, SYNCED_MACS, 0)
    assert "NEWCOMER0001" not in devices(backend)  # before the walk's offset: the next sync registers it
    again = sync(jamf, backend, full=True, entry=replace(COMPUTERS, page_size=3))
    assert (again.created, again.duplicates, again.unchanged) == (1, 0, SYNCED_MACS)


def test_a_page_that_cannot_be_written_ends_the_walk(
    jamf: JamfSetup, fake: FakeJamf, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_page = BackendSink._apply
    calls: list[int] = []

    def second_page_fails(self: BackendSink, *args: Any) -> Any:
        calls.append(len(calls) + 1)
        if len(calls) == 2:
            raise sa.exc.OperationalError("INSERT …", {}, Exception("database is locked"))
        return write_page(self, *args)

    monkeypatch.setattr(BackendSink, "_apply", second_page_fails)
    report = sync(jamf, backend, full=True, entry=replace(COMPUTERS, page_size=3))
    assert report.error == "the device inventory's database is unavailable: database is locked"
    # the first page is written; nothing after the failed one is, nothing is deleted, and no cut is kept
    assert (report.created, report.deleted) == (3, 0)
    assert len(devices(backend)) == 3 and calls == [1, 2]
    with backend.begin() as store:
        assert store.cluster.get(STATE_KEY_PREFIX + cut_state_key("jamf", COMPUTERS)) is None
