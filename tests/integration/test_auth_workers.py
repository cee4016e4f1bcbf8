"""The auth service as several worker processes on one socket (auth_service.workers): single use, cache
coherence and supervision hold across processes, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from benchmarks.harness import LeanClient, process_tree

from devicetrust.crypto.certs import identity_from_ssh_cert
from devicetrust.daemon import GRACEFUL_SHUTDOWN_SECONDS
from tests.integration.ceremony_helpers import (
    SoftwareDevice,
    answer,
    authenticate_device,
    enroll_software_device,
    set_device_trust,
    signup_and_login,
    wait_for_node,
)
from tests.integration.cluster import Cluster, start_cluster

WORKERS = 2
PASSWORD = "workers password 1"
#: Concurrent finishes of one ceremony, each on a connection of its own.
RACERS = 200


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], scope="module")
def workers_cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp(f"workers-{request.param}")
    if request.param == "sqlite":
        running = start_cluster(root, auth_workers=WORKERS)
        try:
            yield running
        finally:
            running.stop()
        return
    from tests.conftest import postgres_schema_url

    admin = request.getfixturevalue("postgres_admin")
    with postgres_schema_url(admin, "dt_workers") as url:
        running = start_cluster(root, storage_url=url, auth_workers=WORKERS)
        try:
            yield running
        finally:
            running.stop()


class World:
    def __init__(self, cluster: Cluster, name: str) -> None:
        self.cluster = cluster
        identity = json.loads((cluster.root / "data" / "admin" / "identity.json").read_text())
        self.ca_pem = str(identity["host_ca_pem"])
        self.opened: list[LeanClient] = []
        self.admin = self.track(LeanClient(cluster.proxy, self.ca_pem, identity["token"]))
        set_device_trust(self.admin, "required")
        anonymous = self.track(LeanClient(cluster.proxy, self.ca_pem))
        self.login = signup_and_login(self.admin, anonymous, name, ["access"], PASSWORD)
        self.user = self.client()
        self.device: SoftwareDevice = enroll_software_device(self.admin, self.user, f"SN-{name}", f"cred-{name}")

    def track(self, client: LeanClient) -> LeanClient:
        self.opened.append(client)
        return client

    def client(self) -> LeanClient:
        return self.track(LeanClient(self.cluster.proxy, self.ca_pem, self.login.session_token))

    def close(self) -> None:
        for client in self.opened:
            client.close()

    def begin(self) -> dict[str, object]:
        body = {
            "credential_id": self.device.credential_id,
            "device_data": self.device.device_data,
            "ssh_cert": self.login.ssh_cert,
            "target": {"kind": "ssh", "id": "node-1"},
        }
        challenge: dict[str, object] = self.user.call("POST", "/v1/devices/authenticate/begin", body)
        return challenge


def worker_pids(cluster: Cluster) -> list[int]:
    """The daemon's auth workers (not the short-lived commands it may be running)."""
    return [pid for pid in process_tree(cluster.process.pid)[1:] if b"devicetrust.daemon" in _command(pid)]


