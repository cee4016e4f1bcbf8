"""The device resource: validation on construction, strict parsing, canonical documents and round trips."""

from __future__ import annotations

import base64
import copy
import dataclasses
import json
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import pytest

from devicetrust.errors import ValidationError
from devicetrust.types import (
    ATTESTATION_TYPES,
    ENROLL_STATUSES,
    MAX_COLLECTED_RECORDS,
    OS_TYPES,
    SOURCE_ORIGINS,
    Device,
    DeviceCredential,
    DeviceProfile,
    DeviceSource,
    FieldError,
    Metadata,
    dump_yaml,
    load_resources,
    normalize_kind,
    os_display_name,
    parse_resource,
    resource_to_dict,
)
from devicetrust.types.device import MAX_PUBLIC_KEY_BYTES, as_timestamp, format_timestamp

DEVICE_ID = "5a2b3c4d-1111-2222-3333-444455556666"
CREDENTIAL_ID = "0c5e1e36-5c5a-4b0e-9b1e-6f0f0e0d0c0b"
SERIAL = "C02XJ0ABHX87"
PUBLIC_KEY_DER = bytes(range(91))
AK_PUBLIC = b"\x00\x01\x00\x0b" + bytes(range(256)) + b"\xff\x00"
EK_SHA256 = "9f" * 32
T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)

MACOS_CREDENTIAL = DeviceCredential(
    id=CREDENTIAL_ID, attestation_type="macos_secure_enclave", public_key_der=PUBLIC_KEY_DER
)
TPM_CREDENTIAL = DeviceCredential(
    id=CREDENTIAL_ID,
    attestation_type="tpm_ekcert_trusted",
    tpm_ak_public=AK_PUBLIC,
    tpm_ekcert_serial="3a:5f:01",
    tpm_ek_public_sha256=EK_SHA256,
)


def registered(**changes: Any) -> Device:
    return dataclasses.replace(Device(id=DEVICE_ID, os_type="macos", asset_tag=SERIAL), **changes)


def enrolled(credential: DeviceCredential = MACOS_CREDENTIAL, **changes: Any) -> Device:
    return registered(enroll_status="enrolled", credential=credential, **{"owner": "alice", **changes})


def device_doc(**spec: Any) -> dict[str, Any]:
    return {
        "kind": "device",
        "version": "v1",
        "metadata": {"name": DEVICE_ID},
        "spec": {"os_type": "macos", "asset_tag": SERIAL, **spec},
    }


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def field_error(factory: Any, /, *args: Any, **kwargs: Any) -> FieldError:
    with pytest.raises(FieldError) as info:
        factory(*args, **kwargs)
    return info.value


def parse_error(doc: Any) -> str:
    with pytest.raises(ValidationError) as info:
        parse_resource(doc)
    return str(info.value)


# Constants and display names.


def test_constants() -> None:
    assert OS_TYPES == ("linux", "macos", "windows", "ios", "ipados")
    assert ENROLL_STATUSES == ("not_enrolled", "enrolled")
    assert ATTESTATION_TYPES == (
        "macos_secure_enclave",
        "tpm_ekpub",
        "tpm_ekcert",
        "tpm_ekcert_trusted",
        "unsafe_software",
    )
    assert SOURCE_ORIGINS == ("api", "jamf", "intune")
    assert MAX_COLLECTED_RECORDS == 11


@pytest.mark.parametrize(
    ("os_type", "display"),
    [("macos", "macOS"), ("linux", "Linux"), ("windows", "Windows"), ("ios", "iOS"), ("ipados", "iPadOS")],
)
def test_os_display_names(os_type: str, display: str) -> None:
    device = registered(os_type=display)

    assert device.os_type == os_type
    assert os_display_name(os_type) == display
    assert os_display_name(display) == display
    assert f'Device "{device.asset_tag}"/{os_display_name(device.os_type)} enrolled' == (
        f'Device "{SERIAL}"/{display} enrolled'
    )


def test_unknown_os_display_name_is_returned_unchanged() -> None:
    assert os_display_name("plan9") == "plan9"


# Construction.


def test_minimal_device_defaults() -> None:
    device = Device(id=DEVICE_ID, os_type="linux", asset_tag="PF3ABCDE")

    assert device.kind == "device"
    assert device.version == "v1"
    assert device.enroll_status == "not_enrolled"
    assert not device.is_enrolled
    assert device.credential is None
    assert device.collected_data == ()
    assert (device.source, device.profile, device.owner) == (None, None, "")
    assert (device.create_time, device.update_time) == (None, None)
    assert device.metadata == Metadata(name=DEVICE_ID)
    assert device.metadata.name == device.name == DEVICE_ID


def test_device_is_frozen() -> None:
    device = registered()

    with pytest.raises(dataclasses.FrozenInstanceError):
        device.owner = "mallory"  # type: ignore[misc]


