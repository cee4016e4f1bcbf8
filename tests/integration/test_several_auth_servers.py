"""Several auth servers over one PostgreSQL database: real `devicetrust start` processes, one killed under load."""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
import pytest

from devicetrust.crypto.keys import generate_private_key, public_key_to_openssh
from tests.conftest import postgres_schema_url
from tests.integration.cluster import PASSWORD, Cluster, start_cluster
from tests.integration.test_cluster_cli import host_ca, ok

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

#: Generous bound on waiting for the load to make progress; reaching it fails the test, it is not measured.
PROGRESS_DEADLINE_SECONDS = 120


@pytest.fixture
def database_url(postgres_admin: psycopg.Connection[tuple[object, ...]]) -> Iterator[str]:
    with postgres_schema_url(postgres_admin, "dt_servers") as url:
        yield url


@dataclass
class Load:
    """A client that logs in and makes requests against every server in turn, recording each outcome."""

    addrs: tuple[str, ...]
    ca_pem: str
    user: str
    results: list[tuple[str, str, bool]] = field(default_factory=list)
    error: BaseException | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def served(self, addr: str, since: int = 0) -> list[tuple[str, bool]]:
        with self._lock:
            return [(what, served) for server, what, served in self.results[since:] if server == addr]

    def mark(self) -> int:
        with self._lock:
            return len(self.results)

    def run(self) -> None:
        try:
            self._run()
        except BaseException as err:  # reported by the test, not lost in the thread
            self.error = err

    def _run(self) -> None:
        context = ssl.create_default_context(cadata=self.ca_pem)
        clients = {addr: httpx.Client(base_url=f"https://{addr}", verify=context, timeout=10) for addr in self.addrs}
        public_key = public_key_to_openssh(generate_private_key().public_key())
        token = ""
        rounds = 0
        try:
            while not self.stop.is_set():
                for addr, client in clients.items():
                    # A login now and then; in between, the newest session (whichever server issued it) is used.
                    login = rounds % 3 == 0 or not token
                    what = "login" if login else "whoami"
                    try:
                        if login:
                            reply = client.post(
                                "/v1/login", json={"user": self.user, "password": PASSWORD, "public_key": public_key}
                            )
                        else:
                            reply = client.get("/v1/whoami", headers={"Authorization": f"Bearer {token}"})
                    except httpx.TransportError:
                        served = False
                    else:
                        served = reply.status_code == 200
                        if served and login:
                            token = reply.json()["session_token"]
                    with self._lock:
                        self.results.append((addr, what, served))
                rounds += 1
        finally:
            for client in clients.values():
                client.close()


def wait_for(condition: Callable[[], object], what: str, load: Load) -> None:
    deadline = time.monotonic() + PROGRESS_DEADLINE_SECONDS
    while not condition():
        assert load.error is None, load.error
        assert time.monotonic() < deadline, f"no progress: {what}"
        time.sleep(0.1)


def test_two_auth_servers_on_one_database_survive_the_loss_of_one(tmp_path: Path, database_url: str) -> None:
    first = start_cluster(tmp_path / "first", storage_url=database_url)
    second: Cluster | None = None
    try:
        second = start_cluster(tmp_path / "second", storage_url=database_url)
        # Same host name, one database: neither start revokes the other server's local admin identity.
        assert "test.cluster" in ok(first.tctl("status"))
        assert "test.cluster" in ok(second.tctl("status"))
        assert host_ca(first) == host_ca(second)
        first.signup_and_login("alice")

        load = Load((first.proxy, second.proxy), host_ca(second), "alice")
        driver = threading.Thread(target=load.run, name="load")
        driver.start()
        try:
            wait_for(
                lambda: all(sum(served for _, served in load.served(a)) >= 6 for a in load.addrs),
                "both servers answering",
                load,
            )
            first.process.kill()  # SIGKILL: no graceful shutdown, transactions cut off mid-way
            first.process.wait()
            killed_at = load.mark()
            wait_for(
                lambda: (
                    len(load.served(second.proxy, killed_at)) >= 12
                    and any(what == "login" for what, _ in load.served(second.proxy, killed_at))
                    and load.served(first.proxy, killed_at)
                ),
                "the survivor answering after the kill",
                load,
            )
        finally:
            load.stop.set()
            driver.join()
        assert load.error is None, load.error
        assert all(served for _, served in load.served(second.proxy)), load.served(second.proxy)
        # The survivor keeps every other function too.
        assert "alice" in ok(second.tctl("users", "ls"))
    finally:
        first.stop()
        if second is not None:
            assert second.stop() == 0
