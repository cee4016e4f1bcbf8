"""The database service against the machine's real PostgreSQL, driven by real psycopg and psql: the access
decision (RBAC, modes, session proofs), locks ending live sessions, cancel requests, audit, and clients that do
not speak the protocol."""

from __future__ import annotations

import signal
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from devicetrust.access import DB_ACCESS_DENIED, TRUSTED_DEVICE_REQUIRED
from devicetrust.access.decision import NO_SESSION_PROOF, PROOF_FOR_ANOTHER_TARGET
from devicetrust.config import DatabaseEntry
from devicetrust.crypto.ca import CertAuthority
from devicetrust.types import Metadata, Role, RoleConditions
from tests.agent.harness import Cluster
from tests.db.harness import DEVICE, PG_URI, ClientFiles, ServiceThread, client_files, require_psql, running_service

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

PG_PROD = DatabaseEntry(name="pg-prod", uri=PG_URI, labels={"env": "prod"})
PG_DEV = DatabaseEntry(name="pg-dev", uri=PG_URI, labels={"env": "dev"})
WAIT_SECONDS = 10.0


@pytest.fixture(scope="module")
def service(cluster: Cluster, db_users: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceThread]:
    cluster.set_cluster_mode("optional")
    with running_service(cluster, tmp_path_factory.mktemp("db-service"), [PG_PROD, PG_DEV]) as running:
        yield running


@pytest.fixture
def mode(cluster: Cluster, service: ServiceThread) -> Iterator[Any]:
    """Set the cluster's device trust mode (and session_proof) for one test; optional again afterwards."""

    def set_mode(value: str, session_proof: str = "per_session") -> None:
        cluster.set_cluster_mode(value, session_proof)
        service.refresh()

    yield set_mode
    set_mode("optional")


def connect(service: ServiceThread, files: ClientFiles, user: str = "alice", dbname: str = "test") -> Any:
    return psycopg.connect(**files.conninfo(service.service.port, user=user, dbname=dbname), autocommit=True)


def refused(service: ServiceThread, files: ClientFiles, user: str = "alice", dbname: str = "test") -> str:
    with pytest.raises(psycopg.OperationalError) as failed:
        connect(service, files, user, dbname).close()
    return str(failed.value)


def events_for(cluster: Cluster, service: ServiceThread, user: str, *types: str) -> list[dict[str, Any]]:
    service.flush_audit()
    return [event for event in cluster.events(*types) if event["user"] == user]


# ------------------------------------------------------------------------------------------------ sessions
def test_a_routed_certificate_reaches_postgres_and_is_audited(
    cluster: Cluster, service: ServiceThread, tmp_path: Path
) -> None:
    files = client_files(cluster, tmp_path, "alice", route="pg-prod")
    with connect(service, files) as conn:
        assert conn.execute("SELECT current_user, current_database()").fetchone() == ("alice", "test")
        assert conn.execute("SELECT sum(x) FROM generate_series(1, 100000) AS x").fetchone() == (5000050000,)
    events = events_for(cluster, service, "alice", "db.session.start", "db.session.end")
    start, end = events[-2], events[-1]
    assert (start["event"], start["code"], start["success"]) == ("db.session.start", "TDB00I", True)
    assert (end["event"], end["code"], end["sid"]) == ("db.session.end", "TDB01I", start["sid"])
    assert start["db_service"] == "pg-prod" and start["db_protocol"] == "postgres" and start["db_uri"] == PG_URI
    assert (start["db_user"], start["db_name"], start["db_labels"]) == ("alice", "test", {"env": "prod"})
    assert start["server_id"] == service.service.host_id and "device" not in start


