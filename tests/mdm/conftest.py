"""Jamf sync tests: a fake Jamf Pro over real HTTPS (a test CA made here), and real backends.

The fake server runs once per module; each test gets a fresh :class:`FakeJamf` (inventory from
``examples/jamf/``). Backends: a SQLite file, and PostgreSQL in a schema of its own (127.0.0.1:5432, database
``test``) — skipped locally when unreachable, a failure when CI=true.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devicetrust.mdm.jamf.client import JamfClient, RetryPolicy
from devicetrust.mdm.jamf.config import JamfServiceConfig, OAuthCredentials, parse_jamf_service_config
from devicetrust.storage.backend import Backend
from tests.fakes.jamf.server import FakeJamf, FakeJamfServer, Inventory, load_inventory_json
from tests.fakes.pki import TestPKI, make_test_pki

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "jamf"
CLIENT_ID = "7c1c4b1e-2f7e-4c5e-9a55-devicetrust"
CLIENT_SECRET = "s3cr3t-api-client-secret"
USERNAME = "sync-user"
PASSWORD = "correct horse battery staple"
#: fast retries: tests exercise the logic, not the patience
FAST_RETRY = RetryPolicy(max_attempts=3, backoff_initial_s=0.01, backoff_max_s=0.02, max_retry_after_s=2)


def example_fake(**options: Any) -> FakeJamf:
    return FakeJamf(
        computers=load_inventory_json(EXAMPLES / "computers.json"),
        mobile_devices=load_inventory_json(EXAMPLES / "mobile-devices.json", id_field="mobileDeviceId"),
        oauth_clients={CLIENT_ID: CLIENT_SECRET},
        users={USERNAME: PASSWORD},
        **options,
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    return make_test_pki(tmp_path_factory.mktemp("jamf-pki"))


@pytest.fixture(scope="module")
def jamf_server(pki: TestPKI) -> Iterator[FakeJamfServer]:
    with FakeJamfServer(FakeJamf(), pki) as server:
        yield server


@pytest.fixture
def fake(jamf_server: FakeJamfServer) -> FakeJamf:
    """A fresh fake Jamf (the example inventory) behind the module's server."""
    jamf_server.fake = example_fake()
    return jamf_server.fake


@pytest.fixture
def empty_fake(jamf_server: FakeJamfServer) -> FakeJamf:
    jamf_server.fake = FakeJamf(
        computers=Inventory(), oauth_clients={CLIENT_ID: CLIENT_SECRET}, users={USERNAME: PASSWORD}
    )
    return jamf_server.fake


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "jamf_secret"
    path.write_text(CLIENT_SECRET + "\n")
    return path


@dataclass
class JamfSetup:
    server: FakeJamfServer
    pki: TestPKI
    secret_file: Path

    @property
    def url(self) -> str:
        return self.server.url

    def section(self, **overrides: Any) -> dict[str, Any]:
        """A ``jamf_service`` section of devicetrust.yaml for this fake Jamf."""
        section: dict[str, Any] = {
            "enabled": True,
            "api_endpoint": self.url,
            "client_id": CLIENT_ID,
            "client_secret_file": str(self.secret_file),
            "ca_file": str(self.pki.ca_file),
            "sync_delay": "0s",
        }
        section.update(overrides)
        return section

    def config(self, **overrides: Any) -> JamfServiceConfig:
        return parse_jamf_service_config(self.section(**overrides))

    def client(self, **options: Any) -> JamfClient:
        options.setdefault("retry", FAST_RETRY)
        options.setdefault("ca_file", self.pki.ca_file)
        credentials = options.pop("credentials", OAuthCredentials(CLIENT_ID, CLIENT_SECRET))
        return JamfClient(self.url, credentials, **options)


@pytest.fixture
def jamf(jamf_server: FakeJamfServer, pki: TestPKI, secret_file: Path, fake: FakeJamf) -> JamfSetup:
    return JamfSetup(jamf_server, pki, secret_file)


@pytest.fixture
def backend(backend_url: str) -> Iterator[Backend]:
    opened = Backend.open(backend_url)
    try:
        opened.migrate()
        yield opened
    finally:
        opened.close()


@pytest.fixture
def sqlite_backend(tmp_path: Path) -> Iterator[Backend]:
    opened = Backend.open(f"sqlite:///{tmp_path / 'backend.sqlite'}")
    try:
        opened.migrate()
        yield opened
    finally:
        opened.close()
