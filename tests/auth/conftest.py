"""Fixtures for the auth service's HTTP tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tests.auth.api_harness import RunningApi, serve_api


@pytest.fixture
def api(backend_url: str) -> Iterator[RunningApi]:
    with serve_api(backend_url) as running:
        yield running
