"""tsh db and tsh proxy db: reach the cluster's databases through their database services.

``tsh db ls`` lists what the user's roles grant; ``tsh db login NAME`` gets an X.509 certificate routed to the
database (for the login key, expiring with it); ``tsh db connect NAME`` runs the real ``psql`` speaking TLS straight
to the database service (one hop); ``tsh db config NAME`` prints the same libpq parameters for any client; ``tsh
proxy db NAME`` listens on loopback for any PostgreSQL client (psql, psycopg, …) that cannot hold certificates.

Where device trust uses session proofs, each connection first proves the device for this database
(:mod:`devicetrust.cli.device_proof`) and presents the session certificate that comes back, so a copied profile gets
the service's "access to resource requires a trusted device": the local listener proves once per accepted
connection, ``tsh db connect`` once per psql run, ``tsh db config`` once per call (its certificate admits
connections for the proof's short life only). If the device cannot prove itself the connection is still attempted
with the database certificate, and the service gives its verdict to the client as a PostgreSQL error.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import click

from devicetrust.agent.db.postgres import (
    SQLSTATE_CONNECTION_FAILURE,
    SQLSTATE_PROTOCOL_VIOLATION,
    CancelRequest,
    GSSEncRequest,
    PostgresProtocolError,
    SSLRequest,
    StartupMessage,
    error_response,
    packet_length,
    parse_startup_packet,
)
from devicetrust.agent.db.relay import Relay, send_all
from devicetrust.cli.common import emit, format_option, labels_text, print_table, warn
from devicetrust.cli.device_proof import enrolled_backend, prove_for_session, wants_session_proof
from devicetrust.cli.profile import Profile, ProfileStore, session_client
from devicetrust.errors import ConnectionFailedError, DevicetrustError, NotFoundError, ValidationError
from devicetrust.files import write_atomic
from devicetrust.protocol import DatabaseServer

__all__ = [
    "COMMANDS",
    "DatabaseLogin",
    "DirectConnection",
    "LocalProxy",
    "db_login",
    "direct_connection",
    "session_certificate",
]

log = logging.getLogger(__name__)

#: Seconds to reach the database service and finish TLS with it.
CONNECT_TIMEOUT_SECONDS = 15.0
#: Seconds a local client has to send its StartupMessage.
STARTUP_TIMEOUT_SECONDS = 30.0
#: Negotiation packets (GSSENCRequest, SSLRequest) a local client may send before its StartupMessage.
MAX_NEGOTIATION_PACKETS = 2
_SSL_REQUEST = (8).to_bytes(4, "big") + (80877103).to_bytes(4, "big")
LOOPBACK = "127.0.0.1"


# ------------------------------------------------------------------------------------------- databases
def fetch_databases(store: ProfileStore, profile: Profile) -> list[DatabaseServer]:
    with session_client(store, profile) as client:
        return client.list_databases().items


def resolve_database(databases: Sequence[DatabaseServer], name: str) -> DatabaseServer:
    for database in databases:
        if database.name == name:
            return database
    raise NotFoundError(f"database \"{name}\" not found; run 'tsh db ls' to see the databases you may reach")


def _json(database: DatabaseServer) -> dict[str, object]:
    return database.model_dump()


# ------------------------------------------------------------------------------------------- db login
@dataclass(frozen=True)
class DatabaseLogin:
    """What ``tsh db login`` keeps for one database: the service to reach, the routed certificate, defaults."""

    name: str
    protocol: str
    host_id: str
    addr: str
    db_user: str
    db_name: str
    cert_path: Path
    key_path: Path

    def to_json(self) -> dict[str, str]:
        return {
            "name": self.name,
            "protocol": self.protocol,
            "host_id": self.host_id,
            "addr": self.addr,
            "db_user": self.db_user,
            "db_name": self.db_name,
            "cert": str(self.cert_path),
            "key": str(self.key_path),
        }


def _db_dir(store: ProfileStore, profile: Profile) -> Path:
    base = store.key_path(profile.proxy, profile.user)
    return base.with_name(base.name + "-db")


def _direct_dir(store: ProfileStore, profile: Profile) -> Path:
    """Where ``tsh db config`` writes libpq's files: a folder without the ':' of the proxy's address."""
    proxy = profile.proxy.replace(":", "_").replace("/", "_")
    return store.home / "db" / f"{proxy}-{_safe_name(profile.user)}"


def _safe_name(name: str) -> str:
    if not name or "/" in name or name.startswith("."):
        raise ValidationError(f"invalid database name {name!r}")
    return name


def db_login(
    store: ProfileStore, profile: Profile, name: str, *, db_user: str = "", db_name: str = ""
) -> DatabaseLogin:
    """Fetch a certificate routed to ``name`` and remember the database (``keys/<proxy>/<user>-db/``)."""
    with session_client(store, profile) as client:
        reply = client.database_cert(
            _safe_name(name), store.ssh_cert_path(profile).read_text(), db_user=db_user, db_name=db_name
        )
    folder = _db_dir(store, profile)
    cert_path = folder / f"{name}-x509.pem"
    write_atomic(cert_path, reply.tls_cert.encode(), 0o600)
    login = DatabaseLogin(
        name=name,
        protocol=reply.database.protocol,
        host_id=reply.database.service.host_id,
        addr=reply.database.service.addr,
        db_user=db_user,
        db_name=db_name,
        cert_path=cert_path,
        key_path=store.key_path(profile.proxy, profile.user),
    )
    write_atomic(folder / f"{name}.json", json.dumps(login.to_json(), indent=2).encode(), 0o600)
    return login


def load_db_login(store: ProfileStore, profile: Profile, name: str) -> DatabaseLogin | None:
    path = _db_dir(store, profile) / f"{_safe_name(name)}.json"
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        return DatabaseLogin(
            name=str(data["name"]),
            protocol=str(data["protocol"]),
            host_id=str(data["host_id"]),
            addr=str(data["addr"]),
            db_user=str(data["db_user"]),
            db_name=str(data["db_name"]),
            cert_path=Path(data["cert"]),
            key_path=Path(data["key"]),
        )
    except (ValueError, KeyError, TypeError):
        return None


def _fresh_login(store: ProfileStore, profile: Profile, name: str, db_user: str, db_name: str) -> DatabaseLogin:
    """The database's login, renewed (the routed certificate follows the login certificate's life)."""
    previous = load_db_login(store, profile, name)
    return db_login(
        store,
        profile,
        name,
        db_user=db_user or (previous.db_user if previous else ""),
        db_name=db_name or (previous.db_name if previous else ""),
    )


# ------------------------------------------------------------------------------------------- device proof
def session_certificate(
    store: ProfileStore, profile: Profile, name: str, device_key: str | None, warn_once: Callable[[str], None] = warn
) -> str | None:
    """A session certificate (PEM) with a fresh device proof for database ``name``, or None where no proof is
    wanted or the device cannot give one (the routed database certificate is used then, and the service decides)."""
    if not wants_session_proof(profile) or enrolled_backend(store, device_key) is None:
        return None
    try:
        proof = prove_for_session(store, profile, "db", name, backend=device_key)
    except DevicetrustError as err:
        warn_once(f"this device could not prove itself for the session: {err}")
        return None
    return proof.tls_cert_pem


@dataclass(frozen=True)
class DirectConnection:
    """What a PostgreSQL client needs to speak TLS straight to the database service, with no local listener:
    libpq's ``sslmode=verify-full`` checks the service's certificate (from the cluster's host CA, naming its host
    id) and presents the session certificate, whose device proof admits connections only for its short life."""

    host_id: str
    hostaddr: str
    port: int
    cert_path: Path
    key_path: Path
    root_path: Path
    user: str
    dbname: str

    def parameters(self) -> dict[str, str]:
        values = {
            "host": self.host_id,
            "hostaddr": self.hostaddr,
            "port": str(self.port),
            "sslmode": "verify-full",
            "sslcert": str(self.cert_path),
            "sslkey": str(self.key_path),
            "sslrootcert": str(self.root_path),
            "gssencmode": "disable",
            "user": self.user,
            "dbname": self.dbname,
        }
        return {key: value for key, value in values.items() if value}

    def conninfo(self) -> str:
        return " ".join(f"{key}={_conninfo_value(value)}" for key, value in self.parameters().items())


def _conninfo_value(value: str) -> str:
    if value and not any(char in value for char in " '\\"):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def direct_connection(
    store: ProfileStore,
    profile: Profile,
    login: DatabaseLogin,
    folder: Path,
    *,
    user: str,
    dbname: str,
    device_key: str | None = None,
) -> DirectConnection:
    """Prove the device for ``login``'s database where the cluster wants it and write what libpq needs into
    ``folder`` (the session certificate, a copy of the login key, the host CA)."""
    host_ca = store.pinned_ca(profile.proxy)
    if host_ca is None:
        raise ValidationError(f"no pinned CA for {profile.proxy}; run 'tsh login'")
    host, _, port = login.addr.rpartition(":")
    try:
        hostaddr = socket.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_STREAM)[0][4][0]
    except (OSError, ValueError) as err:
        raise ConnectionFailedError(f"cannot resolve the database service at {login.addr}: {err}") from None
    cert_path = login.cert_path
    session_pem = session_certificate(store, profile, login.name, device_key)
    if session_pem is not None:
        cert_path = folder / f"{login.name}-session-x509.pem"
        write_atomic(cert_path, session_pem.encode(), 0o600)
    root_path = folder / "host-ca.pem"
    write_atomic(root_path, host_ca.encode(), 0o600)
    # libpq reads an sslkey with a ':' as ENGINE:KEY, and key folders are named after the proxy's HOST:PORT
    key_path = folder / f"{login.name}.key"
    if ":" in str(key_path):
        raise ValidationError(f"{folder}: libpq cannot read a key file whose path contains ':'")
    write_atomic(key_path, login.key_path.read_bytes(), 0o600)
    return DirectConnection(
        host_id=login.host_id,
        hostaddr=str(hostaddr),
        port=int(port),
        cert_path=cert_path,
        key_path=key_path,
        root_path=root_path,
        user=user,
        dbname=dbname,
    )


# ------------------------------------------------------------------------------------------- local proxy
class _Refused(Exception):
    def __init__(self, message: str, code: str = SQLSTATE_CONNECTION_FAILURE) -> None:
        super().__init__(message)
        self.code = code


class LocalProxy:
    """A loopback listener for one database: plain PostgreSQL in, TLS with the user's certificate out."""

    def __init__(
        self,
        store: ProfileStore,
        profile: Profile,
        login: DatabaseLogin,
        host_ca_pem: str,
        *,
        port: int = 0,
        device_key: str | None = None,
    ) -> None:
        self.store, self.profile, self.login = store, profile, login
        self._host_ca_pem = host_ca_pem
        self._device_key = device_key
        self._listener = socket.create_server((LOOPBACK, port), backlog=64)
        self.port = int(self._listener.getsockname()[1])
        self._stopping = threading.Event()
        # one ceremony at a time: a device answers one challenge after another
        self._proof_lock = threading.Lock()
        self._warned = False
        self._thread = threading.Thread(target=self._accept_loop, name="db-proxy", daemon=True)

    def start(self) -> LocalProxy:
        self._listener.settimeout(0.5)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(2)
        self._listener.close()

    def wait(self) -> None:
        while self._thread.is_alive():
            self._thread.join(0.5)

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        upstream: socket.socket | None = None
        try:
            conn.settimeout(STARTUP_TIMEOUT_SECONDS)
            startup = _read_startup(conn)
            if isinstance(startup, CancelRequest):
                self._cancel(startup)
                return
            upstream = self._connect(self._session_cert())
            send_all(upstream, startup.raw)
            Relay(conn, upstream, None).run()  # the service follows the server's frames; this listener need not
        except _Refused as refused:
            with contextlib.suppress(OSError):
                conn.sendall(error_response(str(refused), refused.code))
        except (OSError, ssl.SSLError, DevicetrustError) as err:
            log.debug("proxied connection ended", extra={"error": str(err)})
        finally:
            for sock in (upstream, conn):
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.close()

    def _session_cert(self) -> str | None:
        """A session certificate (PEM) for this database, or None to use the routed database certificate."""
        with self._proof_lock:
            return session_certificate(self.store, self.profile, self.login.name, self._device_key, self._warn_once)

    def _warn_once(self, message: str) -> None:
        if not self._warned:
            warn(message)
            self._warned = True

    def _context(self, session_cert_pem: str | None) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=self._host_ca_pem)
        if session_cert_pem is None:
            context.load_cert_chain(self.login.cert_path, self.login.key_path)
            return context
        with tempfile.TemporaryDirectory(prefix="tsh-db-") as folder:
            cert = Path(folder) / "session.pem"
            cert.write_text(session_cert_pem)
            context.load_cert_chain(cert, self.login.key_path)
        return context

    def _connect(self, session_cert_pem: str | None) -> ssl.SSLSocket:
        host, _, port = self.login.addr.rpartition(":")
        try:
            sock = socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_SECONDS)
        except (OSError, ValueError) as err:
            raise _Refused(f"cannot reach the database service at {self.login.addr}: {err}") from None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(_SSL_REQUEST)
            if sock.recv(1) != b"S":
                raise _Refused(f"the database service at {self.login.addr} did not accept TLS")
            # the service's certificate is from the cluster's host CA and names its host id
            return self._context(session_cert_pem).wrap_socket(sock, server_hostname=self.login.host_id)
        except (OSError, ssl.SSLError) as err:
            sock.close()
            raise _Refused(f"TLS with the database service at {self.login.addr} failed: {err}") from None

    def _cancel(self, request: CancelRequest) -> None:
        """Pass a cancel request on; no device proof (it carries the backend's secret key, and cancels only)."""
        try:
            upstream = self._connect(None)
        except _Refused as refused:
            log.debug("cancel request not delivered", extra={"error": str(refused)})
            return
        with contextlib.closing(upstream), contextlib.suppress(OSError):
            upstream.sendall(request.raw)


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionFailedError("the client closed the connection")
        data += chunk
    return bytes(data)