@pytest.mark.parametrize("os_type", ["macOS", "MACOS", "MacOs", "Linux", "WINDOWS", "iOS", "IPADOS"])
def test_os_type_is_accepted_in_any_case_and_stored_lower_case(os_type: str) -> None:
    assert registered(os_type=os_type).os_type == os_type.lower()


@pytest.mark.parametrize("os_type", ["", "darwin", "mac os", "android", "chromeos", 1, None])
def test_unknown_os_type_is_refused(os_type: Any) -> None:
    error = field_error(Device, id=DEVICE_ID, os_type=os_type, asset_tag=SERIAL)

    assert error.field == "spec.os_type"


def test_unknown_os_type_lists_the_valid_ones() -> None:
    error = field_error(Device, id=DEVICE_ID, os_type="darwin", asset_tag=SERIAL)

    assert str(error) == 'spec.os_type: invalid OS type "darwin" (valid: linux, macos, windows, ios, ipados)'


def test_uuid_is_stored_lower_case() -> None:
    assert registered(id=DEVICE_ID.upper()).id == DEVICE_ID


@pytest.mark.parametrize(
    "device_id",
    [
        "",
        "laptop-1",
        "5a2b3c4d111122223333444455556666",
        "{5a2b3c4d-1111-2222-3333-444455556666}",
        "urn:uuid:5a2b3c4d-1111-2222-3333-444455556666",
        "5a2b3c4d-1111-2222-3333-44445555666",
        "5a2b3c4d-1111-2222-3333-4444555566667",
        "5a2b3c4g-1111-2222-3333-444455556666",
        " 5a2b3c4d-1111-2222-3333-444455556666",
    ],
)
def test_bad_uuid_is_refused(device_id: str) -> None:
    error = field_error(Device, id=device_id, os_type="macos", asset_tag=SERIAL)

    assert error.field == "metadata.name"


def test_bad_uuid_message() -> None:
    assert str(field_error(Device, id="laptop-1", os_type="macos", asset_tag=SERIAL)) == (
        'metadata.name: invalid device id "laptop-1": expected a UUID'
    )


@pytest.mark.parametrize("asset_tag", ["A", "C02XJ0ABHX87", "serial with inner spaces", "Ü" * 256, "x" * 256])
def test_good_asset_tags(asset_tag: str) -> None:
    assert registered(asset_tag=asset_tag).asset_tag == asset_tag


@pytest.mark.parametrize(
    ("asset_tag", "problem"),
    [
        ("", "must not be empty"),
        (" C02XJ0ABHX87", "must not start or end with whitespace"),
        ("C02XJ0ABHX87 ", "must not start or end with whitespace"),
        ("x" * 257, "is 257 characters long, the limit is 256"),
        ("C02\nXJ0", "must contain only printable characters"),
        ("C02\tXJ0", "must contain only printable characters"),
        ("C02\x00XJ0", "must contain only printable characters"),
        (12345, "expected a string, got an integer"),
    ],
)
def test_bad_asset_tags(asset_tag: Any, problem: str) -> None:
    error = field_error(Device, id=DEVICE_ID, os_type="macos", asset_tag=asset_tag)

    assert (error.field, error.problem) == ("spec.asset_tag", problem)


@pytest.mark.parametrize("status", ["", "ENROLLED", "pending", "unenrolled", None])
def test_bad_enroll_status(status: Any) -> None:
    error = field_error(registered, enroll_status=status)

    assert error.field == "spec.enroll_status"


def test_enrolled_without_credential_is_refused() -> None:
    error = field_error(registered, enroll_status="enrolled")

    assert str(error) == 'spec.credential: is required when enroll_status is "enrolled"'


def test_credential_without_enrollment_is_refused() -> None:
    error = field_error(registered, credential=MACOS_CREDENTIAL)

    assert error.field == "spec.credential"
    assert error.problem.startswith('must be absent when enroll_status is "not_enrolled"')


def test_credential_must_be_a_device_credential() -> None:
    error = field_error(registered, enroll_status="enrolled", credential={"id": CREDENTIAL_ID})

    assert str(error) == "spec.credential: expected a DeviceCredential, got a mapping"


@pytest.mark.parametrize(("name", "value"), [("source", "jamf"), ("profile", {})])
def test_source_and_profile_must_be_their_dataclasses(name: str, value: Any) -> None:
    assert field_error(registered, **{name: value}).field == f"spec.{name}"


@pytest.mark.parametrize("owner", ["alice", "alice@example.com", ""])
def test_good_owner(owner: str) -> None:
    assert enrolled(owner=owner).owner == owner


@pytest.mark.parametrize("owner", ["al ice", "..", 7])
def test_bad_owner(owner: Any) -> None:
    assert field_error(enrolled, owner=owner).field == "spec.owner"


# Credentials.


