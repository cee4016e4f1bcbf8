"""Device data collection on Linux, from fixture sysfs and os-release files."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from devicetrust.ceremony.messages import CollectedData
from devicetrust.device.collect import (
    ENV_ASSET_TAG,
    CollectionError,
    clean_serial,
    collect_linux,
    parse_os_release,
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
