"""Fixtures for the auth service's tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.auth.api_harness import RunningApi, serve_api

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