@pytest.mark.parametrize("attestation_type", ["tpm_ekpub", "tpm_ekcert", "tpm_ekcert_trusted"])
def test_tpm_credentials_carry_the_ak_public(attestation_type: str) -> None:
    credential = DeviceCredential(id=CREDENTIAL_ID, attestation_type=attestation_type, tpm_ak_public=AK_PUBLIC)

    assert credential.is_tpm
    assert credential.public_key_der == b""


@pytest.mark.parametrize("attestation_type", ["macos_secure_enclave", "unsafe_software"])
def test_key_credentials_carry_a_public_key(attestation_type: str) -> None:
    credential = DeviceCredential(
        id=CREDENTIAL_ID,
        attestation_type=attestation_type,
        public_key_der=bytearray(PUBLIC_KEY_DER),  # type: ignore[arg-type]
    )

    assert not credential.is_tpm
    assert credential.public_key_der == PUBLIC_KEY_DER
    assert type(credential.public_key_der) is bytes


@pytest.mark.parametrize(
    ("attestation_type", "keys", "field", "problem"),
    [
        ("tpm_ekcert", {}, "tpm_ak_public", 'is required for attestation type "tpm_ekcert"'),
        ("tpm_ekpub", {"public_key_der": PUBLIC_KEY_DER}, "tpm_ak_public", "is required"),
        (
            "tpm_ekcert_trusted",
            {"public_key_der": PUBLIC_KEY_DER, "tpm_ak_public": AK_PUBLIC},
            "public_key_der",
            'must be empty for attestation type "tpm_ekcert_trusted" (its key goes in tpm_ak_public)',
        ),
        ("macos_secure_enclave", {}, "public_key_der", 'is required for attestation type "macos_secure_enclave"'),
        ("unsafe_software", {"tpm_ak_public": AK_PUBLIC}, "public_key_der", "is required"),
        (
            "macos_secure_enclave",
            {"public_key_der": PUBLIC_KEY_DER, "tpm_ak_public": AK_PUBLIC},
            "tpm_ak_public",
            'must be empty for attestation type "macos_secure_enclave" (its key goes in public_key_der)',
        ),
    ],
)
def test_credential_key_must_match_its_attestation_type(
    attestation_type: str, keys: dict[str, bytes], field: str, problem: str
) -> None:
    error = field_error(DeviceCredential, id=CREDENTIAL_ID, attestation_type=attestation_type, **keys)

    assert error.field == field
    assert error.problem.startswith(problem)


@pytest.mark.parametrize("attestation_type", ["", "tpm", "TPM_EKCERT", "secure_enclave", None])
def test_unknown_attestation_type(attestation_type: Any) -> None:
    error = field_error(
        DeviceCredential, id=CREDENTIAL_ID, attestation_type=attestation_type, public_key_der=PUBLIC_KEY_DER
    )

    assert error.field == "attestation_type"


@pytest.mark.parametrize("key", ["AAEC", [1, 2], 7])
def test_keys_must_be_bytes(key: Any) -> None:
    error = field_error(DeviceCredential, id=CREDENTIAL_ID, attestation_type="unsafe_software", public_key_der=key)

    assert error.field == "public_key_der"
    assert error.problem.startswith("expected bytes")


def test_oversized_key_is_refused() -> None:
    error = field_error(
        DeviceCredential,
        id=CREDENTIAL_ID,
        attestation_type="tpm_ekpub",
        tpm_ak_public=b"\x00" * (MAX_PUBLIC_KEY_BYTES + 1),
    )

    assert str(error) == f"tpm_ak_public: is {MAX_PUBLIC_KEY_BYTES + 1} bytes long, the limit is {MAX_PUBLIC_KEY_BYTES}"


@pytest.mark.parametrize("credential_id", ["", "two words", "x" * 257, "id\n", None])
def test_bad_credential_id(credential_id: Any) -> None:
    error = field_error(
        DeviceCredential, id=credential_id, attestation_type="unsafe_software", public_key_der=PUBLIC_KEY_DER
    )

    assert error.field == "id"


@pytest.mark.parametrize("serial", ["3a:5f:01", "3A:5F:01", "3a5f01", "a", "0a:bc"])
def test_ekcert_serial_is_hex_stored_lower_case(serial: str) -> None:
    credential = dataclasses.replace(TPM_CREDENTIAL, tpm_ekcert_serial=serial)

    assert credential.tpm_ekcert_serial == serial.lower()


@pytest.mark.parametrize("serial", ["3a:5", "3a::5f", ":3a", "3a:", "xyz", "3a-5f", "3a 5f", "f" * 129])
def test_bad_ekcert_serial(serial: str) -> None:
    error = field_error(dataclasses.replace, TPM_CREDENTIAL, tpm_ekcert_serial=serial)

    assert error.field == "tpm_ekcert_serial"