def _command(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:
        return []


def test_the_daemon_runs_the_configured_number_of_workers(workers_cluster: Cluster) -> None:
    assert len(worker_pids(workers_cluster)) == WORKERS


@pytest.fixture
def world_of(workers_cluster: Cluster) -> Iterator[Callable[[str], World]]:
    worlds: list[World] = []

    def make(name: str) -> World:
        worlds.append(World(workers_cluster, name))
        return worlds[-1]

    yield make
    for world in worlds:
        world.close()


def test_of_many_concurrent_finishes_of_one_ceremony_exactly_one_succeeds(world_of: Callable[[str], World]) -> None:
    world = world_of("racer")
    reply = answer(world.device.key, world.begin())
    clients = [world.client() for _ in range(RACERS)]
    for client in clients:  # connect (and so spread over the workers) before the race
        client.call("GET", "/v1/ping")
    start = threading.Barrier(RACERS)
    outcomes: list[str] = []

    def finish(client: LeanClient) -> None:
        start.wait()
        try:
            client.call("POST", "/v1/devices/authenticate/finish", reply)
        except RuntimeError as err:
            outcomes.append(str(err))
        else:
            outcomes.append("ok")

    threads = [threading.Thread(target=finish, args=(client,)) for client in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count("ok") == 1, outcomes[:3]
    refused = [o for o in outcomes if o != "ok"]
    assert all("HTTP 400" in o and "unknown or expired device ceremony" in o for o in refused), refused[:3]


def test_a_session_proof_may_name_its_node_as_the_user_does(world_of: Callable[[str], World]) -> None:
    world = world_of("naming")
    node = wait_for_node(world.admin)
    body = {
        "credential_id": world.device.credential_id,
        "device_data": world.device.device_data,
        "ssh_cert": world.login.ssh_cert,
    }
    begin = world.user.call(
        "POST",
        "/v1/devices/authenticate/begin",
        {**body, "target": {"kind": "ssh", "id": node.hostname, "by_name": True}},
    )
    assert begin["node"]["host_id"] == node.host_id and begin["node"]["hostname"] == node.hostname
    certs = world.user.call("POST", "/v1/devices/authenticate/finish", answer(world.device.key, begin))
    proof = identity_from_ssh_cert(str(certs["ssh_cert"]).encode()).session_proof
    assert proof is not None and (proof.kind, proof.target) == ("ssh", node.host_id)
    # without by_name, the reply names no node
    plain = world.user.call("POST", "/v1/devices/authenticate/begin", {**body, "target": {"kind": "ssh", "id": "x"}})
    assert "node" not in plain
    with pytest.raises(RuntimeError, match=r"HTTP 404: .*not_found.*no node named .*nowhere"):
        world.user.call(
            "POST",
            "/v1/devices/authenticate/begin",
            {**body, "target": {"kind": "ssh", "id": "nowhere", "by_name": True}},
        )
    with pytest.raises(RuntimeError, match=r"HTTP 400: .*only an SSH node is named by the user"):
        world.user.call(
            "POST", "/v1/devices/authenticate/begin", {**body, "target": {"kind": "db", "id": "pg", "by_name": True}}
        )


def test_a_lock_made_through_one_worker_holds_on_every_worker_at_once(
    workers_cluster: Cluster, world_of: Callable[[str], World]
) -> None:
    world = world_of("locked")
    authenticate_device(world.user, world.device, world.login.ssh_cert)  # warms every cache
    locked = workers_cluster.tctl("lock", f"--user={world.login.name}", "--message=stolen laptop", "--ttl=10m")
    assert locked.returncode == 0, locked.stderr
    for _ in range(4 * WORKERS):  # fresh connections land on any worker
        client = world.client()
        with pytest.raises(RuntimeError, match="stolen laptop"):
            client.call(
                "POST",
                "/v1/devices/authenticate/begin",
                {
                    "credential_id": world.device.credential_id,
                    "device_data": world.device.device_data,
                    "ssh_cert": world.login.ssh_cert,
                },
            )


def test_a_killed_worker_is_replaced_and_service_goes_on(
    workers_cluster: Cluster, world_of: Callable[[str], World]
) -> None:
    world = world_of("survivor")
    victim = worker_pids(workers_cluster)[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        pids = worker_pids(workers_cluster)
        if victim not in pids and len(pids) >= WORKERS:
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"worker {victim} was not replaced: {worker_pids(workers_cluster)}")
    for _ in range(4 * WORKERS):
        client = world.client()
        augmented = identity_from_ssh_cert(authenticate_device(client, world.device, world.login.ssh_cert).encode())
        assert augmented.device is not None and augmented.device.device_id == world.device.device_id
    assert "auth worker exited; restarting it" in workers_cluster.log_path.read_text()


def test_stopping_the_daemon_stops_its_workers(tmp_path: Path) -> None:
    cluster = start_cluster(tmp_path / "stop", auth_workers=WORKERS)
    pids = worker_pids(cluster)
    assert len(pids) >= WORKERS
    assert cluster.stop() == 0
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()]


def _running(pid: int) -> bool:
    """Alive and not a zombie waiting for its new parent to reap it."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def _answers(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


def test_workers_do_not_outlive_a_daemon_killed_with_sigkill(tmp_path: Path) -> None:
    cluster = start_cluster(tmp_path / "killed", auth_workers=WORKERS)
    pids = worker_pids(cluster)
    assert len(pids) >= WORKERS
    assert _answers(cluster.proxy)
    cluster.process.kill()
    cluster.process.wait()
    deadline = time.monotonic() + GRACEFUL_SHUTDOWN_SECONDS + 5
    while any(_running(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    survivors = [pid for pid in pids if _running(pid)]
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)
    assert not survivors, "auth workers kept running after their daemon was killed"
    assert not _answers(cluster.proxy), "something still answers on the killed daemon's port"
