"""A real cluster for SSH node tests: `devicetrust start` as a subprocess (auth, and optionally its own node), plus
an AuthServer in the test process on the same SQLite backend to mint certificates, roles, locks and read audit."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from argon2 import PasswordHasher

from devicetrust.agent.server import NodeConfig, SSHNode
from devicetrust.auth.server import AuthServer, Caller
from devicetrust.config import render_default_config
from devicetrust.crypto.ca import CertAuthority
from devicetrust.crypto.certs import issue_ssh_user_cert
from devicetrust.crypto.identity import DeviceExtensions, Identity, SessionProof
from devicetrust.crypto.keys import generate_private_key, private_key_to_pem
from devicetrust.daemon import mint_node_join_token
from devicetrust.storage.backend import Backend
from devicetrust.types import ClusterAuthPreference, DeviceTrustSettings, Lock, LockTarget, Role, resource_to_dict
from tests.integration.cluster import free_port

BIN = Path(sys.executable).parent
CLUSTER_NAME = "agent.test"
#: The OS account sessions run as; created (as root) if missing.
LOGIN = "dt-test"
START_TIMEOUT_SECONDS = 30
DEVICE = DeviceExtensions(
    device_id="4f7d1c2a-9b3e-4d5f-8a6b-7c8d9e0f1a2b", asset_tag="C02TESTSERIAL", credential_id="cred-test-1"
)

ClientKey = tuple[asyncssh.SSHKey, asyncssh.SSHCertificate]


def require_root_login() -> str:
    """The test login, created with ``useradd -m`` when running as root; skipped otherwise (failed in CI)."""
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("SSH node tests must run as root in CI (sessions switch to the login's account)")
        pytest.skip("SSH node tests need root to run sessions as another account")
    if subprocess.run(["id", "-u", LOGIN], capture_output=True, check=False).returncode != 0:
        subprocess.run(["useradd", "-m", "-s", "/bin/sh", LOGIN], check=True, capture_output=True)
    return LOGIN


@dataclass
class Daemon:
    """``devicetrust start`` on its own data dir and ports."""

    root: Path
    auth_addr: str
    ssh_addr: str
    ssh_enabled: bool
    process: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.root / "devicetrust.log"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def config_path(self) -> Path:
        return self.root / "devicetrust.yaml"

    def write_config(self) -> None:
        text = render_default_config(
            cluster_name=CLUSTER_NAME, data_dir=self.data_dir, listen_addr=self.auth_addr, ssh_listen_addr=self.ssh_addr
        )
        if not self.ssh_enabled:
            text = text.replace("ssh_service:\n  enabled: true", "ssh_service:\n  enabled: false")
        self.config_path.write_text(text)

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.write_config()
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                [str(BIN / "devicetrust"), "start", "--config", str(self.config_path)],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env={**os.environ, "HOME": str(self.root)},
            )
        ready = "ssh service started" if self.ssh_enabled else "auth service ready"
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"devicetrust exited early:\n{self.log_path.read_text()}")
            if ready in self.log_path.read_text()[offset:]:
                return
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"devicetrust did not become ready:\n{self.log_path.read_text()}")

    def stop(self) -> int:
        process = self.process
        if process is None:
            return 0
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.process = None
        return int(process.returncode)


def start_daemon(root: Path, *, ssh: bool) -> Daemon:
    daemon = Daemon(root, f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}", ssh)
    daemon.start()
    return daemon


@dataclass
class Cluster:
    """The test's view of a running daemon: an AuthServer on its backend and an admin caller."""

    daemon: Daemon
    backend: Backend
    server: AuthServer
    admin: Caller

    @classmethod
    def attach(cls, daemon: Daemon) -> Cluster:
        backend = Backend.open(f"sqlite:///{daemon.data_dir / 'backend.sqlite'}")
        server = AuthServer(
            backend,
            cluster_name=CLUSTER_NAME,
            password_hasher=PasswordHasher(time_cost=1, memory_cost=8, parallelism=1),
        )
        server.initialize()
        admin = server.authenticate(server.issue_admin_identity("agent-tests"))
        return cls(daemon, backend, server, admin)

    def close(self) -> None:
        self.backend.close()

    @property
    def user_ca(self) -> CertAuthority:
        return self.server.user_ca

    @property
    def host_ca_ssh(self) -> str:
        return self.server.host_ca.ssh_public_key()

    def client_key(
        self,
        username: str = "alice",
        *,
        roles: Sequence[str] = ("access",),
        logins: Sequence[str] = (LOGIN,),
        device: DeviceExtensions | None = None,
        bot_name: str | None = None,
        ca: CertAuthority | None = None,
        expired: bool = False,
        proof_for: str | None = None,
        proof_age: timedelta = timedelta(0),
    ) -> ClientKey:
        """A key and certificate minted with the cluster's user CA. ``proof_for`` (a node's host id) makes it a
        session certificate carrying a device proof for that node, taken ``proof_age`` ago (needs ``device``)."""
        now = datetime.now(UTC) - (timedelta(hours=2) if expired else timedelta(0))
        key = generate_private_key()
        proof = None
        if proof_for is not None:
            taken = datetime.now(UTC) - proof_age
            proof = SessionProof(
                kind="ssh", target=proof_for, time=taken, expires=taken + timedelta(minutes=1), id=str(uuid.uuid4())
            )
        identity = Identity(
            username=username,
            roles=tuple(roles),
            logins=tuple(logins),
            traits={"logins": tuple(logins)},
            not_before=now - timedelta(minutes=1),
            not_after=now + timedelta(hours=1),
            bot_name=bot_name,
            device=device,
            session_proof=proof,
        )
        line = issue_ssh_user_cert(ca or self.user_ca, key.public_key(), identity)
        return asyncssh.import_private_key(private_key_to_pem(key)), asyncssh.import_certificate(line)

    def put_role(self, role: Role) -> None:
        self.server.put_resource(self.admin, resource_to_dict(role), force=True)

    def set_cluster_mode(self, mode: str, session_proof: str = "per_session") -> None:
        cap = ClusterAuthPreference(device_trust=DeviceTrustSettings(mode=mode, session_proof=session_proof))
        self.server.put_resource(self.admin, resource_to_dict(cap), force=True)

    def lock(self, name: str, kind: str, value: str, message: str) -> None:
        self.server.create_lock(self.admin, Lock(name=name, target=LockTarget(kind, value), message=message))

    def events(self, *types: str, session_id: str | None = None) -> list[dict[str, Any]]:
        items = self.server.search_events(
            self.admin, since=None, until=None, event_types=list(types), user=None, limit=1000, after_id=None
        )
        return [e for e in items if session_id is None or e.get("session_id") == session_id]

    def node_config(
        self, node_dir: Path, *, hostname: str = "prod-server", labels: dict[str, str] | None = None
    ) -> NodeConfig:
        server = self.server
        return NodeConfig(
            node_dir=node_dir,
            hostname=hostname,
            listen_addr="127.0.0.1:0",
            auth_server=self.daemon.auth_addr,
            labels={"env": "prod"} if labels is None else labels,
            auth_ca_pem=server.host_ca.certificate_pem().decode(),
            join_token=lambda: mint_node_join_token(server),
        )

    @contextlib.asynccontextmanager
    async def node(self, node_dir: Path, **kwargs: Any) -> AsyncIterator[SSHNode]:
        node = SSHNode(self.node_config(node_dir, **kwargs))
        try:
            await node.start()
            yield node
        finally:
            await node.stop()

    def connect(self, port: int, key: ClientKey | asyncssh.SSHKey, *, login: str = LOGIN, **options: Any) -> Any:
        """An asyncssh client connection (use with ``async with``) that trusts the cluster's host CA."""
        host_ca = asyncssh.import_public_key(self.host_ca_ssh)
        return asyncssh.connect(
            "127.0.0.1",
            port,
            username=login,
            client_keys=[key],
            known_hosts=([], [host_ca], []),
            config=None,
            agent_path=options.pop("agent_path", None),
            **options,
        )


@contextlib.contextmanager
def auth_only_cluster(root: Path) -> Iterator[Cluster]:
    """A daemon running auth (no node of its own: tests run their agents in-process against it), attached."""
    daemon = start_daemon(root, ssh=False)
    attached = None
    try:
        attached = Cluster.attach(daemon)
        yield attached
    finally:
        if attached is not None:
            attached.close()
        daemon.stop()


async def wait_for(predicate: Any, within: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(interval)
    return bool(predicate())
