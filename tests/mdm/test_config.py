"""jamf_service config: defaults, and one clear line for every mistake, at start."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from devicetrust.errors import ConfigError
from devicetrust.mdm.jamf.config import (
    DEFAULT_COMPUTER_FILTER,
    DEFAULT_MOBILE_FILTER,
    JAMF_MAX_PAGE_SIZE,
    InventoryEntry,
    OAuthCredentials,
    PasswordCredentials,
    parse_jamf_service_config,
)
from tests.fakes.pki import make_test_pki


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "secret"
    path.write_text("the-secret\n")
    return path


def _section(secret: Path, **overrides: Any) -> dict[str, Any]:
    section: dict[str, Any] = {
        "enabled": True,
        "api_endpoint": "https://tenant.jamfcloud.com/",
        "client_id": "client-1",
        "client_secret_file": str(secret),
    }
    section.update(overrides)
    return section


def test_defaults(secret: Path) -> None:
    config = parse_jamf_service_config(_section(secret))
    assert config.enabled
    assert config.name == "jamf"
    assert config.api_endpoint == "https://tenant.jamfcloud.com"
    assert config.credentials == OAuthCredentials("client-1", "the-secret")
    assert "the-secret" not in repr(config)
    assert config.sync_delay == timedelta(seconds=30)
    (entry,) = config.inventory
    assert entry == InventoryEntry()
    assert (entry.filter_rsql, entry.sync_period_partial, entry.sync_period_full) == (
        DEFAULT_COMPUTER_FILTER,
        timedelta(hours=6),
        timedelta(hours=24),
    )
    assert (entry.on_missing, entry.page_size, entry.kind) == ("DELETE", 500, "computers")


def test_the_issue_example_parses(secret: Path) -> None:
    config = parse_jamf_service_config(
        _section(
            secret,
            name="jamf",
            inventory=[
                {
                    "filter_rsql": "general.remoteManagement.managed==true",
                    "sync_period_partial": "6h",
                    "sync_period_full": "24h",
                    "on_missing": "DELETE",
                    "page_size": 500,
                }
            ],
        )
    )
    assert config.inventory == (InventoryEntry(),)


def test_legacy_credentials_and_mobile_opt_in(secret: Path, tmp_path: Path) -> None:
    pki = make_test_pki(tmp_path / "pki")
    config = parse_jamf_service_config(
        {
            "enabled": True,
            "api_endpoint": "https://jamf.example.com:8443",
            "username": "sync",
            "password_file": str(secret),
            "ca_file": str(pki.ca_file),
            "sync_delay": "0",
            "inventory": [{}, {"kind": "mobile_devices", "on_missing": "noop", "page_size": 2000}],
        }
    )
    assert config.credentials == PasswordCredentials("sync", "the-secret")
    assert config.ca_file == pki.ca_file
    assert config.sync_delay == timedelta(0)
    computers, mobile = config.inventory
    assert computers.kind == "computers"
    assert (mobile.kind, mobile.filter_rsql, mobile.on_missing, mobile.page_size) == (
        "mobile_devices",
        DEFAULT_MOBILE_FILTER,
        "NOOP",
        JAMF_MAX_PAGE_SIZE,
    )
    assert computers.key != mobile.key


def test_absent_or_disabled_is_off_and_not_validated(secret: Path) -> None:
    assert not parse_jamf_service_config(None).enabled
    assert not parse_jamf_service_config({}).enabled
    # a disabled section may hold placeholders: nothing is read or checked
    assert not parse_jamf_service_config(
        {"enabled": False, "api_endpoint": "http://x", "client_secret_file": "/nope"}
    ).enabled


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"api_endpoint": "http://tenant.jamfcloud.com"}, "must be an https:// URL"),
        ({"api_endpoint": "tenant.jamfcloud.com"}, "must be an https:// URL"),
        ({"api_endpoint": "https://user:pw@tenant.jamfcloud.com"}, "without credentials"),
        ({"api_endpoint": "https://tenant.jamfcloud.com:99999"}, "invalid URL"),
        ({"client_secret_file": "/nonexistent/jamf_secret"}, "cannot read /nonexistent/jamf_secret"),
        ({"username": "sync", "password_file": "/x"}, "not both"),
        ({"client_secret_file": ""}, "client_secret_file: expected a non-empty string"),
        ({"inventory": [{"sync_period_partial": "24h", "sync_period_full": "24h"}]}, "must be shorter than"),
        ({"inventory": [{"sync_period_partial": "25h"}]}, "must be shorter than sync_period_full (24h)"),
        ({"inventory": [{"on_missing": "ARCHIVE"}]}, "on_missing: expected NOOP or DELETE, got 'ARCHIVE'"),
        ({"inventory": [{"page_size": 5000}]}, "page_size: expected a number from 1 to 2000"),
        ({"inventory": [{"page_size": True}]}, "page_size"),
        ({"inventory": [{"sync_period_full": "1d"}]}, "invalid duration"),
        ({"inventory": [{"kind": "printers"}]}, "kind: expected one of computers, mobile_devices"),
        ({"inventory": [{"filter": "x"}]}, "inventory[0].filter: unknown key (did you mean filter_rsql?)"),
        ({"inventory": []}, "at least one entry"),
        ({"inventory": [{}, {}]}, "same kind and filter_rsql as inventory[0]"),
        ({"name": "my jamf"}, "name: expected 1-64 letters"),
        ({"sync_delay": 30}, "sync_delay"),
        ({"enabled": "sometimes"}, "enabled: expected true or false"),
        ({"client_id_file": "x"}, "jamf_service.client_id_file: unknown key (did you mean client_id?)"),
        ({"ca_file": "/nonexistent/ca.pem"}, "ca_file: cannot read"),
    ],
)
def test_mistakes_are_one_clear_line(secret: Path, overrides: dict[str, Any], message: str) -> None:
    section = _section(secret, **overrides)
    with pytest.raises(ConfigError) as caught:
        parse_jamf_service_config(section)
    text = str(caught.value)
    assert message in text
    assert "\n" not in text
    assert text.startswith("jamf_service")


def test_missing_pieces(secret: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="api_endpoint: required"):
        parse_jamf_service_config({"enabled": True, "client_id": "x", "client_secret_file": str(secret)})
    with pytest.raises(ConfigError, match="credentials missing"):
        parse_jamf_service_config({"enabled": True, "api_endpoint": "https://x.example"})
    with pytest.raises(ConfigError, match="go together"):
        parse_jamf_service_config({"enabled": True, "api_endpoint": "https://x.example", "client_id": "x"})
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        parse_jamf_service_config(_section(empty))
    with pytest.raises(ConfigError, match="cannot read"):
        parse_jamf_service_config(_section(tmp_path))  # a directory
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("hello")
    with pytest.raises(ConfigError, match="holds no PEM CA certificate"):
        parse_jamf_service_config(_section(secret, ca_file=str(not_pem)))