@pytest.mark.parametrize("attestation_type", ["tpm_ekpub", "macos_secure_enclave", "unsafe_software"])
def test_ekcert_serial_needs_an_ekcert_attestation(attestation_type: str) -> None:
    key = "tpm_ak_public" if attestation_type == "tpm_ekpub" else "public_key_der"
    error = field_error(
        DeviceCredential,
        id=CREDENTIAL_ID,
        attestation_type=attestation_type,
        tpm_ekcert_serial="3a:5f",
        **{key: AK_PUBLIC},
    )

    assert error.field == "tpm_ekcert_serial"
    assert "it has no EK certificate" in error.problem


def test_ek_fingerprint_is_stored_lower_case() -> None:
    credential = dataclasses.replace(TPM_CREDENTIAL, tpm_ek_public_sha256="AB" * 32)

    assert credential.tpm_ek_public_sha256 == "ab" * 32


@pytest.mark.parametrize("fingerprint", ["ab" * 31, "ab" * 33, "zz" * 32, "sha256:" + "ab" * 32])
def test_bad_ek_fingerprint(fingerprint: str) -> None:
    error = field_error(dataclasses.replace, TPM_CREDENTIAL, tpm_ek_public_sha256=fingerprint)

    assert error.field == "tpm_ek_public_sha256"


@pytest.mark.parametrize("attestation_type", ["macos_secure_enclave", "unsafe_software"])
def test_ek_fingerprint_needs_a_tpm(attestation_type: str) -> None:
    error = field_error(
        DeviceCredential,
        id=CREDENTIAL_ID,
        attestation_type=attestation_type,
        public_key_der=PUBLIC_KEY_DER,
        tpm_ek_public_sha256=EK_SHA256,
    )

    assert error.field == "tpm_ek_public_sha256"


# Collected data.


def test_collected_data_is_kept_read_only() -> None:
    records = [{"serial_number": SERIAL, "os_type": "macos"}] * MAX_COLLECTED_RECORDS
    device = enrolled(collected_data=records)

    assert len(device.collected_data) == MAX_COLLECTED_RECORDS
    assert isinstance(device.collected_data, tuple)
    assert device.collected_data[0] == {"serial_number": SERIAL, "os_type": "macos"}
    with pytest.raises(TypeError):
        device.collected_data[0]["serial_number"] = "other"  # type: ignore[index]


def test_collected_data_is_copied() -> None:
    record = {"serial_number": SERIAL}
    device = enrolled(collected_data=(record,))
    record["serial_number"] = "changed"

    assert device.collected_data[0]["serial_number"] == SERIAL


def test_records_of_a_device_carry_over_to_a_new_device_as_they_are() -> None:
    """A device built from another's records (each authentication appends one) takes them as they are: they were
    checked once and cannot change. New records are still checked."""
    device = enrolled(collected_data=[{"serial_number": SERIAL, "os_type": "macos"}])
    again = dataclasses.replace(device, collected_data=(*device.collected_data, {"serial_number": SERIAL}))
    assert again.collected_data[0] is device.collected_data[0]
    assert again.collected_data[1] == {"serial_number": SERIAL} and again.collected_data[1] == {"serial_number": SERIAL}
    assert dict(again.collected_data[1]) == {"serial_number": SERIAL}
    assert again.collected_data[1] != {"serial_number": "other"}
    with pytest.raises(TypeError):
        hash(again.collected_data[0])
    error = field_error(
        lambda **kw: dataclasses.replace(device, **kw), collected_data=(*device.collected_data, {"": "x"})
    )
    assert error.field == "spec.collected_data[1]"


def test_too_many_collected_records() -> None:
    error = field_error(enrolled, collected_data=[{}] * (MAX_COLLECTED_RECORDS + 1))

    assert error.field == "spec.collected_data"
    assert error.problem.startswith("has 12 records, the limit is 11")


@pytest.mark.parametrize(
    ("records", "field", "problem"),
    [
        ({"a": "b"}, "spec.collected_data", "expected a list of mappings, got a mapping"),
        ("abc", "spec.collected_data", "expected a list of mappings, got a string"),
        ([{"a": "b"}, ["a"]], "spec.collected_data[1]", "expected a mapping of strings, got a list"),
        ([{"os_version": 14.1}], "spec.collected_data[0].os_version", "expected a string, got a number"),
        ([{"n": None}], "spec.collected_data[0].n", "expected a string, got null"),
        ([{"n": ["a"]}], "spec.collected_data[0].n", "expected a string, got a list"),
        ([{1: "a"}], "spec.collected_data[0]", "keys must be non-empty strings, got an integer"),
        ([{"": "a"}], "spec.collected_data[0]", 'keys must be non-empty strings, got ""'),
        (
            [{"k" * 65: "a"}],
            "spec.collected_data[0]",
            f'key "{"k" * 64}..." is 65 characters long, the limit is 64',
        ),
        ([{"k": "v" * 257}], "spec.collected_data[0].k", "is 257 characters long, the limit is 256"),
    ],
)
def test_bad_collected_data(records: Any, field: str, problem: str) -> None:
    error = field_error(enrolled, collected_data=records)

    assert (error.field, error.problem) == (field, problem)