def test_real_psql_with_the_routed_certificate(cluster: Cluster, service: ServiceThread, tmp_path: Path) -> None:
    psql = require_psql()
    files = client_files(cluster, tmp_path, "alice", route="pg-dev")
    conninfo = " ".join(
        f"{k}={v}" for k, v in files.conninfo(service.service.port, user="alice", dbname="test").items()
    )
    result = subprocess.run(
        [psql, conninfo, "-tAc", "SELECT 'through ' || current_user"], capture_output=True, text=True, timeout=30
    )
    assert (result.returncode, result.stdout) == (0, "through alice\n"), result.stderr
    denied = subprocess.run(
        [psql, conninfo.replace("user=alice", "user=bob"), "-tAc", "SELECT 1"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert denied.returncode == 2
    assert f"FATAL:  {DB_ACCESS_DENIED}" in denied.stderr, denied.stderr


@pytest.mark.parametrize(("user", "dbname"), [("bob", "test"), ("alice", "postgres"), ("postgres", "postgres")])
def test_a_database_user_or_name_the_roles_do_not_grant_is_refused(
    cluster: Cluster, service: ServiceThread, tmp_path: Path, user: str, dbname: str
) -> None:
    files = client_files(cluster, tmp_path, "alice", route="pg-prod")
    assert f"FATAL:  {DB_ACCESS_DENIED}" in refused(service, files, user, dbname)
    failure = events_for(cluster, service, "alice", "db.session.start")[-1]
    assert (failure["code"], failure["success"], failure["error"]) == ("TDB00W", False, DB_ACCESS_DENIED)
    assert (failure["db_user"], failure["db_name"]) == (user, dbname)


def test_the_database_name_defaults_to_the_user(cluster: Cluster, service: ServiceThread, tmp_path: Path) -> None:
    # traits allow the database "alice" only; no dbname in the startup message means "alice"
    files = client_files(cluster, tmp_path, "alice", route="pg-prod", traits={"db_users": ["alice"], "db_names": []})
    message = refused(service, files, "alice", "")
    assert DB_ACCESS_DENIED in message
    assert events_for(cluster, service, "alice", "db.session.start")[-1]["db_name"] == "alice"


def test_labels_decide_which_databases_a_role_grants(cluster: Cluster, service: ServiceThread, tmp_path: Path) -> None:
    cluster.put_role(
        Role(
            metadata=Metadata(name="dev-dba"),
            allow=RoleConditions(db_labels={"env": ("dev",)}, db_users=("*",), db_names=("*",)),
        )
    )
    service.refresh()
    dev = client_files(cluster, tmp_path, "dana", roles=("dev-dba",), route="pg-dev")
    prod = client_files(cluster, tmp_path, "dana", roles=("dev-dba",), route="pg-prod")
    with connect(service, dev, "postgres", "postgres") as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("postgres",)
    assert DB_ACCESS_DENIED in refused(service, prod, "postgres", "postgres")


# ------------------------------------------------------------------------------------------- device trust
CELLS = [
    # (cluster mode, who, allowed)
    ("off", "none", True),
    ("optional", "none", True),
    ("optional", "login-device", True),
    ("required", "proof", True),
    ("required", "login-device", False),
    ("required", "none", False),
    ("required", "bot", False),
    ("required-for-humans", "proof", True),
    ("required-for-humans", "none", False),
    ("required-for-humans", "bot", True),
]


@pytest.mark.parametrize(("cluster_mode", "who", "allowed"), CELLS)
def test_mode_matrix_cells(
    cluster: Cluster, service: ServiceThread, mode: Any, tmp_path: Path, cluster_mode: str, who: str, allowed: bool
) -> None:
    mode(cluster_mode)
    kwargs: dict[str, Any] = {"route": "pg-prod"}
    if who == "proof":
        kwargs = {"device": DEVICE, "proof_for": "pg-prod"}
    elif who == "login-device":
        kwargs["device"] = DEVICE
    username = "bot-ci" if who == "bot" else "alice"
    files = client_files(
        cluster,
        tmp_path,
        username,
        bot_name="ci" if who == "bot" else None,
        traits={"db_users": ["alice"], "db_names": ["test"]},
        **kwargs,
    )
    if allowed:
        with connect(service, files) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        start = events_for(cluster, service, username, "db.session.start")[-1]
        # device data in the audit only when device trust is on and the device is proven as required
        named = who in ("proof", "login-device") and cluster_mode != "off"
        assert ("device" in start) is named, start
        if who == "proof":
            assert start["device"]["device_id"] == DEVICE.device_id and start["device_proof"]["id"]
    else:
        assert f"FATAL:  {TRUSTED_DEVICE_REQUIRED}" in refused(service, files)
        failure = events_for(cluster, service, username, "db.session.start")[-1]
        assert failure["success"] is False and failure["error"] == NO_SESSION_PROOF


def test_the_role_mode_requires_a_device_for_its_databases(
    cluster: Cluster, service: ServiceThread, tmp_path: Path
) -> None:
    roles = ("access", "require-trusted-device")
    without = client_files(cluster, tmp_path, "alice", roles=roles, route="pg-prod", device=DEVICE)
    assert TRUSTED_DEVICE_REQUIRED in refused(service, without)
    proven = client_files(cluster, tmp_path, "alice", roles=roles, device=DEVICE, proof_for="pg-prod")
    with connect(service, proven) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("alice",)


def test_session_proof_login_admits_login_time_device_values(
    cluster: Cluster, service: ServiceThread, mode: Any, tmp_path: Path
) -> None:
    mode("required", session_proof="login")
    with connect(service, client_files(cluster, tmp_path, "alice", route="pg-prod", device=DEVICE)) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert TRUSTED_DEVICE_REQUIRED in refused(service, client_files(cluster, tmp_path, "alice", route="pg-prod"))


def test_a_proof_for_another_target_is_refused(cluster: Cluster, service: ServiceThread, tmp_path: Path) -> None:
    roles = ("access", "require-trusted-device")
    # routed to pg-prod, but proven for pg-dev; and a proof for an SSH node with the database's name
    other_db = client_files(cluster, tmp_path, "alice", roles=roles, route="pg-prod", device=DEVICE, proof_for="pg-dev")
    assert TRUSTED_DEVICE_REQUIRED in refused(service, other_db)
    assert events_for(cluster, service, "alice", "db.session.start")[-1]["error"] == PROOF_FOR_ANOTHER_TARGET
    ssh = client_files(
        cluster, tmp_path, "alice", roles=roles, route="pg-prod", device=DEVICE, proof_for="pg-prod", proof_kind="ssh"
    )
    assert TRUSTED_DEVICE_REQUIRED in refused(service, ssh)


# ------------------------------------------------------------------------------------------------- locks
def test_a_lock_ends_a_live_session(cluster: Cluster, service: ServiceThread, tmp_path: Path) -> None:
    files = client_files(
        cluster, tmp_path, "lena", route="pg-prod", traits={"db_users": ["alice"], "db_names": ["test"]}
    )
    conn = connect(service, files)
    try:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        cluster.lock("lena-lock", "user", "lena", "incident 42")
        service.refresh()
        with pytest.raises(psycopg.OperationalError) as ended:
            conn.execute("SELECT 2")
        assert "locked: incident 42" in str(ended.value)
        assert isinstance(ended.value, psycopg.errors.AdminShutdown)
    finally:
        conn.close()
    assert "locked: incident 42" in refused(service, files)
    end = events_for(cluster, service, "lena", "db.session.end")[-1]
    assert end["reason"] == "locked: incident 42"


def test_a_lock_on_the_database_service_ends_its_sessions(
    cluster: Cluster, service: ServiceThread, tmp_path: Path
) -> None:
    files = client_files(cluster, tmp_path, "alice", route="pg-dev")
    conn = connect(service, files)
    name = "db-service-lock"
    try:
        cluster.lock(name, "node", "db-host", "maintenance")
        service.refresh()
        with pytest.raises(psycopg.errors.AdminShutdown, match="locked: maintenance"):
            conn.execute("SELECT 1")
    finally:
        conn.close()
        cluster.server.delete_lock(cluster.admin, name)
        service.refresh()
    with connect(service, files) as again:
        assert again.execute("SELECT 1").fetchone() == (1,)


# ------------------------------------------------------------------------------------------------ cancel
def test_a_cancel_request_over_tls_reaches_the_backend(
    cluster: Cluster, service: ServiceThread, tmp_path: Path
) -> None:
    """libpq 17+'s cancel: a new TLS connection with the client's certificate. (psycopg's legacy ``cancel()``
    would block this whole process, service threads included, inside libpq.)"""
    files = client_files(cluster, tmp_path, "alice", route="pg-prod")
    with connect(service, files) as conn:
        timer = threading.Timer(0.5, lambda: conn.cancel_safe(timeout=5))
        timer.start()
        started = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(20)")
        assert time.monotonic() - started < 10
        assert conn.execute("SELECT 'still usable'").fetchone() == ("still usable",)


def test_psql_interrupted_cancels_its_query_through_the_service(
    cluster: Cluster, service: ServiceThread, tmp_path: Path
) -> None:
    """psql's Ctrl-C sends a plain CancelRequest on a new connection (libpq's signal-safe PQcancel): the service
    passes it to the server running that backend."""
    psql = require_psql()
    files = client_files(cluster, tmp_path, "alice", route="pg-prod")
    conninfo = " ".join(
        f"{k}={v}" for k, v in files.conninfo(service.service.port, user="alice", dbname="test").items()
    )
    started = time.monotonic()
    process = subprocess.Popen(
        [psql, conninfo, "-c", "SELECT pg_sleep(20)"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    time.sleep(1.5)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=15)
    assert "canceling statement due to user request" in stderr, stderr
    assert time.monotonic() - started < 10


# ------------------------------------------------------------------------------------ protocol violations
def _raw(service: ServiceThread) -> socket.socket:
    return socket.create_connection(("127.0.0.1", service.service.port), timeout=10)


def _read_all(sock: socket.socket) -> bytes:
    """Everything the service sends until it closes the connection (a reset counts as a close)."""
    data = b""
    try:
        while chunk := sock.recv(4096):
            data += chunk
    except (ConnectionResetError, ssl.SSLError):
        pass
    return data


def _startup(**parameters: str) -> bytes:
    body = struct.pack("!i", 3 << 16) + b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in parameters.items())
    body += b"\0"
    return struct.pack("!i", len(body) + 4) + body


SSL_REQUEST = struct.pack("!ii", 8, 80877103)
GSSENC_REQUEST = struct.pack("!ii", 8, 80877104)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        pytest.param(struct.pack("!i", 2_000_000_000) + b"x" * 8, b"invalid length of startup packet", id="absurd"),
        pytest.param(struct.pack("!i", 3), b"invalid length of startup packet", id="too-short"),
        pytest.param(b"\x00\x00\x00\x20\x00\x03\x00\x00user\x00al", b"incomplete startup packet", id="truncated"),
        pytest.param(struct.pack("!ii", 8, 1234), b"unsupported frontend protocol", id="unknown-code"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"invalid length of startup packet", id="http"),
        pytest.param(_startup(user="alice", database="test"), b"admits only clients with a certificate", id="no-tls"),
        pytest.param(GSSENC_REQUEST + _startup(user="alice"), b"N", id="gssenc-declined-then-plain"),
    ],
)
def test_malformed_input_gets_an_error_or_a_close_and_the_service_carries_on(
    cluster: Cluster, service: ServiceThread, tmp_path: Path, payload: bytes, expected: bytes
) -> None:
    with _raw(service) as sock:
        sock.sendall(payload)
        if payload.startswith(b"\x00\x00\x00\x20"):
            sock.shutdown(socket.SHUT_WR)  # the rest never comes
        answer = _read_all(sock)
    assert expected in answer, answer
    if answer and answer[:1] == b"E":
        assert b"SFATAL\x00" in answer
    # everything else is still served
    with connect(service, client_files(cluster, tmp_path, "alice", route="pg-prod")) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def _tls(service: ServiceThread, files: ClientFiles | None, *, direct: bool = False) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=str(files.root) if files else None)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if files is not None:
        context.load_cert_chain(files.cert, files.key)
    if direct:
        context.set_alpn_protocols(["postgresql"])
    sock = _raw(service)
    if not direct:
        sock.sendall(SSL_REQUEST)
        assert sock.recv(1) == b"S"
    return context.wrap_socket(sock)


