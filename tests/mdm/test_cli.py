"""``devicetrust jamf sync``: in-process against the backend named by devicetrust.yaml."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from click.testing import CliRunner, Result

from devicetrust.cli.common import DevicetrustGroup
from devicetrust.cli.jamf import jamf as jamf_group
from devicetrust.storage.backend import Backend
from devicetrust.types import Device, resource_to_dict
from tests.fakes.jamf.server import FakeJamf
from tests.mdm.conftest import JamfSetup


@click.group(cls=DevicetrustGroup)
def devicetrust() -> None:
    """Stands in for the daemon's group, which the lead registers ``jamf`` under."""


devicetrust.add_command(jamf_group)


def _config(jamf: JamfSetup, tmp_path: Path, **overrides: Any) -> Path:
    defaults = {
        "name": "jamf",
        "inventory": [{"filter_rsql": "general.remoteManagement.managed==true", "page_size": 4}],
    }
    section = jamf.section(**{**defaults, **overrides})
    doc = {
        "version": "v1",
        "devicetrust": {"data_dir": str(tmp_path / "data"), "storage": {"path": str(tmp_path / "backend.sqlite")}},
        "jamf_service": section,
    }
    (tmp_path / "data").mkdir(exist_ok=True)
    path = tmp_path / "devicetrust.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _invoke(*args: str) -> Result:
    return CliRunner().invoke(devicetrust, list(args), prog_name="devicetrust")


def test_sync_once_full_with_progress(jamf: JamfSetup, fake: FakeJamf, tmp_path: Path) -> None:
    config = _config(jamf, tmp_path)
    result = _invoke("jamf", "sync", "--config", str(config), "--once", "--full")
    assert result.exit_code == 0, result.output
    assert "full sync of computers 'general.remoteManagement.managed==true': 11 read, 10 new" in result.stdout
    assert "ok" in result.stdout
    assert "devices, 3 pages" in result.stderr  # the progress bar
    with Backend.open(f"sqlite:///{tmp_path / 'backend.sqlite'}") as backend, backend.begin() as store:
        assert store.devices.count("jamf") == 10
    # a partial sync next, then a removal on a full one
    partial = _invoke("jamf", "sync", "--config", str(config), "--once")
    assert partial.exit_code == 0 and "partial sync of computers" in partial.stdout
    fake.computers.remove(7)
    removal = _invoke("jamf", "sync", "-c", str(config), "--once", "--full")
    assert removal.exit_code == 0 and "1 removed" in removal.stdout


def test_the_summary_counts_devices_registered_by_hand_as_foreign(
    jamf: JamfSetup, fake: FakeJamf, tmp_path: Path
) -> None:
    config = _config(jamf, tmp_path)
    manual = Device(id=str(uuid.uuid4()), os_type="macos", asset_tag="C02XJ0ABHX87")  # a Mac Jamf also has
    with Backend.open(f"sqlite:///{tmp_path / 'backend.sqlite'}") as backend:
        backend.migrate()
        with backend.begin() as store:
            store.devices.create(manual.id, "macos", manual.asset_tag, resource_to_dict(manual))
    result = _invoke("jamf", "sync", "--config", str(config), "--once", "--full")
    assert result.exit_code == 0, result.output
    assert "11 read, 9 new" in result.stdout
    assert "1 skipped, 1 foreign (left alone)" in result.stdout  # the Mac without a serial; the one by hand
    with Backend.open(f"sqlite:///{tmp_path / 'backend.sqlite'}") as backend, backend.begin() as store:
        (summary,) = store.audit.search(event_types=["mdm.sync"])
    assert (summary.body["skipped"], summary.body["foreign"]) == (1, 1)


@pytest.mark.parametrize(
    ("args", "overrides", "code", "message"),
    [
        (["--full"], {}, 2, "--full goes with --once"),
        (["--once"], {"enabled": False}, 2, "jamf_service is not enabled in"),
        (["--once"], {"inventory": [{"sync_period_partial": "24h"}]}, 2, "must be shorter than sync_period_full"),
        (["--once"], {"api_endpoint": "http://127.0.0.1:1"}, 2, "must be an https:// URL"),
        (["--once"], {"inventory": [{"filter_rsql": "general.nope==1"}]}, 2, "Jamf rejects filter_rsql"),
        (["--once"], {"client_id": "someone-else"}, 1, "refused the API client credentials (invalid_client)"),
    ],
)
def test_errors_are_one_line(
    jamf: JamfSetup, tmp_path: Path, args: list[str], overrides: dict[str, Any], code: int, message: str
) -> None:
    config = _config(jamf, tmp_path, **overrides)
    result = _invoke("jamf", "sync", "--config", str(config), *args)
    assert result.exit_code == code, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR: ")]
    assert len(errors) == 1 and message in errors[0]


def test_no_config_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEVICETRUST_CONFIG", raising=False)
    result = _invoke("jamf", "sync", "--once")
    assert result.exit_code == 2
    assert "no config file" in result.stderr