def test_collected_data_limits_are_inclusive() -> None:
    device = enrolled(collected_data=[{"k" * 64: "v" * 256}])

    assert device.collected_data[0]["k" * 64] == "v" * 256


# Source and profile.


@pytest.mark.parametrize("origin", SOURCE_ORIGINS)
def test_source_origins(origin: str) -> None:
    assert DeviceSource(name="jamf-prod", origin=origin).origin == origin


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"name": "jamf", "origin": "JAMF"}, "origin"),
        ({"name": "jamf", "origin": "mdm"}, "origin"),
        ({"name": "", "origin": "jamf"}, "name"),
        ({"name": "a\nb", "origin": "jamf"}, "name"),
    ],
)
def test_bad_source(kwargs: dict[str, Any], field: str) -> None:
    assert field_error(DeviceSource, **kwargs).field == field


def test_profile_defaults_and_normalization() -> None:
    profile = DeviceProfile(
        os_usernames=["alice", "bob"],  # type: ignore[arg-type]
        update_time="2026-11-26T13:00:00+01:00",  # type: ignore[arg-type]
    )

    assert profile.os_usernames == ("alice", "bob")
    assert profile.update_time == T0
    assert profile.update_time.tzinfo is UTC
    assert DeviceProfile().os_usernames == ()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"os_usernames": "alice"}, "os_usernames"),
        ({"os_usernames": ["alice", ""]}, "os_usernames[1]"),
        ({"os_usernames": ["alice", 3]}, "os_usernames[1]"),
        ({"model_identifier": 14}, "model_identifier"),
        ({"os_version": "x" * 257}, "os_version"),
        ({"external_id": "a\x00"}, "external_id"),
        ({"update_time": "yesterday"}, "update_time"),
    ],
)
def test_bad_profile(kwargs: dict[str, Any], field: str) -> None:
    assert field_error(DeviceProfile, **kwargs).field == field


# Timestamps.


@pytest.mark.parametrize(
    "value",
    [
        "2026-11-26T12:00:00Z",
        "2026-11-26t12:00:00z",
        "2026-11-26T13:00:00+01:00",
        "2026-11-26T07:00:00-05:00",
        "2026-11-26T12:00:00.000000000Z",
        T0,
        T0.astimezone(timezone(timedelta(hours=5, minutes=30))),
    ],
)
def test_timestamps_are_normalized_to_utc(value: Any) -> None:
    device = registered(create_time=value, update_time=value)

    assert device.create_time == device.update_time == T0
    assert device.create_time is not None and device.create_time.tzinfo is UTC


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("2026-11-26", "expected an RFC 3339 timestamp"),
        ("2026-11-26 12:00:00Z", "expected an RFC 3339 timestamp"),
        ("20261126T120000Z", "expected an RFC 3339 timestamp"),
        ("2026-13-26T12:00:00Z", "invalid timestamp"),
        ("2026-11-26T12:00:00", "the timestamp has no time zone"),
        (datetime(2026, 11, 26, 12), "the timestamp has no time zone"),
        (date(2026, 11, 26), "expected an RFC 3339 timestamp such as"),
        (1700000000, "expected an RFC 3339 timestamp such as"),
    ],
)
def test_bad_timestamps(value: Any, problem: str) -> None:
    error = field_error(registered, create_time=value)

    assert error.field == "spec.create_time"
    assert error.problem.startswith(problem)


def test_timestamp_formatting() -> None:
    assert format_timestamp(T0) == "2026-11-26T12:00:00Z"
    assert format_timestamp(T0 + timedelta(microseconds=500)) == "2026-11-26T12:00:00.000500Z"
    assert format_timestamp(T0.astimezone(timezone(timedelta(hours=-3)))) == "2026-11-26T12:00:00Z"
    assert as_timestamp(format_timestamp(T0), "t") == T0


# Unenroll.


def test_unenrolled_clears_credential_owner_and_collected_data() -> None:
    device = enrolled(
        credential=TPM_CREDENTIAL,
        collected_data=[{"serial_number": SERIAL}],
        source=DeviceSource(name="jamf", origin="jamf"),
        profile=DeviceProfile(os_version="14.1"),
        create_time=T0,
        update_time=T0,
    )

    cleared = device.unenrolled()

    assert cleared == Device(
        id=DEVICE_ID,
        os_type="macos",
        asset_tag=SERIAL,
        source=DeviceSource(name="jamf", origin="jamf"),
        profile=DeviceProfile(os_version="14.1"),
        create_time=T0,
        update_time=T0,
    )
    assert device.is_enrolled
    assert not cleared.is_enrolled


def test_unenrolling_a_registered_device_changes_nothing() -> None:
    assert registered().unenrolled() == registered()


# Parsing.


