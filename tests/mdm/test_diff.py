"""The pure sync core: observations vs stored devices -> writes, skips, missing devices and their fate."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from devicetrust.mdm.diff import (
    Action,
    Gone,
    Observation,
    Present,
    SourceDevice,
    StoredDevice,
    Unknown,
    decide_missing,
    device_key,
    fingerprint,
    lookup_keys,
    missing,
    missing_policy,
    new_device_body,
    observation_fingerprint,
    plan_page,
    reconcile,
    registration,
    spec_fingerprint,
)
from devicetrust.types import (
    Device,
    DeviceCredential,
    DeviceProfile,
    DeviceSource,
    parse_resource,
    resource_to_dict,
)
from devicetrust.types.device import format_timestamp
from devicetrust.types.mdm_parts import credential_id, with_mdm_parts

JAMF = DeviceSource("jamf", "jamf")
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
EARLIER = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def observation(
    serial: str = "C02XJ0ABHX87", jamf_id: str = "1", os_type: str = "macos", **profile: object
) -> Observation:
    values: dict[str, object] = {
        "model_identifier": "MacBookPro18,3",
        "os_version": "14.6.1",
        "os_build": "23G93",
        "os_usernames": ("alice", "jamfadmin"),
        "jamf_binary_version": "11.9.1-t1726247520",
    }
    values.update(profile)
    return Observation(
        external_id=jamf_id,
        os_type=os_type,
        asset_tag=serial,
        profile=DeviceProfile(external_id=jamf_id, **values),  # type: ignore[arg-type]
        report_time=NOW,
        name="Alice's MacBook Pro",
    )


def stored(obs: Observation, *, source: DeviceSource | None = JAMF, revision: int = 1) -> StoredDevice:
    body = new_device_body(obs, source or JAMF, str(uuid.uuid4()), EARLIER)
    if source is None:
        del body["spec"]["source"]
        del body["spec"]["profile"]
    return StoredDevice(
        id=body["metadata"]["name"],
        os_type=obs.os_type,
        asset_tag=obs.asset_tag,
        source_name=None if source is None else source.name,
        source_origin=None if source is None else source.origin,
        external_id=obs.external_id if source is not None else None,
        revision=revision,
        fingerprint=spec_fingerprint(body),
    )


# -- document parts ---------------------------------------------------------------------------------------


def test_new_device_body_is_a_valid_unenrolled_registration() -> None:
    obs = observation()
    body = new_device_body(obs, JAMF, "5a2b3c4d-1111-2222-3333-444455556666", NOW)
    device = parse_resource(body)
    assert isinstance(device, Device)
    assert (device.os_type, device.asset_tag, device.enroll_status, device.owner) == (
        "macos",
        "C02XJ0ABHX87",
        "not_enrolled",
        "",
    )
    assert device.source == JAMF
    assert device.profile is not None
    assert (device.profile.external_id, device.profile.model_identifier, device.profile.update_time) == (
        "1",
        "MacBookPro18,3",
        NOW,
    )
    assert device.profile.os_usernames == ("alice", "jamfadmin")
    assert (device.create_time, device.update_time) == (NOW, NOW)


def test_fingerprint_ignores_the_profile_update_time_and_sees_every_mdm_field() -> None:
    obs = observation()
    early = new_device_body(obs, JAMF, str(uuid.uuid4()), EARLIER)
    late = new_device_body(obs, JAMF, str(uuid.uuid4()), NOW)
    assert spec_fingerprint(early) == spec_fingerprint(late) == observation_fingerprint(obs, JAMF)
    assert observation_fingerprint(observation(os_version="15.1"), JAMF) != observation_fingerprint(obs, JAMF)
    assert observation_fingerprint(obs, DeviceSource("jamf2", "jamf")) != observation_fingerprint(obs, JAMF)
    assert fingerprint(None, None) == spec_fingerprint({"kind": "device"})


def test_the_mdm_parts_replace_only_what_the_mdm_owns() -> None:
    credential = DeviceCredential(id="cred-1", attestation_type="unsafe_software", public_key_der=b"\x30\x59key")
    enrolled = Device(
        id="5a2b3c4d-1111-2222-3333-444455556666",
        os_type="macos",
        asset_tag="C02XJ0ABHX87",
        enroll_status="enrolled",
        credential=credential,
        collected_data=({"serial_number": "C02XJ0ABHX87", "record_time": "2026-01-02T03:04:05Z"},),
        source=JAMF,
        profile=DeviceProfile(os_version="14.0", external_id="1"),
        owner="alice",
        create_time=EARLIER,
        update_time=EARLIER,
    )
    body = resource_to_dict(enrolled)
    source_part, profile_part = registration(observation(os_version="15.1"), JAMF)
    stamp = format_timestamp(NOW)
    merged = with_mdm_parts(body, source_part, {**profile_part, "update_time": stamp}, stamp)
    assert body == resource_to_dict(enrolled)  # the input is left alone
    device = parse_resource(merged)
    assert isinstance(device, Device)
    assert (device.id, device.enroll_status, device.credential, device.owner) == (
        enrolled.id,
        "enrolled",
        credential,
        "alice",
    )
    assert device.collected_data == enrolled.collected_data
    assert (device.create_time, device.update_time) == (EARLIER, NOW)
    assert device.profile is not None
    assert (device.profile.os_version, device.profile.update_time) == ("15.1", NOW)
    assert merged["spec"]["source"] == source_part
    assert credential_id(merged) == "cred-1" and credential_id(body) == "cred-1"
    # a document whose spec is not an object gets one holding just the parts
    assert with_mdm_parts({"kind": "device", "spec": None}, source_part, profile_part, stamp)["spec"] == {
        "source": source_part,
        "profile": profile_part,
        "update_time": stamp,
    }
    assert credential_id({"spec": {"credential": {"id": 7}}}) == credential_id({"spec": []}) == ""
    assert {k: v for k, v in merged["spec"]["profile"].items() if k != "update_time"} == profile_part


# -- reconciling ------------------------------------------------------------------------------------------


def test_reconcile() -> None:
    obs = observation()
    assert reconcile(obs, None, JAMF) is Action.CREATE
    assert reconcile(obs, stored(obs), JAMF) is Action.UNCHANGED
    assert reconcile(observation(os_version="15.1"), stored(obs), JAMF) is Action.UPDATE
    # the same Mac re-enrolled in Jamf under a new id
    assert reconcile(observation(jamf_id="77"), stored(obs), JAMF) is Action.UPDATE
    # registered by hand (no source) or by another MDM: never touched
    assert reconcile(obs, stored(obs, source=None), JAMF) is Action.FOREIGN
    assert reconcile(obs, stored(obs, source=DeviceSource("intune", "intune")), JAMF) is Action.FOREIGN
    assert reconcile(obs, stored(obs, source=DeviceSource("jamf-eu", "jamf")), JAMF) is Action.FOREIGN


def test_plan_page_sorts_adds_updates_noops_and_others() -> None:
    same = observation("SAME0000001", "1")
    changed = observation("CHANGED0001", "2")
    new = observation("NEW00000001", "3")
    manual = observation("MANUAL00001", "4")
    other = observation("INTUNE00001", "5")
    index = {
        same.key: stored(same),
        changed.key: stored(observation("CHANGED0001", "2", os_version="13.0")),
        manual.key: stored(manual, source=None),
        other.key: stored(other, source=DeviceSource("intune", "intune")),
    }
    plan = plan_page([same, changed, new, manual, other, same], index, frozenset(), JAMF)
    assert plan.apply == (changed, new)
    assert plan.new_keys == frozenset({new.key})
    assert plan.unchanged == 1
    assert plan.foreign == (manual, other)
    assert plan.duplicates == 1  # the repeated record
    assert plan.seen == frozenset(o.key for o in (same, changed, new, manual, other))
    # seen on an earlier page: a duplicate (offset paging repeats records when the inventory grows mid-walk)
    again = plan_page([new], index, plan.seen, JAMF)
    assert (again.apply, again.duplicates) == ((), 1)


def test_lookup_keys_are_the_pages_unseen_identities_once() -> None:
    a, b, c = observation("A0000000001", "1"), observation("B0000000001", "2"), observation("A0000000001", "3", "ios")
    assert lookup_keys([a, b, a, c], {b.key}) == [("macos", "A0000000001"), ("ios", "A0000000001")]
    assert lookup_keys([], set()) == []


def test_registration_is_what_the_device_document_holds() -> None:
    obs = observation(update_time=NOW)
    spec = new_device_body(obs, JAMF, str(uuid.uuid4()), EARLIER)["spec"]
    source_part, profile_part = registration(obs, JAMF)
    assert source_part == spec["source"] == {"name": "jamf", "origin": "jamf"}
    assert profile_part == {k: v for k, v in spec["profile"].items() if k != "update_time"}
    assert "update_time" not in profile_part


# -- missing devices --------------------------------------------------------------------------------------


def source_device(obs: Observation) -> SourceDevice:
    return SourceDevice(str(uuid.uuid4()), obs.os_type, obs.asset_tag, obs.external_id)


def test_missing_is_the_sources_unseen_devices_of_the_synced_platforms() -> None:
    seen_mac = observation("SEEN0000001", "1")
    gone_mac = observation("GONE0000001", "2")
    iphone = observation("IPHONE00001", "3", os_type="ios")
    devices = [source_device(seen_mac), source_device(gone_mac), source_device(iphone)]
    result = list(missing(devices, {seen_mac.key}, {"macos"}))
    assert [d.asset_tag for d in result] == ["GONE0000001"]
    assert [d.asset_tag for d in missing(devices, set(), {"ios", "ipados"})] == ["IPHONE00001"]


def test_zero_seen_and_noop_keep_everything() -> None:
    assert missing_policy(0, records_read=0, delete_missing=True) is None
    assert missing_policy(3, records_read=10, delete_missing=True) is None
    kept = missing_policy(3, records_read=0, delete_missing=True)
    assert kept is not None and "no devices" in kept
    noop = missing_policy(3, records_read=10, delete_missing=False)
    assert noop is not None and "NOOP" in noop


@pytest.mark.parametrize(
    ("recheck", "delete", "reason"),
    [
        (Gone(), True, "no longer in the MDM"),
        (Unknown("Jamf answered 503"), False, "re-check failed: Jamf answered 503"),
        (Present("macos", "OTHERSERIAL"), True, "now belongs to serial OTHERSERIAL"),
        (Present("macos", None), True, "serial (none)"),
        (Present(None, "C02XJ0ABHX87"), True, "platform (unsupported)"),
        (Present("macos", "C02XJ0ABHX87", in_scope=False), True, "no longer matches the inventory filter"),
        (Present("macos", "C02XJ0ABHX87", in_scope=True), False, "still in the MDM"),
        (Present("macos", "C02XJ0ABHX87"), False, "still in the MDM"),
    ],
)
def test_decide_missing(recheck: Gone | Present | Unknown, delete: bool, reason: str) -> None:
    verdict = decide_missing(source_device(observation()), recheck)
    assert verdict.delete is delete
    assert reason in verdict.reason


def test_device_key() -> None:
    assert device_key("macos", "C02XJ0ABHX87") == "macos/C02XJ0ABHX87" == observation().key
