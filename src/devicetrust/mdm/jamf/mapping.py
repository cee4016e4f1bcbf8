"""Jamf inventory records -> :class:`~devicetrust.mdm.diff.Observation`. Pure.

Computers (``/api/v{1,2}/computers-inventory``)::

    asset_tag              hardware.serialNumber
    os_type                macos (general.platform "Mac"; anything else is skipped)
    profile.model_identifier        hardware.modelIdentifier
    profile.os_version / os_build / os_build_supplemental
                           operatingSystem.version / .build / .supplementalBuildVersion
    profile.os_usernames   localUserAccounts[].username
    profile.jamf_binary_version     general.jamfBinaryVersion
    profile.external_id    id (Jamf's id, a string of digits)
    report time            general.reportDate (drives partial syncs)

Mobile devices (``/api/v2/mobile-devices/detail``): iPhone* model identifiers -> ios, iPad* -> ipados, anything
else (iPod, Apple TV, Watch, Vision) is skipped; serial from hardware.serialNumber, OS fields from general.os*,
id from mobileDeviceId, report time from general.lastInventoryUpdateDate.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TypedDict, TypeVar

from devicetrust.mdm.diff import Observation, Skipped
from devicetrust.mdm.jamf.config import COMPUTERS, InventoryKind
from devicetrust.mdm.jamf.records import General, Hardware, InventoryRecord, OperatingSystem
from devicetrust.types import DeviceProfile, FieldError
from devicetrust.types.device import MAX_OS_USERNAMES, check_asset_tag

__all__ = [
    "FULL_SORT",
    "ID_FIELD",
    "OS_TYPES",
    "PARTIAL_SORT",
    "REPORT_FILTER_FIELD",
    "map_computer",
    "map_mobile_device",
    "map_record",
    "parse_jamf_time",
    "recheck_identity",
    "report_time",
]

#: a full sync walks by id (stable: new devices land on the last page)
FULL_SORT: Mapping[str, str] = {"computers": "id:asc", "mobile_devices": "mobileDeviceId:asc"}
#: a partial sync walks the most recently reported first and stops at the previous sync's cut
PARTIAL_SORT: Mapping[str, str] = {
    "computers": "general.reportDate:desc",
    "mobile_devices": "lastInventoryUpdateDate:desc",
}
#: the same as an RSQL field
REPORT_FILTER_FIELD: Mapping[str, str] = {
    "computers": "general.reportDate",
    "mobile_devices": "lastInventoryUpdateDate",
}
#: the RSQL field holding the Jamf id
ID_FIELD: Mapping[str, str] = {"computers": "id", "mobile_devices": "mobileDeviceId"}
#: the OS types each inventory kind registers (a full sync's missing set is limited to them)
OS_TYPES: Mapping[str, frozenset[str]] = {
    "computers": frozenset({"macos"}),
    "mobile_devices": frozenset({"ios", "ipados"}),
}
_MOBILE_OS_BY_MODEL_PREFIX = (("iPhone", "ios"), ("iPad", "ipados"))


class DeviceFields(TypedDict, total=False):
    """The :class:`DeviceProfile` fields an inventory record gives (its Jamf id is passed apart)."""

    model_identifier: str
    os_version: str
    os_build: str
    os_build_supplemental: str
    os_usernames: tuple[str, ...]
    jamf_binary_version: str


_Section = TypeVar("_Section", bound=Mapping[str, object])
#: what a missing section reads as (shared: sections are only read)
_NO_GENERAL: General = {}
_NO_HARDWARE: Hardware = {}
_NO_OPERATING_SYSTEM: OperatingSystem = {}


def _section(value: _Section | None, empty: _Section) -> _Section:
    """A record's section, or ``empty`` where Jamf sent none (or something else)."""
    return value if isinstance(value, Mapping) else empty


def _str(value: object) -> str:
    return value.strip() if isinstance(value, str) else ""