def test_parse_full_document() -> None:
    doc = device_doc(
        os_type="macOS",
        enroll_status="enrolled",
        credential={
            "id": CREDENTIAL_ID,
            "attestation_type": "tpm_ekcert",
            "tpm_ak_public": b64(AK_PUBLIC),
            "tpm_ekcert_serial": "3A:5F",
            "tpm_ek_public_sha256": EK_SHA256,
        },
        collected_data=[{"serial_number": SERIAL, "os_type": "macos"}, {"serial_number": SERIAL}],
        source={"name": "jamf", "origin": "jamf"},
        profile={
            "model_identifier": "MacBookPro18,3",
            "os_version": "14.1",
            "os_build": "23B74",
            "os_build_supplemental": "",
            "os_usernames": ["alice", "admin"],
            "jamf_binary_version": "11.1.0",
            "external_id": "42",
            "update_time": "2026-11-26T12:00:00Z",
        },
        owner="alice",
        create_time="2026-11-26T12:00:00Z",
        update_time=T0,
    )

    device = parse_resource(doc)

    assert device == Device(
        id=DEVICE_ID,
        os_type="macos",
        asset_tag=SERIAL,
        enroll_status="enrolled",
        credential=DeviceCredential(
            id=CREDENTIAL_ID,
            attestation_type="tpm_ekcert",
            tpm_ak_public=AK_PUBLIC,
            tpm_ekcert_serial="3a:5f",
            tpm_ek_public_sha256=EK_SHA256,
        ),
        collected_data=({"serial_number": SERIAL, "os_type": "macos"}, {"serial_number": SERIAL}),
        source=DeviceSource(name="jamf", origin="jamf"),
        profile=DeviceProfile(
            model_identifier="MacBookPro18,3",
            os_version="14.1",
            os_build="23B74",
            os_usernames=("alice", "admin"),
            jamf_binary_version="11.1.0",
            external_id="42",
            update_time=T0,
        ),
        owner="alice",
        create_time=T0,
        update_time=T0,
    )


def test_parse_from_yaml_with_unquoted_timestamps() -> None:
    text = f"""
kind: device
version: v1
metadata:
  name: {DEVICE_ID.upper()}
spec:
  os_type: Linux
  asset_tag: PF3ABCDE
  enroll_status: enrolled
  credential:
    id: {CREDENTIAL_ID}
    attestation_type: unsafe_software
    public_key_der: {b64(PUBLIC_KEY_DER)}
  create_time: 2026-11-26T12:00:00Z
"""

    (device,) = load_resources(text, "device.yaml")

    assert isinstance(device, Device)
    assert device.id == DEVICE_ID
    assert device.os_type == "linux"
    assert device.credential == DeviceCredential(
        id=CREDENTIAL_ID, attestation_type="unsafe_software", public_key_der=PUBLIC_KEY_DER
    )
    assert device.create_time == T0


def test_null_optional_fields_mean_unset() -> None:
    doc = device_doc(enroll_status=None, credential=None, collected_data=None, source=None, profile=None, owner=None)

    assert parse_resource(doc) == registered()


def test_empty_profile_is_kept() -> None:
    assert parse_resource(device_doc(profile={})) == registered(profile=DeviceProfile())


@pytest.mark.parametrize(
    ("changes", "path"),
    [
        ({"spec.serial": "x"}, "spec.serial"),
        (
            {"spec.credential": {"id": CREDENTIAL_ID, "attestation_type": "unsafe_software", "key": "AA=="}},
            "spec.credential.key",
        ),
        ({"spec.source": {"name": "jamf", "origin": "jamf", "url": "https://jamf"}}, "spec.source.url"),
        ({"spec.profile": {"os_versoin": "14"}}, "spec.profile.os_versoin"),
        ({"metadata.labels": {"a": "b"}}, "metadata.labels"),
        ({"metadata.description": "d"}, "metadata.description"),
        ({"status": {}}, "status"),
    ],
)
def test_unknown_fields_are_named_by_path(changes: dict[str, Any], path: str) -> None:
    doc = device_doc(enroll_status="enrolled") if "spec.credential" in changes else device_doc()
    for dotted, value in changes.items():
        target = doc
        *parents, last = dotted.split(".")
        for parent in parents:
            target = target[parent]
        target[last] = value

    message = parse_error(doc)

    assert message.startswith(f'device "{DEVICE_ID}": unknown field "{path}"')


