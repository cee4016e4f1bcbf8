"""The daemon's janitor: expired rows go, period after period, and a failed round does not end it."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Any

import pytest

from devicetrust import daemon
from devicetrust.auth.server import AuthServer
from devicetrust.storage.backend import Backend
from tests.auth.api_harness import fast_auth_server


class FlakyServer:
    """Fails its second round, then works again."""

    def __init__(self) -> None:
        self.rounds = 0

    def purge_expired(self) -> dict[str, int]:
        self.rounds += 1
        if self.rounds == 2:
            raise OSError("database is away")
        return {"sessions": 1}


def test_the_janitor_keeps_going_after_a_failed_round(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(daemon, "JANITOR_PERIOD_SECONDS", 0.01)
    server = FlakyServer()

    async def run() -> None:
        task = asyncio.create_task(daemon._janitor(server))  # type: ignore[arg-type]
        while server.rounds < 5:  # noqa: ASYNC110 - polling the fake is the point
            await asyncio.sleep(0.01)
        task.cancel()

    with caplog.at_level(logging.INFO):
        asyncio.run(run())
    assert server.rounds >= 5
    assert [r.message for r in caplog.records] == ["expired records not purged; trying again later"]


def test_purge_deletes_only_what_has_expired(tmp_path: Any) -> None:
    backend = Backend.open(f"sqlite:///{tmp_path / 'backend.sqlite'}")
    try:
        server: AuthServer = fast_auth_server(backend)
        now = server.clock()
        with backend.begin() as store:
            store.spent_ceremonies.spend("old", now - timedelta(seconds=1))
            store.spent_ceremonies.spend("live", now + timedelta(minutes=5))
            store.sessions.create("h-old", "admin@x", "admin", {}, now - timedelta(seconds=1))
            store.sessions.create("h-live", "admin@x", "admin", {}, now + timedelta(hours=1))
        purged = server.purge_expired()
        assert purged["spent_ceremonies"] == 1 and purged["sessions"] == 1
        with backend.read() as store:
            store.sessions.get_valid("h-live", now)
    finally:
        backend.close()