def _read_startup(conn: socket.socket) -> StartupMessage | CancelRequest:
    """The local client's StartupMessage (or CancelRequest); its encryption requests are declined: TLS is
    between this listener and the database service."""
    for _ in range(MAX_NEGOTIATION_PACKETS + 1):
        header = _read_exactly(conn, 4)
        try:
            message = parse_startup_packet(header + _read_exactly(conn, packet_length(header) - 4))
        except PostgresProtocolError as err:
            raise _Refused(str(err), SQLSTATE_PROTOCOL_VIOLATION) from None
        if isinstance(message, SSLRequest | GSSEncRequest):
            conn.sendall(b"N")
            continue
        return message
    raise _Refused("too many encryption requests", SQLSTATE_PROTOCOL_VIOLATION)


@contextlib.contextmanager
def running_proxy(
    store: ProfileStore, profile: Profile, name: str, *, port: int = 0, db_user: str = "", db_name: str = ""
) -> Iterator[LocalProxy]:
    host_ca = store.pinned_ca(profile.proxy)
    if host_ca is None:
        raise ValidationError(f"no pinned CA for {profile.proxy}; run 'tsh login'")
    login = _fresh_login(store, profile, name, db_user, db_name)
    try:
        proxy = LocalProxy(store, profile, login, host_ca, port=port).start()
    except OSError as err:
        raise ValidationError(f"--port={port}: cannot listen on {LOOPBACK}:{port}: {err.strerror or err}") from None
    try:
        yield proxy
    finally:
        proxy.stop()