def test_tls_without_a_client_certificate_gets_a_postgres_error(
    cluster: Cluster, service: ServiceThread, tmp_path: Path
) -> None:
    with _tls(service, None) as sock:
        sock.sendall(_startup(user="alice", database="test"))
        answer = _read_all(sock)
    assert answer.startswith(b"E") and b"C28000\x00" in answer and b"admits only clients with a certificate" in answer


def test_a_certificate_from_another_ca_is_refused(cluster: Cluster, service: ServiceThread, tmp_path: Path) -> None:
    from datetime import UTC, datetime

    foreign = CertAuthority.generate("user", "agent.test", datetime.now(UTC))
    files = client_files(cluster, tmp_path, "alice", route="pg-prod", ca=foreign)
    with pytest.raises(psycopg.OperationalError):
        connect(service, files).close()


def test_an_empty_user_is_refused(cluster: Cluster, service: ServiceThread, tmp_path: Path) -> None:
    files = client_files(cluster, tmp_path, "alice", route="pg-prod")
    with _tls(service, files) as sock:
        sock.sendall(_startup(database="test"))
        answer = _read_all(sock)
    assert b"no PostgreSQL user name specified in startup packet" in answer


def test_direct_tls_as_postgresql_17_clients_negotiate_it(
    cluster: Cluster, service: ServiceThread, tmp_path: Path
) -> None:
    files = client_files(cluster, tmp_path, "alice", route="pg-prod")
    with _tls(service, files, direct=True) as sock:
        assert sock.selected_alpn_protocol() == "postgresql"
        sock.sendall(_startup(user="alice", database="test"))
        first = sock.recv(1)
    assert first == b"R"  # the server's authentication request: the session reached PostgreSQL


def test_a_certificate_without_a_database_is_refused(cluster: Cluster, service: ServiceThread, tmp_path: Path) -> None:
    files = client_files(cluster, tmp_path, "alice")
    assert "the certificate names no database" in refused(service, files)
