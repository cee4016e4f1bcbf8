"""The ``device`` resource (v1): a registered machine, its enrollment state and device credential.

The shape is Teleport's DeviceV1. ``metadata.name`` is the device id (a UUID); the pair (os_type, asset_tag)
identifies the hardware. A device is ``enrolled`` exactly when it holds a credential: the key (macOS Secure
Enclave, unsafe software key) or TPM attestation key it proves itself with on every authentication.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import ClassVar

from devicetrust.types._validation import (
    FieldError,
    as_instance,
    as_str,
    check_name,
    describe,
    join_path,
    show,
)
from devicetrust.types.metadata import Metadata

OS_TYPES: tuple[str, ...] = ("linux", "macos", "windows", "ios", "ipados")
_OS_DISPLAY_NAMES: Mapping[str, str] = {
    "linux": "Linux",
    "macos": "macOS",
    "windows": "Windows",
    "ios": "iOS",
    "ipados": "iPadOS",
}

NOT_ENROLLED = "not_enrolled"
ENROLLED = "enrolled"
ENROLL_STATUSES: tuple[str, ...] = (NOT_ENROLLED, ENROLLED)

ATTESTATION_TYPES: tuple[str, ...] = (
    "macos_secure_enclave",
    "tpm_ekpub",
    "tpm_ekcert",
    "tpm_ekcert_trusted",
    "unsafe_software",
)
#: TPM credentials carry the attestation key's public area (tpm_ak_public); the others a PKIX DER key.
TPM_ATTESTATION_TYPES: tuple[str, ...] = ("tpm_ekpub", "tpm_ekcert", "tpm_ekcert_trusted")
#: Attestation types backed by an EK certificate (so a tpm_ekcert_serial may be recorded).
EKCERT_ATTESTATION_TYPES: tuple[str, ...] = ("tpm_ekcert", "tpm_ekcert_trusted")

SOURCE_ORIGINS: tuple[str, ...] = ("api", "jamf", "intune")

#: The enrollment record plus the 10 most recent authentication records.
MAX_COLLECTED_RECORDS = 11
MAX_COLLECTED_KEY_CHARS = 64
MAX_COLLECTED_VALUE_CHARS = 256
MAX_ASSET_TAG_CHARS = 256
#: Free-text fields: credential id, profile values, source name.
MAX_TEXT_CHARS = 256
#: A P-256 PKIX key is 91 bytes and an RSA-2048 TPMT_PUBLIC about 280; anything this large is not a key.
MAX_PUBLIC_KEY_BYTES = 4096
MAX_EKCERT_SERIAL_CHARS = 128
MAX_OS_USERNAMES = 1024

_UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
# Colon-separated octets ("3a:5f:01") or plain hex ("3a5f01"), as certificate tools print serials.
_EKCERT_SERIAL_RE = re.compile(r"[0-9a-fA-F]{1,2}(?::[0-9a-fA-F]{2})*|[0-9a-fA-F]+")
_SHA256_HEX_RE = re.compile(r"[0-9a-fA-F]{64}")
# The zone is optional here so that a missing one gets its own message below.
_RFC3339_RE = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+-]\d{2}:\d{2})?")
_TIMESTAMP_EXAMPLE = '"2026-11-26T12:00:00Z"'


# -- shared checks (timestamps are also used by the lock resource) -----------------------------------------


def as_timestamp(value: object, field: str) -> datetime:
    """An RFC 3339 string or a timezone-aware datetime, as a UTC datetime. Naive datetimes are ambiguous."""
    if isinstance(value, str):
        if not _RFC3339_RE.fullmatch(value):
            raise FieldError(field, f"expected an RFC 3339 timestamp such as {_TIMESTAMP_EXAMPLE}, got {show(value)}")
        try:
            value = datetime.fromisoformat(value.upper())
        except ValueError:
            raise FieldError(field, f"invalid timestamp {show(value)}") from None
    elif not isinstance(value, datetime):
        what = "a date without a time" if isinstance(value, date) else describe(value)
        raise FieldError(field, f"expected an RFC 3339 timestamp such as {_TIMESTAMP_EXAMPLE}, got {what}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise FieldError(field, f"the timestamp has no time zone (write it with Z or an offset: {_TIMESTAMP_EXAMPLE})")
    return value.astimezone(UTC)


def format_timestamp(value: datetime) -> str:
    """RFC 3339 in UTC with a ``Z``: ``2026-11-26T12:00:00Z`` (fractions only when there are any)."""
    text = value.astimezone(UTC).isoformat()
    return text.removesuffix("+00:00") + "Z"


def _optional_timestamp(value: object, field: str) -> datetime | None:
    return None if value is None else as_timestamp(value, field)


def _text(value: object, field: str, *, allow_empty: bool = True, max_chars: int = MAX_TEXT_CHARS) -> str:
    text = as_str(value, field, allow_empty=allow_empty)
    if len(text) > max_chars:
        raise FieldError(field, f"is {len(text)} characters long, the limit is {max_chars}")
    if not text.isprintable():
        raise FieldError(field, "must contain only printable characters")
    return text


def check_device_id(value: object, field: str) -> str:
    """A device id: a UUID in its usual 8-4-4-4-12 hex form, returned lower-case."""
    device_id = as_str(value, field, allow_empty=False)
    if not _UUID_RE.fullmatch(device_id):
        raise FieldError(field, f"invalid device id {show(device_id)}: expected a UUID")
    return device_id.lower()


def check_os_type(value: object, field: str) -> str:
    """An OS type, given as stored (``macos``) or displayed (``macOS``), in any case; returned lower-case."""
    os_type = as_str(value, field, allow_empty=False).lower()
    if os_type not in OS_TYPES:
        raise FieldError(field, f"invalid OS type {show(value)} (valid: {', '.join(OS_TYPES)})")
    return os_type


def os_display_name(os_type: str) -> str:
    """``macos`` -> ``macOS``, ``ipados`` -> ``iPadOS``. An unknown value is returned unchanged."""
    return _OS_DISPLAY_NAMES.get(os_type.lower(), os_type)


def check_asset_tag(value: object, field: str) -> str:
    """The serial number: 1..256 printable characters, with no whitespace at either end."""
    tag = _text(value, field, allow_empty=False, max_chars=MAX_ASSET_TAG_CHARS)
    if tag != tag.strip():
        raise FieldError(field, "must not start or end with whitespace")
    return tag


def _as_bytes(value: object, field: str) -> bytes:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise FieldError(field, f"expected bytes, got {describe(value)}")
    data = bytes(value)
    if len(data) > MAX_PUBLIC_KEY_BYTES:
        raise FieldError(field, f"is {len(data)} bytes long, the limit is {MAX_PUBLIC_KEY_BYTES}")
    return data


class _CheckedRecord(Mapping[str, str]):
    """A collected data record that passed :func:`_collected_record`. It is read-only, so it stays valid: a device
    built again from it (each authentication appends a record) does not check it again."""

    __slots__ = ("_items",)

    def __init__(self, items: dict[str, str]) -> None:
        self._items = items

    def __getitem__(self, key: str) -> str:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, _CheckedRecord):
            return self._items == other._items
        return Mapping.__eq__(self, other)

    def __repr__(self) -> str:
        return f"_CheckedRecord({self._items!r})"


def record_items(record: Mapping[str, str]) -> Mapping[str, str]:
    """What to copy a collected data record from: a checked record's own dict, which ``dict()`` copies at C speed
    (through the Mapping interface it would look every key up in Python)."""
    return record._items if isinstance(record, _CheckedRecord) else record


def _collected_record(value: object, field: str) -> Mapping[str, str]:
    if isinstance(value, _CheckedRecord):
        return value
    if not isinstance(value, Mapping):
        raise FieldError(field, f"expected a mapping of strings, got {describe(value)}")
    record: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not key:
            raise FieldError(field, f"keys must be non-empty strings, got {show(key)}")
        if len(key) > MAX_COLLECTED_KEY_CHARS:
            raise FieldError(
                field,
                f'key "{key[:MAX_COLLECTED_KEY_CHARS]}..." is {len(key)} characters long, '
                f"the limit is {MAX_COLLECTED_KEY_CHARS}",
            )
        item_path = join_path(field, key)
        text = as_str(item, item_path)
        if len(text) > MAX_COLLECTED_VALUE_CHARS:
            raise FieldError(item_path, f"is {len(text)} characters long, the limit is {MAX_COLLECTED_VALUE_CHARS}")
        record[key] = text
    return _CheckedRecord(record)


def as_collected_data(value: object, field: str) -> tuple[Mapping[str, str], ...]:
    """At most 11 read-only ``{str: str}`` records (enrollment first, then the latest authentications)."""
    if not isinstance(value, (list, tuple)):
        raise FieldError(field, f"expected a list of mappings, got {describe(value)}")
    if len(value) > MAX_COLLECTED_RECORDS:
        raise FieldError(
            field,
            f"has {len(value)} records, the limit is {MAX_COLLECTED_RECORDS} "
            "(the enrollment record and the 10 most recent authentication records)",
        )
    return tuple(_collected_record(record, f"{field}[{index}]") for index, record in enumerate(value))


# -- the dataclasses ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceCredential:
    """``spec.credential``: what an enrolled device proves itself with.

    TPM credentials (``tpm_*``) hold the attestation key's marshalled TPMT_PUBLIC in ``tpm_ak_public``; the
    others (``macos_secure_enclave``, ``unsafe_software``) a PKIX DER public key in ``public_key_der``.
    ``tpm_ek_public_sha256`` fingerprints the TPM's endorsement key, so a re-enrollment can be held to the
    same TPM.
    """

    id: str
    attestation_type: str
    public_key_der: bytes = b""
    tpm_ak_public: bytes = b""
    tpm_ekcert_serial: str = ""
    tpm_ek_public_sha256: str = ""

    def __post_init__(self) -> None:
        credential_id = _text(self.id, "id", allow_empty=False)
        if any(char.isspace() for char in credential_id):
            raise FieldError("id", "must not contain whitespace")
        kind = as_str(self.attestation_type, "attestation_type")
        if kind not in ATTESTATION_TYPES:
            raise FieldError(
                "attestation_type",
                f"unknown attestation type {show(kind)} (valid: {', '.join(ATTESTATION_TYPES)})",
            )
        public_key_der = _as_bytes(self.public_key_der, "public_key_der")
        tpm_ak_public = _as_bytes(self.tpm_ak_public, "tpm_ak_public")
        key_field, other_field = (
            ("tpm_ak_public", "public_key_der")
            if kind in TPM_ATTESTATION_TYPES
            else ("public_key_der", "tpm_ak_public")
        )
        keys = {"public_key_der": public_key_der, "tpm_ak_public": tpm_ak_public}
        if not keys[key_field]:
            raise FieldError(key_field, f'is required for attestation type "{kind}"')
        if keys[other_field]:
            raise FieldError(other_field, f'must be empty for attestation type "{kind}" (its key goes in {key_field})')
        serial = as_str(self.tpm_ekcert_serial, "tpm_ekcert_serial").lower()
        if serial:
            if kind not in EKCERT_ATTESTATION_TYPES:
                raise FieldError(
                    "tpm_ekcert_serial", f'must be empty for attestation type "{kind}" (it has no EK certificate)'
                )
            if len(serial) > MAX_EKCERT_SERIAL_CHARS or not _EKCERT_SERIAL_RE.fullmatch(serial):
                raise FieldError(
                    "tpm_ekcert_serial",
                    f'invalid certificate serial {show(self.tpm_ekcert_serial)}: expected hex such as "3a:5f:01"',
                )
        fingerprint = as_str(self.tpm_ek_public_sha256, "tpm_ek_public_sha256").lower()
        if fingerprint:
            if kind not in TPM_ATTESTATION_TYPES:
                raise FieldError("tpm_ek_public_sha256", f'must be empty for attestation type "{kind}" (it has no TPM)')
            if not _SHA256_HEX_RE.fullmatch(fingerprint):
                raise FieldError(
                    "tpm_ek_public_sha256",
                    f"expected a SHA-256 digest as 64 hex digits, got {show(self.tpm_ek_public_sha256)}",
                )
        object.__setattr__(self, "public_key_der", public_key_der)
        object.__setattr__(self, "tpm_ak_public", tpm_ak_public)
        object.__setattr__(self, "tpm_ekcert_serial", serial)
        object.__setattr__(self, "tpm_ek_public_sha256", fingerprint)

    @property
    def is_tpm(self) -> bool:
        return self.attestation_type in TPM_ATTESTATION_TYPES


@dataclass(frozen=True, slots=True)
class DeviceSource:
    """``spec.source``: who registered the device (``api`` for tctl/tsh; ``jamf``/``intune`` for MDM sync)."""

    name: str
    origin: str

    def __post_init__(self) -> None:
        _text(self.name, "name", allow_empty=False)
        origin = as_str(self.origin, "origin")
        if origin not in SOURCE_ORIGINS:
            raise FieldError("origin", f"unknown origin {show(origin)} (valid: {', '.join(SOURCE_ORIGINS)})")


#: DeviceProfile's free-text fields, in the order they are written out.
PROFILE_TEXT_FIELDS: tuple[str, ...] = (
    "model_identifier",
    "os_version",
    "os_build",
    "os_build_supplemental",
    "jamf_binary_version",
    "external_id",
)


@dataclass(frozen=True, slots=True)
class DeviceProfile:
    """``spec.profile``: what an MDM says about the device. Every field is optional."""

    model_identifier: str = ""
    os_version: str = ""
    os_build: str = ""
    os_build_supplemental: str = ""
    os_usernames: tuple[str, ...] = ()
    jamf_binary_version: str = ""
    external_id: str = ""
    update_time: datetime | None = None

    def __post_init__(self) -> None:
        for name in PROFILE_TEXT_FIELDS:
            _text(getattr(self, name), name)
        if not isinstance(self.os_usernames, (list, tuple)):
            raise FieldError("os_usernames", f"expected a list of strings, got {describe(self.os_usernames)}")
        if len(self.os_usernames) > MAX_OS_USERNAMES:
            raise FieldError("os_usernames", f"has {len(self.os_usernames)} entries, the limit is {MAX_OS_USERNAMES}")
        usernames = tuple(
            _text(username, f"os_usernames[{index}]", allow_empty=False)
            for index, username in enumerate(self.os_usernames)
        )
        object.__setattr__(self, "os_usernames", usernames)
        object.__setattr__(self, "update_time", _optional_timestamp(self.update_time, "update_time"))


@dataclass(frozen=True, slots=True)
class Device:
    """A registered device. ``enroll_status`` is ``enrolled`` exactly when ``credential`` is set."""

    kind: ClassVar[str] = "device"
    version: ClassVar[str] = "v1"

    id: str
    os_type: str
    asset_tag: str
    enroll_status: str = NOT_ENROLLED
    credential: DeviceCredential | None = None
    collected_data: tuple[Mapping[str, str], ...] = ()
    source: DeviceSource | None = None
    profile: DeviceProfile | None = None
    owner: str = ""
    create_time: datetime | None = None
    update_time: datetime | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "id", check_device_id(self.id, "metadata.name"))
        object.__setattr__(self, "os_type", check_os_type(self.os_type, "spec.os_type"))
        check_asset_tag(self.asset_tag, "spec.asset_tag")
        status = as_str(self.enroll_status, "spec.enroll_status")
        if status not in ENROLL_STATUSES:
            raise FieldError(
                "spec.enroll_status",
                f"invalid enroll status {show(status)} (valid: {', '.join(ENROLL_STATUSES)})",
            )
        if self.credential is not None:
            as_instance(self.credential, DeviceCredential, "spec.credential")
        if status == ENROLLED and self.credential is None:
            raise FieldError("spec.credential", f'is required when enroll_status is "{ENROLLED}"')
        if status == NOT_ENROLLED and self.credential is not None:
            raise FieldError(
                "spec.credential",
                f'must be absent when enroll_status is "{NOT_ENROLLED}" (only enrolled devices have one)',
            )
        object.__setattr__(self, "collected_data", as_collected_data(self.collected_data, "spec.collected_data"))
        if self.source is not None:
            as_instance(self.source, DeviceSource, "spec.source")
        if self.profile is not None:
            as_instance(self.profile, DeviceProfile, "spec.profile")
        if as_str(self.owner, "spec.owner"):
            check_name(self.owner, "spec.owner")
        object.__setattr__(self, "create_time", _optional_timestamp(self.create_time, "spec.create_time"))
        object.__setattr__(self, "update_time", _optional_timestamp(self.update_time, "spec.update_time"))

    @property
    def metadata(self) -> Metadata:
        """``metadata.name`` is the device id, so generic code can name any resource the same way."""
        return Metadata(name=self.id)

    @property
    def name(self) -> str:
        return self.id

    @property
    def is_enrolled(self) -> bool:
        return self.enroll_status == ENROLLED

    def with_authentication(self, record: Mapping[str, str], update_time: datetime) -> Device:
        """This device with ``record`` collected by an authentication (the enrollment record stays first, then the
        latest authentications) and ``update_time`` set. Only the new values are checked: the rest already was,
        when this device was built, and a device is immutable."""
        checked = _collected_record(record, f"spec.collected_data[{MAX_COLLECTED_RECORDS - 1}]")
        kept = (*self.collected_data[1:], checked)[-(MAX_COLLECTED_RECORDS - 1) :]
        changed = {
            "collected_data": (*self.collected_data[:1], *kept),
            "update_time": as_timestamp(update_time, "spec.update_time"),
        }
        device = object.__new__(Device)
        for name in _DEVICE_FIELDS:
            object.__setattr__(device, name, changed[name] if name in changed else getattr(self, name))
        return device

    def unenrolled(self) -> Device:
        """This device as ``tctl devices unenroll`` leaves it: no credential, owner or collected data."""
        return dataclasses.replace(self, enroll_status=NOT_ENROLLED, credential=None, owner="", collected_data=())


_DEVICE_FIELDS = tuple(field.name for field in dataclasses.fields(Device))