# ---------------------------------------------------------------------------------------------- commands
@click.group("db")
def db() -> None:
    """Databases: list them, log in to one, connect with psql."""


@db.command("ls")
@format_option()
def db_ls(fmt: str) -> None:
    """List the databases you may reach, with the users your roles allow and their labels."""
    store = ProfileStore()
    databases = fetch_databases(store, store.require_current())
    emit(
        [_json(database) for database in databases],
        fmt,
        lambda _: print_table(
            ["Name", "Protocol", "Allowed Users", "Labels"],
            [(d.name, d.protocol, ", ".join(d.allowed_users) or "(none)", labels_text(d.labels)) for d in databases],
        ),
    )


_Command = TypeVar("_Command", bound=Callable[..., object])


def _db_options(function: _Command) -> _Command:
    function = click.option("--db-name", default="", help="Database name to connect to (default: the user's).")(
        function
    )
    return click.option("--db-user", default="", help="Database user to connect as.")(function)


@db.command("login")
@click.argument("name")
@_db_options
@format_option()
def db_login_command(name: str, db_user: str, db_name: str, fmt: str) -> None:
    """Get a certificate for database NAME (for 'tsh proxy db' and 'tsh db connect').

    Where the cluster requires session-time device proofs, each connection still proves the device."""
    store = ProfileStore()
    profile = store.require_current()
    login = db_login(store, profile, name, db_user=db_user, db_name=db_name)

    def text(_: object) -> None:
        click.echo(f'Logged into database "{name}" (served by {login.addr}).')
        click.echo(f"Connect with: tsh db connect {name}" + (f" --db-user={db_user}" if db_user else ""))
        click.echo(f"Or run a local listener for any client: tsh proxy db {name} --port=PORT")

    emit(login.to_json(), fmt, text)


