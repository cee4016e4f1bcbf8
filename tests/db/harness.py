"""A database service for tests: the daemon (auth only) as a subprocess, the service in a thread of the test
process with its own event loop, the machine's PostgreSQL behind it, and client certificates minted with the
cluster's user CA (what `tsh db login` and the session proof would give)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from devicetrust.agent.db.service import DatabaseService, DatabaseServiceConfig
from devicetrust.config import DatabaseEntry
from devicetrust.crypto.ca import CertAuthority
from devicetrust.crypto.certs import certificate_to_pem, issue_x509_client_cert
from devicetrust.crypto.identity import DatabaseRoute, DeviceExtensions, Identity, SessionProof
from devicetrust.crypto.keys import generate_private_key, private_key_to_pem
from devicetrust.daemon import mint_node_join_token
from tests.agent.harness import Cluster

PG_HOST, PG_PORT = "127.0.0.1", 5432
PG_URI = f"postgres://{PG_HOST}:{PG_PORT}"
DEVICE = DeviceExtensions(
    device_id="4f7d1c2a-9b3e-4d5f-8a6b-7c8d9e0f1a2b", asset_tag="C02TESTSERIAL", credential_id="cred-test-1"
)
#: PostgreSQL roles the tests connect as (created if missing; trust authentication).
DB_USERS = ("alice", "bob")


def require_psql() -> str:
    path = shutil.which("psql")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("psql is required in CI")
        pytest.skip("psql is not installed")
    return path


def ensure_db_users(admin: psycopg.Connection[Any]) -> None:
    for user in DB_USERS:
        if admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (user,)).fetchone() is None:
            admin.execute(f'CREATE ROLE "{user}" LOGIN')


class ServiceThread:
    """A DatabaseService running on its own event loop in a thread, so tests may block (psycopg, psql)."""

    def __init__(self, config: DatabaseServiceConfig) -> None:
        self.service = DatabaseService(config)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="db-service-loop", daemon=True)

    def call(self, coro: Any, timeout: float = 30) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout)

    def start(self) -> DatabaseService:
        self._thread.start()
        self.call(self.service.start())
        return self.service

    def stop(self) -> None:
        try:
            self.call(self.service.stop())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()

    def refresh(self) -> None:
        state = self.service.membership.state
        assert state is not None
        assert self.call(state.refresh())

    def flush_audit(self) -> None:
        audit = self.service.membership.audit
        assert audit is not None
        # events are handed to the loop from session threads: let them arrive, then drain
        time.sleep(0.1)
        assert self.call(audit.flush(10))


@dataclass
class ClientFiles:
    """A client key and X.509 certificate on disk, as libpq wants them (sslcert, sslkey, sslrootcert)."""

    cert: Path
    key: Path
    root: Path

    def conninfo(self, port: int, *, user: str, dbname: str | None = None, **extra: Any) -> dict[str, Any]:
        params: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": port,
            "user": user,
            "sslmode": "verify-full",
            "sslcert": str(self.cert),
            "sslkey": str(self.key),
            "sslrootcert": str(self.root),
            "connect_timeout": 10,
        }
        if dbname is not None:
            params["dbname"] = dbname
        params.update(extra)
        return params


def db_service_config(cluster: Cluster, service_dir: Path, databases: Sequence[DatabaseEntry]) -> DatabaseServiceConfig:
    server = cluster.server
    return DatabaseServiceConfig(
        service_dir=service_dir,
        hostname="db-host",
        listen_addr="127.0.0.1:0",
        auth_server=cluster.daemon.auth_addr,
        databases=tuple(databases),
        auth_ca_pem=server.host_ca.certificate_pem().decode(),
        join_token=lambda: mint_node_join_token(server, "db"),
    )


@contextmanager
def running_service(cluster: Cluster, service_dir: Path, databases: Sequence[DatabaseEntry]) -> Iterator[ServiceThread]:
    runner = ServiceThread(db_service_config(cluster, service_dir, databases))
    runner.start()
    try:
        yield runner
    finally:
        runner.stop()


def client_files(
    cluster: Cluster,
    where: Path,
    username: str = "alice",
    *,
    roles: Sequence[str] = ("access",),
    traits: dict[str, Sequence[str]] | None = None,
    route: str | None = None,
    proof_for: str | None = None,
    proof_kind: str = "db",
    device: DeviceExtensions | None = None,
    bot_name: str | None = None,
    ca: CertAuthority | None = None,
) -> ClientFiles:
    """Mint a client certificate: ``route`` routes it to a database (tsh db login); ``proof_for`` makes it a
    session certificate with a fresh device proof for that database (needs ``device``)."""
    now = datetime.now(UTC)
    key = generate_private_key()
    proof = None
    if proof_for is not None:
        proof = SessionProof(
            kind=proof_kind, target=proof_for, time=now, expires=now + timedelta(minutes=1), id=str(uuid.uuid4())
        )
    identity = Identity(
        username=username,
        roles=tuple(roles),
        logins=(),
        traits={"db_users": (username,), "db_names": ("test",)} if traits is None else traits,
        not_before=now - timedelta(minutes=1),
        not_after=now + timedelta(hours=1),
        bot_name=bot_name,
        device=device,
        session_proof=proof,
        db_route=DatabaseRoute(route, "postgres") if route is not None else None,
    )
    cert = issue_x509_client_cert(ca or cluster.user_ca, key.public_key(), identity)
    where.mkdir(parents=True, exist_ok=True)
    stem = uuid.uuid4().hex[:8]
    files = ClientFiles(where / f"{stem}.crt", where / f"{stem}.key", where / "root.crt")
    files.cert.write_bytes(certificate_to_pem(cert))
    files.key.write_bytes(private_key_to_pem(key))
    files.key.chmod(0o600)
    files.root.write_bytes(cluster.server.host_ca.certificate_pem())
    return files


def postgres_server_programs() -> Path:
    """The folder of PostgreSQL's server programs (initdb, pg_ctl): Debian's newest, else the ones on PATH."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda path: int(path.parts[-3]))
    initdb = found[-1] if found else Path(shutil.which("initdb") or "/nonexistent")
    if not initdb.exists():
        if os.environ.get("CI") == "true":
            pytest.fail("the PostgreSQL server programs (initdb, pg_ctl) are required in CI")
        pytest.skip("the PostgreSQL server programs (initdb, pg_ctl) are not installed")
    return initdb.parent


