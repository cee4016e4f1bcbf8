"""Fixtures for the auth service's tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.auth.api_harness import RunningApi, serve_api
from tests.auth.server_harness import Clock, make_server

from devicetrust.auth.server import AuthServer, Caller
from devicetrust.storage.backend import Backend


@pytest.fixture
def api(backend_url: str) -> Iterator[RunningApi]:
    with serve_api(backend_url) as running:
        yield running


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[Backend]:
    opened = Backend.open(f"sqlite:///{tmp_path / 'backend.sqlite'}")
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def server(backend: Backend, clock: Clock) -> AuthServer:
    return make_server(backend, clock)


@pytest.fixture
def admin(server: AuthServer) -> Caller:
    return server.authenticate(server.issue_admin_identity("host-a"))