def test_unknown_field_hint() -> None:
    message = parse_error(device_doc(assettag="x"))

    assert message == f'device "{DEVICE_ID}": unknown field "spec.assettag" (did you mean "asset_tag"?)'


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ({"metadata": {}}, "metadata.name: required field is missing"),
        ({"spec": {"asset_tag": SERIAL}}, "spec.os_type: required field is missing"),
        ({"spec": {"os_type": "macos"}}, "spec.asset_tag: required field is missing"),
        ({"spec": None}, "spec.os_type: required field is missing"),
        ({"spec": ["x"]}, "spec: expected a mapping, got a list"),
        (
            {"spec": {"os_type": "macos", "asset_tag": SERIAL, "enroll_status": "enrolled", "credential": {}}},
            "spec.credential.id: required field is missing",
        ),
        (
            {
                "spec": {
                    "os_type": "macos",
                    "asset_tag": SERIAL,
                    "enroll_status": "enrolled",
                    "credential": {"id": CREDENTIAL_ID},
                }
            },
            "spec.credential.attestation_type: required field is missing",
        ),
        (
            {"spec": {"os_type": "macos", "asset_tag": SERIAL, "source": {"name": "jamf"}}},
            "spec.source.origin: required field is missing",
        ),
        ({"version": "v2"}, 'version: unsupported version "v2" (supported: v1)'),
    ],
)
def test_missing_and_malformed_parts(doc: dict[str, Any], expected: str) -> None:
    full = device_doc()
    full.update(doc)

    message = parse_error(full)

    assert expected in message
    assert message.startswith("device")


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("not base64!", "invalid base64"),
        ("AAE", "invalid base64"),
        ("AA\nEC", "invalid base64"),
        (123, "expected a base64 string, got an integer"),
        ([1, 2], "expected a base64 string, got a list"),
    ],
)
def test_bad_base64(value: Any, problem: str) -> None:
    doc = device_doc(
        enroll_status="enrolled",
        credential={"id": CREDENTIAL_ID, "attestation_type": "unsafe_software", "public_key_der": value},
    )

    assert parse_error(doc) == f'device "{DEVICE_ID}": spec.credential.public_key_der: {problem}'


def test_credential_type_mismatch_is_named_under_spec_credential() -> None:
    doc = device_doc(
        enroll_status="enrolled",
        credential={"id": CREDENTIAL_ID, "attestation_type": "tpm_ekpub", "public_key_der": b64(PUBLIC_KEY_DER)},
    )

    assert parse_error(doc) == (
        f'device "{DEVICE_ID}": spec.credential.tpm_ak_public: is required for attestation type "tpm_ekpub"'
    )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"enroll_status": "enrolled"}, 'spec.credential: is required when enroll_status is "enrolled"'),
        ({"os_type": "beos"}, 'spec.os_type: invalid OS type "beos"'),
        ({"collected_data": [{}] * 12}, "spec.collected_data: has 12 records, the limit is 11"),
        ({"collected_data": [{"os_version": 14}]}, "spec.collected_data[0].os_version: expected a string"),
        ({"profile": {"os_usernames": "alice"}}, "spec.profile.os_usernames: expected a list of strings"),
        ({"source": {"name": "x", "origin": "mdm"}}, 'spec.source.origin: unknown origin "mdm"'),
        ({"create_time": "now"}, "spec.create_time: expected an RFC 3339 timestamp"),
    ],
)
def test_invalid_values_are_named_with_the_device(spec: dict[str, Any], message: str) -> None:
    assert parse_error(device_doc(**spec)).startswith(f'device "{DEVICE_ID}": {message}')


def test_bad_uuid_in_document() -> None:
    doc = device_doc()
    doc["metadata"]["name"] = "laptop"

    assert parse_error(doc) == 'device "laptop": metadata.name: invalid device id "laptop": expected a UUID'


@pytest.mark.parametrize("name", ["device", "devices", "Devices", " device "])
def test_normalize_kind(name: str) -> None:
    assert normalize_kind(name) == "device"


# Documents and round trips.


SAMPLES: tuple[Device, ...] = (
    registered(),
    registered(os_type="windows", asset_tag="serial with spaces", source=DeviceSource(name="api", origin="api")),
    enrolled(),
    enrolled(credential=TPM_CREDENTIAL, os_type="linux"),
    enrolled(
        credential=DeviceCredential(id="cred-1", attestation_type="tpm_ekpub", tpm_ak_public=b"\x00" * 3),
        os_type="windows",
    ),
    enrolled(
        credential=DeviceCredential(
            id=CREDENTIAL_ID, attestation_type="unsafe_software", public_key_der=bytes(range(256)) * 2
        ),
        collected_data=[{"serial_number": SERIAL, "os_version": "14.1", "empty": ""}] * MAX_COLLECTED_RECORDS,
        source=DeviceSource(name="jamf-prod", origin="jamf"),
        profile=DeviceProfile(
            model_identifier="MacBookPro18,3",
            os_version="14.1",
            os_build="23B74",
            os_build_supplemental="(a)",
            os_usernames=("alice", "admin"),
            jamf_binary_version="11.1.0",
            external_id="42",
            update_time=T0 + timedelta(microseconds=123456),
        ),
        create_time=T0,
        update_time=T0 + timedelta(days=1),
    ),
    registered(os_type="ipados", profile=DeviceProfile(), source=DeviceSource(name="intune", origin="intune")),
)