def parse_jamf_time(value: object) -> datetime | None:
    """Jamf's date-times (``2024-05-01T12:34:56Z``, ``…56.307Z``) as UTC; None if absent or unreadable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)


def _jamf_id(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return _str(value)


def _usernames(accounts: object) -> tuple[str, ...]:
    if not isinstance(accounts, list):
        return ()
    names: dict[str, None] = {}
    for account in accounts:
        if isinstance(account, Mapping):
            name = _str(account.get("username"))
            if name:
                names.setdefault(name, None)
    return tuple(names)[:MAX_OS_USERNAMES]


def _observe(
    external_id: str, name: str, os_type: str, serial: str, profile: DeviceFields, report_time: datetime | None
) -> Observation | Skipped:
    if not serial:
        return Skipped(external_id, name, "no serial number (hardware.serialNumber)")
    try:
        check_asset_tag(serial, "hardware.serialNumber")
        device_profile = DeviceProfile(external_id=external_id, **profile)
    except FieldError as err:
        return Skipped(external_id, name, f"unusable inventory data: {err}")
    return Observation(
        external_id=external_id,
        os_type=os_type,
        asset_tag=serial,
        profile=device_profile,
        report_time=report_time,
        name=name,
    )


def map_computer(record: InventoryRecord) -> Observation | Skipped:
    """One computers-inventory result (sections GENERAL, HARDWARE, OPERATING_SYSTEM, LOCAL_USER_ACCOUNTS)."""
    external_id = _jamf_id(record.get("id"))
    general = _section(record.get("general"), _NO_GENERAL)
    name = _str(general.get("name"))
    if not external_id.isdigit():
        return Skipped(external_id, name, "no Jamf id")
    platform = _str(general.get("platform"))
    if platform != "Mac":
        return Skipped(external_id, name, f"platform {platform or '(none)'!r} is not synced (only Mac)")
    hardware = _section(record.get("hardware"), _NO_HARDWARE)
    system = _section(record.get("operatingSystem"), _NO_OPERATING_SYSTEM)
    return _observe(
        external_id,
        name,
        "macos",
        _str(hardware.get("serialNumber")),
        {
            "model_identifier": _str(hardware.get("modelIdentifier")),
            "os_version": _str(system.get("version")),
            "os_build": _str(system.get("build")),
            "os_build_supplemental": _str(system.get("supplementalBuildVersion")),
            "os_usernames": _usernames(record.get("localUserAccounts")),
            "jamf_binary_version": _str(general.get("jamfBinaryVersion")),
        },
        parse_jamf_time(general.get("reportDate")),
    )


def _mobile_os(model_identifier: str) -> str | None:
    for prefix, os_type in _MOBILE_OS_BY_MODEL_PREFIX:
        if model_identifier.startswith(prefix):
            return os_type
    return None


def map_mobile_device(record: InventoryRecord) -> Observation | Skipped:
    """One mobile-devices/detail result (sections GENERAL, HARDWARE)."""
    external_id = _jamf_id(record.get("mobileDeviceId"))
    general = _section(record.get("general"), _NO_GENERAL)
    hardware = _section(record.get("hardware"), _NO_HARDWARE)
    name = _str(general.get("displayName"))
    if not external_id.isdigit():
        return Skipped(external_id, name, "no Jamf id")
    model = _str(hardware.get("modelIdentifier"))
    os_type = _mobile_os(model)
    if os_type is None:
        return Skipped(external_id, name, f"model {model or '(none)'!r} is not synced (only iPhone and iPad)")
    return _observe(
        external_id,
        name,
        os_type,
        _str(hardware.get("serialNumber")),
        {
            "model_identifier": model,
            "os_version": _str(general.get("osVersion")),
            "os_build": _str(general.get("osBuild")),
            "os_build_supplemental": _str(general.get("osSupplementalBuildVersion")),
        },
        parse_jamf_time(general.get("lastInventoryUpdateDate")),
    )


def map_record(kind: InventoryKind, record: InventoryRecord) -> Observation | Skipped:
    return map_computer(record) if kind == COMPUTERS else map_mobile_device(record)


def report_time(kind: InventoryKind, record: InventoryRecord) -> datetime | None:
    """When the device last reported to Jamf (general.reportDate or general.lastInventoryUpdateDate)."""
    general = record.get("general")
    if not isinstance(general, dict):
        return None
    return parse_jamf_time(general.get("reportDate") if kind == COMPUTERS else general.get("lastInventoryUpdateDate"))


def recheck_identity(kind: InventoryKind, record: InventoryRecord) -> tuple[str | None, str | None]:
    """(os_type, serial) of a device fetched by id to re-check it; None where Jamf's record maps to nothing."""
    if kind == COMPUTERS:
        general = _section(record.get("general"), _NO_GENERAL)
        serial = _str(_section(record.get("hardware"), _NO_HARDWARE).get("serialNumber")) or None
        return ("macos" if _str(general.get("platform")) == "Mac" else None), serial
    # /api/v2/mobile-devices/{id}: a flat MobileDeviceV2
    return _mobile_os(_str(record.get("modelIdentifier"))), _str(record.get("serialNumber")) or None
