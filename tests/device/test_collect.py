"""Device data collection on Linux, from fixture sysfs and os-release files."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from devicetrust.ceremony.messages import CollectedData
from devicetrust.device import collect as collect_module
from devicetrust.device.collect import (
    ENV_ASSET_TAG,
    CollectionError,
    DMIValues,
    clean_serial,
    collect_linux,
    parse_os_release,
    read_dmi_cache,
    write_dmi_cache,
)
from devicetrust.errors import ValidationError

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
OS_RELEASE = """\
PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
ID=debian
# a comment
HOME_URL='https://www.debian.org/'
"""


def make_dmi(root: Path, **values: str) -> Path:
    dmi = root / "dmi"
    dmi.mkdir()
    for name, value in values.items():
        (dmi / name).write_text(value + "\n")
    return dmi


def test_parse_os_release() -> None:
    values = parse_os_release(OS_RELEASE)
    assert values["ID"] == "debian"
    assert values["VERSION_ID"] == "12"
    assert values["PRETTY_NAME"] == "Debian GNU/Linux 12 (bookworm)"
    assert values["HOME_URL"] == "https://www.debian.org/"


@pytest.mark.parametrize("placeholder", ["", "0", "To Be Filled By O.E.M.", "Default string", " None "])
def test_placeholder_serials_are_no_serial(placeholder: str) -> None:
    assert clean_serial(placeholder) == ""


def test_collects_serial_model_and_os(tmp_path: Path) -> None:
    dmi = make_dmi(
        tmp_path,
        product_serial="5CG1234XYZ",
        board_serial="BRD-1",
        product_name="EliteBook 840",
        chassis_asset_tag="ASSET-9",
    )
    release = tmp_path / "os-release"
    release.write_text(OS_RELEASE)
    data = collect_linux(dmi_dir=dmi, os_release=release, environ={}, now=NOW, allow_sudo=False)
    assert data.os_type == "linux"
    assert data.serial_number == "5CG1234XYZ"
    assert data.system_serial_number == "5CG1234XYZ"
    assert data.base_board_serial_number == "BRD-1"
    assert data.reported_asset_tag == "ASSET-9"
    assert data.model_identifier == "EliteBook 840"
    assert (data.os_id, data.os_version) == ("debian", "12")
    assert data.collect_time == NOW.isoformat()


def test_board_serial_when_product_serial_is_a_placeholder(tmp_path: Path) -> None:
    dmi = make_dmi(tmp_path, product_serial="To Be Filled By O.E.M.", board_serial="BRD-7")
    data = collect_linux(dmi_dir=dmi, os_release=tmp_path / "absent", environ={}, now=NOW, allow_sudo=False)
    assert data.serial_number == "BRD-7"
    assert data.os_id == ""


def test_override_wins_and_no_serial_is_an_error(tmp_path: Path) -> None:
    dmi = make_dmi(tmp_path, product_serial="REAL")
    data = collect_linux(dmi_dir=dmi, os_release=tmp_path / "x", environ={ENV_ASSET_TAG: "SIM-1"}, now=NOW)
    assert data.serial_number == "SIM-1"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CollectionError, match=ENV_ASSET_TAG):
        collect_linux(dmi_dir=empty, os_release=tmp_path / "x", environ={}, now=NOW, allow_sudo=False)


def test_unreadable_serial_without_sudo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dmi = make_dmi(tmp_path, product_serial="ROOT-ONLY")

    def denied(_: Path) -> None:
        raise PermissionError("root only")

    monkeypatch.setattr("devicetrust.device.collect.read_dmi", denied)
    monkeypatch.setattr("devicetrust.device.collect.shutil.which", lambda _: None)
    with pytest.raises(CollectionError, match="needs root"):
        collect_linux(dmi_dir=dmi, os_release=tmp_path / "x", environ={}, now=NOW)


def test_collected_data_codec_is_strict() -> None:
    data = CollectedData(collect_time=NOW.isoformat(), os_type="linux", serial_number="S")
    assert CollectedData.from_dict(data.to_dict()) == data
    with pytest.raises(ValidationError, match="unknown field 'extra'"):
        CollectedData.from_dict({**data.to_dict(), "extra": "x"})
    with pytest.raises(ValidationError, match="serial_number is required"):
        CollectedData.from_dict({**data.to_dict(), "serial_number": ""})
    with pytest.raises(ValidationError, match="os_version"):
        CollectedData.from_dict({**data.to_dict(), "os_version": "x" * 300})
    with pytest.raises(ValidationError, match="os_id"):
        CollectedData.from_dict({**data.to_dict(), "os_id": 7})


def _no_sudo(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Serials root-only, and a record of every sudo run (there must be none)."""
    runs: list[str] = []

    def denied(_: Path) -> None:
        raise PermissionError("root only")

    def sudo() -> DMIValues:
        runs.append("sudo")
        return DMIValues(product_serial="FROM-SUDO")

    monkeypatch.setattr("devicetrust.device.collect.read_dmi", denied)
    monkeypatch.setattr("devicetrust.device.collect.read_dmi_with_sudo", sudo)
    return runs


def test_a_user_reads_the_serial_root_left_and_needs_no_sudo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runs = _no_sudo(monkeypatch)
    cache = tmp_path / "lib" / "dmi.json"
    write_dmi_cache(DMIValues(product_serial="C02ROOT", product_name="ThinkPad"), cache)
    assert oct(cache.stat().st_mode & 0o777) == "0o644"
    for _ in range(3):  # every session proof collects: none of them may ask for sudo
        data = collect_linux(os_release=tmp_path / "x", environ={}, now=NOW, dmi_cache=cache)
        assert (data.serial_number, data.model_identifier) == ("C02ROOT", "ThinkPad")
    assert runs == []


@pytest.mark.parametrize(
    "content",
    ["", "{", "[]", '{"product_serial": 7}', '{"product_serial": "X"}', '{"nope": "x"}'],
    ids=["empty", "truncated", "not-an-object", "not-a-string", "missing-fields", "unknown-field"],
)
def test_a_damaged_dmi_copy_is_read_again_through_sudo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: str
) -> None:
    runs = _no_sudo(monkeypatch)
    cache = tmp_path / "dmi.json"
    cache.write_text(content)
    data = collect_linux(os_release=tmp_path / "x", environ={}, now=NOW, dmi_cache=cache)
    assert data.serial_number == "FROM-SUDO" and runs == ["sudo"]


def test_no_dmi_copy_means_sudo_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runs = _no_sudo(monkeypatch)
    data = collect_linux(os_release=tmp_path / "x", environ={}, now=NOW, dmi_cache=tmp_path / "absent.json")
    assert data.serial_number == "FROM-SUDO" and runs == ["sudo"]


def test_the_root_reader_prints_the_values_and_leaves_them_for_users(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    dmi = make_dmi(tmp_path, product_serial="SERIAL-1")
    cache = tmp_path / "var" / "dmi.json"
    monkeypatch.setattr("devicetrust.device.collect.DMI_DIR", dmi)
    monkeypatch.setattr("devicetrust.device.collect.DMI_CACHE", cache)
    collect_module._dmi_read_main()
    printed = DMIValues(**json.loads(capsys.readouterr().out))
    assert printed.product_serial == "SERIAL-1"
    assert read_dmi_cache(cache) == printed
    assert [p.name for p in cache.parent.iterdir()] == ["dmi.json"]  # no partial file left behind
