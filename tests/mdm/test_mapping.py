"""Jamf records -> observations, on the recorded example inventory and edge cases."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from devicetrust.mdm.diff import Observation, Skipped
from devicetrust.mdm.jamf.mapping import map_computer, map_mobile_device, parse_jamf_time, recheck_identity
from tests.mdm.conftest import EXAMPLES


def _computers() -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = json.loads((EXAMPLES / "computers.json").read_text())["results"]
    return results


def _mobile() -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = json.loads((EXAMPLES / "mobile-devices.json").read_text())["results"]
    return results


def test_a_mac_maps_to_macos_with_its_profile() -> None:
    alice = _computers()[0]
    obs = map_computer(alice)
    assert isinstance(obs, Observation)
    assert (obs.os_type, obs.asset_tag, obs.external_id, obs.name) == (
        "macos",
        "C02XJ0ABHX87",
        "1",
        "Alice's MacBook Pro",
    )
    profile = obs.profile
    assert (profile.model_identifier, profile.os_version, profile.os_build, profile.os_build_supplemental) == (
        "MacBookPro18,3",
        "14.6.1",
        "23G93",
        "",
    )
    assert profile.os_usernames == ("alice", "jamfadmin")
    assert (profile.jamf_binary_version, profile.external_id, profile.update_time) == ("11.9.1-t1726247520", "1", None)
    assert obs.report_time == datetime(2026, 11, 25, 8, 14, 2, tzinfo=UTC)


def test_rapid_security_response_build_is_kept() -> None:
    erin = next(c for c in _computers() if c["general"]["name"] == "Erin's MacBook Pro")
    obs = map_computer(erin)
    assert isinstance(obs, Observation)
    assert (obs.profile.os_version, obs.profile.os_build, obs.profile.os_build_supplemental) == (
        "13.4.1",
        "22F82",
        "22F770820d",
    )


def test_the_example_inventory() -> None:
    mapped = [map_computer(record) for record in _computers()]
    skipped = [m for m in mapped if isinstance(m, Skipped)]
    assert [s.reason for s in skipped] == ["no serial number (hardware.serialNumber)"]
    assert len({m.asset_tag for m in mapped if isinstance(m, Observation)}) == 11


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda r: r["general"].update(platform="Windows"), "platform 'Windows' is not synced (only Mac)"),
        (lambda r: r.update(general=None), "platform '(none)'"),
        (lambda r: r["hardware"].update(serialNumber=None), "no serial number"),
        (lambda r: r.update(hardware=None), "no serial number"),
        (lambda r: r["hardware"].update(serialNumber="C02\x00X"), "unusable inventory data"),
        (lambda r: r["operatingSystem"].update(version="x" * 300), "unusable inventory data"),
        (lambda r: r.update(id=None), "no Jamf id"),
    ],
)
def test_unusable_computers_are_skipped_with_a_reason(change: Any, reason: str) -> None:
    record = copy.deepcopy(_computers()[0])
    change(record)
    result = map_computer(record)
    assert isinstance(result, Skipped)
    assert reason in result.reason


def test_unrequested_sections_are_null_and_map_to_empty_fields() -> None:
    record = copy.deepcopy(_computers()[0])
    record["operatingSystem"] = None
    record["localUserAccounts"] = None
    obs = map_computer(record)
    assert isinstance(obs, Observation)
    assert (obs.profile.os_version, obs.profile.os_usernames) == ("", ())


def test_usernames_are_deduplicated_in_order() -> None:
    record = copy.deepcopy(_computers()[0])
    record["localUserAccounts"] = [{"username": "b"}, {"username": "a"}, {"username": "b"}, {"uid": "0"}, "junk"]
    obs = map_computer(record)
    assert isinstance(obs, Observation)
    assert obs.profile.os_usernames == ("b", "a")


def test_mobile_devices_iphone_ipad_and_the_rest() -> None:
    mapped = {r["general"]["displayName"]: map_mobile_device(r) for r in _mobile()}
    iphone = mapped["Alice's iPhone"]
    ipad = mapped["Bob's iPad Air"]
    assert isinstance(iphone, Observation) and isinstance(ipad, Observation)
    assert (iphone.os_type, iphone.asset_tag, iphone.external_id) == ("ios", "F17ZK3LQN72J", "1")
    assert (iphone.profile.model_identifier, iphone.profile.os_version, iphone.profile.os_build) == (
        "iPhone15,2",
        "18.1",
        "22B83",
    )
    assert iphone.report_time == datetime(2026, 11, 25, 8, 31, 12, 522000, tzinfo=UTC)
    assert (ipad.os_type, ipad.profile.model_identifier) == ("ipados", "iPad13,18")
    apple_tv = mapped["Board Room Apple TV"]
    ipod = mapped["Reception iPod"]
    assert isinstance(apple_tv, Skipped) and "AppleTV11,1" in apple_tv.reason
    assert isinstance(ipod, Skipped) and "only iPhone and iPad" in ipod.reason


def test_recheck_identity() -> None:
    alice = _computers()[0]
    assert recheck_identity("computers", alice) == ("macos", "C02XJ0ABHX87")
    assert recheck_identity("computers", {"id": "1", "general": {"platform": "Windows"}, "hardware": None}) == (
        None,
        None,
    )
    assert recheck_identity(
        "mobile_devices", {"id": "2", "serialNumber": "DMPZN4KLQ1GH", "modelIdentifier": "iPad13,18"}
    ) == (
        "ipados",
        "DMPZN4KLQ1GH",
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-05-01T12:34:56Z", datetime(2024, 5, 1, 12, 34, 56, tzinfo=UTC)),
        ("2022-10-17T11:48:56.307Z", datetime(2022, 10, 17, 11, 48, 56, 307000, tzinfo=UTC)),
        ("2024-05-01T14:34:56+02:00", datetime(2024, 5, 1, 12, 34, 56, tzinfo=UTC)),
        ("2024-05-01", datetime(2024, 5, 1, tzinfo=UTC)),
        ("yesterday", None),
        (None, None),
        ("", None),
    ],
)
def test_parse_jamf_time(text: object, expected: datetime | None) -> None:
    assert parse_jamf_time(text) == expected