@dataclass(frozen=True)
class PrivatePostgres:
    """A PostgreSQL of a test's own on 127.0.0.1 (trust authentication, no Unix socket)."""

    port: int
    admin_url: str


@contextmanager
def private_postgres(port: int, *, settings: dict[str, str], files: Sequence[Path] = ()) -> Iterator[PrivatePostgres]:
    """Run a private PostgreSQL with ``settings`` (``-c NAME=VALUE``); ``files`` are copied next to its data
    folder first (by name, readable by the server only), e.g. ``ssl_cert_file``/``ssl_key_file``. PostgreSQL
    refuses to run as root: as root it runs as ``nobody``, in a folder under /tmp it can reach."""
    programs = postgres_server_programs()
    home = Path(tempfile.mkdtemp(prefix="devicetrust-test-postgres-", dir="/tmp"))
    account = ["runuser", "-u", "nobody", "--"] if os.geteuid() == 0 else []
    for source in files:
        copy = home / source.name
        shutil.copyfile(source, copy)
        copy.chmod(0o600)
    if account:
        for path in [home, *home.iterdir()]:
            shutil.chown(path, "nobody")

    def run(*command: str) -> None:
        result = subprocess.run([*account, *command], cwd="/", capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"{command[0]} failed: {result.stderr.strip() or result.stdout.strip()}")

    data = home / "data"
    options = {"listen_addresses": "127.0.0.1", "port": str(port), "unix_socket_directories": "''", "fsync": "off"}
    options.update(settings)
    try:
        run(str(programs / "initdb"), "-D", str(data), "--auth=trust", "--username=postgres", "--no-sync")
        settings_text = " ".join(f"-c {name}={value}" for name, value in options.items())
        run(
            str(programs / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(home / "postgres.log"),
            "-w",
            "-o",
            settings_text,
            "start",
        )
        try:
            yield PrivatePostgres(port, f"postgresql://postgres@127.0.0.1:{port}/postgres")
        finally:
            run(str(programs / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
    finally:
        shutil.rmtree(home, ignore_errors=True)