@pytest.mark.parametrize("device", SAMPLES)
def test_parse_of_to_dict_is_identity(device: Device) -> None:
    assert parse_resource(resource_to_dict(device)) == device


@pytest.mark.parametrize("device", SAMPLES)
def test_yaml_and_json_round_trips(device: Device) -> None:
    document = resource_to_dict(device)

    assert load_resources(dump_yaml([document])) == (device,)
    assert parse_resource(json.loads(json.dumps(document))) == device


def test_all_samples_round_trip_as_one_yaml_stream() -> None:
    assert load_resources(dump_yaml([resource_to_dict(device) for device in SAMPLES])) == SAMPLES


def test_registered_device_document() -> None:
    assert resource_to_dict(registered()) == {
        "kind": "device",
        "version": "v1",
        "metadata": {"name": DEVICE_ID},
        "spec": {"os_type": "macos", "asset_tag": SERIAL, "enroll_status": "not_enrolled"},
    }


def test_full_device_document() -> None:
    device = SAMPLES[5]

    spec = resource_to_dict(device)["spec"]

    # every field, in the dataclass's order; the id is metadata.name
    assert list(spec) == [field.name for field in dataclasses.fields(Device) if field.name != "id"]
    assert spec["credential"] == {
        "id": CREDENTIAL_ID,
        "attestation_type": "unsafe_software",
        "public_key_der": b64(bytes(range(256)) * 2),
    }
    assert spec["collected_data"][0] == {"serial_number": SERIAL, "os_version": "14.1", "empty": ""}
    assert spec["source"] == {"name": "jamf-prod", "origin": "jamf"}
    assert spec["profile"] == {
        "model_identifier": "MacBookPro18,3",
        "os_version": "14.1",
        "os_build": "23B74",
        "os_build_supplemental": "(a)",
        "os_usernames": ["alice", "admin"],
        "jamf_binary_version": "11.1.0",
        "external_id": "42",
        "update_time": "2026-11-26T12:00:00.123456Z",
    }
    assert spec["owner"] == "alice"
    assert spec["create_time"] == "2026-11-26T12:00:00Z"
    assert spec["update_time"] == "2026-11-27T12:00:00Z"


def test_tpm_credential_document() -> None:
    assert resource_to_dict(enrolled(credential=TPM_CREDENTIAL))["spec"]["credential"] == {
        "id": CREDENTIAL_ID,
        "attestation_type": "tpm_ekcert_trusted",
        "tpm_ak_public": b64(AK_PUBLIC),
        "tpm_ekcert_serial": "3a:5f:01",
        "tpm_ek_public_sha256": EK_SHA256,
    }


def test_numeric_looking_strings_stay_strings_in_yaml() -> None:
    device = registered(asset_tag="12345", profile=DeviceProfile(os_version="14.10", external_id="007"))

    assert load_resources(dump_yaml([resource_to_dict(device)])) == (device,)


def test_document_is_a_fresh_plain_object() -> None:
    device = enrolled(collected_data=[{"a": "b"}])
    document = resource_to_dict(device)
    copy.deepcopy(document)["spec"]["collected_data"][0]["a"] = "c"
    document["spec"]["collected_data"][0]["a"] = "c"

    assert resource_to_dict(device)["spec"]["collected_data"] == [{"a": "b"}]
    json.dumps(document)


@pytest.mark.parametrize("records_before", [1, 2, 10, 11])
def test_an_authentication_record_is_appended_as_a_rebuilt_device_would_hold_it(records_before: int) -> None:
    records = tuple({"serial_number": SERIAL, "n": str(i)} for i in range(records_before))
    device = Device(
        id=DEVICE_ID,
        os_type="macos",
        asset_tag=SERIAL,
        enroll_status="enrolled",
        credential=MACOS_CREDENTIAL,
        collected_data=records,
        owner="alice",
    )
    later = datetime(2026, 12, 1, 10, 0, tzinfo=timezone(timedelta(hours=1)))
    appended = device.with_authentication({"serial_number": SERIAL, "n": "new"}, later)
    kept = [*records[1:], {"serial_number": SERIAL, "n": "new"}][-10:]
    assert appended == dataclasses.replace(device, collected_data=(records[0], *kept), update_time=later)
    assert appended.collected_data[0] == records[0] and len(appended.collected_data) == min(records_before + 1, 11)
    assert appended.update_time == later and appended.update_time.tzinfo == UTC
    assert device.collected_data == records  # the device itself is unchanged


def test_an_authentication_record_is_checked_before_it_is_kept() -> None:
    device = Device(id=DEVICE_ID, os_type="macos", asset_tag=SERIAL, collected_data=({"serial_number": SERIAL},))
    with pytest.raises(ValidationError, match="collected_data"):
        device.with_authentication({"serial_number": 7}, datetime.now(UTC))  # type: ignore[dict-item]
    with pytest.raises(ValidationError, match="update_time"):
        device.with_authentication({"serial_number": SERIAL}, datetime(2026, 12, 1))