@db.command("logout")
@click.argument("name", required=False)
def db_logout(name: str | None) -> None:
    """Forget the certificate of database NAME (of every database without NAME)."""
    store = ProfileStore()
    profile = store.require_current()
    folder, direct = _db_dir(store, profile), _direct_dir(store, profile)
    if name is None:
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(direct, ignore_errors=True)
        return
    for suffix in (".json", "-x509.pem"):
        (folder / f"{_safe_name(name)}{suffix}").unlink(missing_ok=True)
    for suffix in ("-session-x509.pem", ".key"):
        (direct / f"{_safe_name(name)}{suffix}").unlink(missing_ok=True)


@db.command("connect")
@click.argument("name")
@_db_options
def db_connect(name: str, db_user: str, db_name: str) -> None:
    """Run psql against database NAME, speaking TLS straight to its database service with a session certificate
    that proves this device (where the cluster requires it) for this connection only."""
    psql = shutil.which("psql")
    if psql is None:
        raise ValidationError("psql is not installed (or not on PATH); install the PostgreSQL client")
    store = ProfileStore()
    profile = store.require_current()
    login = _fresh_login(store, profile, name, db_user, db_name)
    user = db_user or login.db_user
    if not user:
        raise ValidationError("--db-user is required: which database user to connect as (see 'tsh db ls')")
    with tempfile.TemporaryDirectory(prefix="tsh-db-") as folder:
        connection = direct_connection(store, profile, login, Path(folder), user=user, dbname=db_name or login.db_name)
        status = subprocess.call([psql, connection.conninfo()])
    raise click.exceptions.Exit(status)


@db.command("config")
@click.argument("name")
@_db_options
@format_option()
def db_config(name: str, db_user: str, db_name: str, fmt: str) -> None:
    """Print how any PostgreSQL client reaches database NAME directly over TLS (libpq parameters).

    Where the cluster requires session-time device proofs, the certificate written here proves this device for a
    short while only: run this again for each new connection (or use 'tsh proxy db', which does it for you)."""
    store = ProfileStore()
    profile = store.require_current()
    login = _fresh_login(store, profile, name, db_user, db_name)
    connection = direct_connection(
        store,
        profile,
        login,
        _direct_dir(store, profile),
        user=db_user or login.db_user,
        dbname=db_name or login.db_name,
    )
    emit(connection.parameters(), fmt, lambda _: click.echo(connection.conninfo()))


@click.group("proxy")
def proxy() -> None:
    """Local listeners that carry clients to the cluster's resources."""


@proxy.command("db")
@click.argument("name")
@click.option("--port", type=click.IntRange(0, 65535), default=0, help="Local port to listen on (default: any).")
@_db_options
def proxy_db(name: str, port: int, db_user: str, db_name: str) -> None:
    """Listen on 127.0.0.1 for PostgreSQL clients of database NAME (psql, psycopg, …) until interrupted.

    Each connection proves this device for the database when the cluster requires it."""
    store = ProfileStore()
    profile = store.require_current()
    with running_proxy(store, profile, name, port=port, db_user=db_user, db_name=db_name) as local:
        user = db_user or local.login.db_user or "<user>"
        click.echo(f"Started DB proxy on {LOOPBACK}:{local.port}")
        click.echo(f'Use: psql "host={LOOPBACK} port={local.port} user={user} sslmode=disable"', err=False)
        stop = threading.Event()
        for stop_signal in (signal.SIGINT, signal.SIGTERM):
            signal.signal(stop_signal, lambda *_: stop.set())
        while not stop.wait(0.5):
            pass


COMMANDS = (db, proxy)
