"""db_service: PostgreSQL databases behind device trust, RBAC and locks, decided like SSH sessions.

Life of the service: the same as an SSH node's (:mod:`devicetrust.agent.membership`): join with a ``db`` token
(or reuse ``<data_dir>/db/``), poll the cluster state, heartbeat its databases, forward audit events. It listens
for PostgreSQL clients on one address for all its databases.

Life of a connection (one thread each, see :mod:`.relay`):
1. The client's first packets: a GSSENCRequest is answered ``N``; an SSLRequest ``S`` and TLS follows (or TLS
   straight away, PostgreSQL 17's ``sslnegotiation=direct``); a CancelRequest is passed to the server running the
   backend it names, if that backend is one of this service's sessions, and the connection closes.
2. TLS asks for a client certificate from the cluster's user CA; a StartupMessage without one is refused.
3. The certificate says which database (its route, or the target of its session proof); the StartupMessage says
   which database user and name (the name defaults to the user; an empty user is refused).
4. :func:`devicetrust.access.decide` decides against the cached state, with a fresh session proof for this
   database required where a device is. A denial is a PostgreSQL ErrorResponse (FATAL, SQLSTATE 28000) with the
   decision's reason, sent before anything reaches the database.
5. The service connects to the database (TLS when the database has a ``ca_file``), forwards the StartupMessage
   and relays. The server's own authentication, if it asks for any, is between it and the client.
6. Audit: ``db.session.start`` once the database accepted or refused the session (or the service refused it),
   ``db.session.end`` when it ends. A lock that targets a live session ends it with FATAL 57P01 ``locked: …``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509

from devicetrust.access import (
    DatabaseSession,
    DatabaseTarget,
    Decision,
    database_session_locks,
    decide,
    lock_reason,
)
from devicetrust.agent.api import NodeAPI
from devicetrust.agent.audit import device_fields, user_fields
from devicetrust.agent.db.postgres import (
    SQLSTATE_ADMIN_SHUTDOWN,
    SQLSTATE_CONNECTION_FAILURE,
    SQLSTATE_INVALID_AUTHORIZATION,
    SQLSTATE_PROTOCOL_VIOLATION,
    SQLSTATE_TOO_MANY_CONNECTIONS,
    BackendKey,
    CancelRequest,
    GSSEncRequest,
    PostgresProtocolError,
    ServerStream,
    SSLRequest,
    StartupMessage,
    error_response,
    packet_length,
    parse_startup_packet,
)
from devicetrust.agent.db.relay import Relay, send_all
from devicetrust.agent.network import socket_addr
from devicetrust.agent.state import ClusterState
from devicetrust.agent.tls_service import TLSService
from devicetrust.config import DatabaseEntry
from devicetrust.crypto.certs import verify_x509_client_cert
from devicetrust.crypto.identity import Identity
from devicetrust.errors import ConfigError, DevicetrustError, TrustError
from devicetrust.protocol import DatabaseInfo
from devicetrust.types.clock import utcnow

__all__ = ["DatabaseService", "DatabaseServiceConfig", "upstream_address"]

log = logging.getLogger(__name__)

#: Seconds a client has to negotiate TLS and send its StartupMessage.
STARTUP_TIMEOUT_SECONDS = 30.0
#: Seconds to reach the database and, with TLS, finish its handshake.
UPSTREAM_CONNECT_TIMEOUT_SECONDS = 10.0
#: Sessions (and connections still starting) one service relays at once; beyond, clients are refused.
MAX_CONNECTIONS = 1000
#: Negotiation packets (GSSENCRequest, SSLRequest) a client may send before its StartupMessage.
MAX_NEGOTIATION_PACKETS = 2
#: Seconds live sessions get to end when the service stops.
STOP_SESSIONS_SECONDS = 5.0
#: The first byte of a TLS handshake record: a client starting TLS without an SSLRequest (PostgreSQL 17 direct).
_TLS_HANDSHAKE = 0x16
#: The ALPN protocol PostgreSQL 17 clients require with direct TLS.
ALPN_POSTGRESQL = "postgresql"
DB_PROTOCOL_POSTGRES = "postgres"
NO_STATE_REASON = "this database service has not received the cluster's access policy yet; try again shortly"
NO_CERTIFICATE_REASON = (
    "this database service admits only clients with a certificate from the cluster: "
    "use 'tsh proxy db NAME' or 'tsh db connect NAME'"
)
NO_ROUTE_REASON = "the certificate names no database: use 'tsh db login NAME' or 'tsh proxy db NAME'"


@dataclass(frozen=True)
class DatabaseServiceConfig:
    """What a database service needs to run. ``listen_addr`` may use port 0 (tests): the bound port is advertised."""

    service_dir: Path
    hostname: str
    listen_addr: str
    auth_server: str
    databases: tuple[DatabaseEntry, ...]
    auth_ca_pem: str | None = None
    join_token: str | Callable[[], str] | None = None


class _Refused(Exception):
    """The session is refused before relaying: ``reason`` goes to the client, ``audit_reason`` to the audit."""

    def __init__(self, reason: str, code: str = SQLSTATE_INVALID_AUTHORIZATION, audit_reason: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code
        self.audit_reason = audit_reason or reason


@dataclass
class _Session:
    """One client connection, from accept to close."""

    session_id: str
    peer: str
    started: datetime
    #: the client's socket: the TCP one, then the TLS one wrapping it
    sock: socket.socket
    identity: Identity | None = None
    authenticated_at: datetime | None = None
    database: DatabaseEntry | None = None
    target: DatabaseTarget | None = None
    db_user: str = ""
    db_name: str = ""
    decision: Decision | None = None
    relay: Relay | None = None
    backend_key: BackendKey | None = None
    announced: bool = False
    #: set by a lock found before the relay started
    ending: str = ""


class DatabaseService(TLSService[DatabaseServiceConfig]):
    role = "db"
    title = "database service"

    def __init__(self, config: DatabaseServiceConfig, *, clock: Callable[[], datetime] = utcnow) -> None:
        names = [database.name for database in config.databases]
        if len(set(names)) != len(names):
            raise ConfigError("db_service.databases: each name may appear once")
        self.databases = {database.name: database for database in config.databases}
        super().__init__(config, clock=clock)
        self._listener: socket.socket | None = None
        self._accepting: threading.Thread | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._sessions: dict[str, _Session] = {}
        self._threads: set[threading.Thread] = set()
        self._tls: ssl.SSLContext | None = None
        self._upstream_tls: dict[str, ssl.SSLContext] = {}

    # ------------------------------------------------------------------------------------------ life cycle
    async def start(self) -> None:
        """Join (or reuse the stored identity), fetch the state, listen. Raises DevicetrustError on failure."""
        for database in self.config.databases:
            if database.ca_file is not None:
                self._upstream_tls[database.name] = _upstream_context(database)
        identity, self._tls, (host, port) = await self.join(ALPN_POSTGRESQL)
        try:
            listener = socket.create_server((host, port), family=_family(host), backlog=128, reuse_port=False)
        except OSError as err:
            raise ConfigError(f"db_service.listen_addr {self.config.listen_addr}: {err.strerror or err}") from None
        listener.settimeout(0.5)  # the accept loop checks for stop this often
        self._listener = listener
        self.port = int(listener.getsockname()[1])
        self._accepting = threading.Thread(target=self._accept_loop, name="db-accept", daemon=True)
        self._run(self._accepting)
        log.info(
            "db service started",
            extra={
                "listen_addr": self.advertised_addr(self.port),
                "host_id": identity.host_id,
                "hostname": self.config.hostname,
                "databases": sorted(self.databases),
            },
        )

    async def stop(self) -> None:
        """Stop accepting, end live sessions, flush audit events (bounded), close the API client."""
        self._stopping.set()
        if self._accepting is not None:
            await asyncio.to_thread(self._accepting.join, 2.0)
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            sessions = list(self._sessions.values())
        for session in sessions:
            self._end(session, "the database service is shutting down")
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            await asyncio.to_thread(thread.join, STOP_SESSIONS_SECONDS)
        await self.membership.stop()
        log.info("db service stopped")

    async def _heartbeat(self, api: NodeAPI) -> None:
        databases = [
            DatabaseInfo.model_construct(
                name=database.name, protocol=database.protocol, uri=database.uri, labels=dict(database.labels)
            )
            for database in self.config.databases
        ]
        await api.heartbeat(
            hostname=self.config.hostname, addr=self.advertised_addr(self.port), labels={}, databases=databases
        )

    # ------------------------------------------------------------------------------------------ locks
    def _state_updated(self, state: ClusterState) -> None:
        """End every live session a lock now targets (user, role, verified device, this service)."""
        now = self.clock()
        with self._lock:
            sessions = list(self._sessions.values())
        for session in sessions:
            if session.identity is None or session.target is None:
                continue
            locks = database_session_locks(session.identity, session.target, state.locks, now)
            if locks:
                self._end(session, lock_reason(locks[0]))

    def _end(self, session: _Session, reason: str) -> None:
        session.ending = session.ending or reason
        if session.relay is not None:
            session.relay.terminate(error_response(reason, SQLSTATE_ADMIN_SHUTDOWN))

    # ------------------------------------------------------------------------------------------ connections
    def _accept_loop(self) -> None:
        listener = self._listener
        assert listener is not None
        while not self._stopping.is_set():
            try:
                conn, addr = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stopping.is_set():
                    return
                continue
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                crowded = len(self._threads) >= MAX_CONNECTIONS
            if crowded:
                with contextlib.suppress(OSError):
                    conn.sendall(error_response("sorry, too many clients already", SQLSTATE_TOO_MANY_CONNECTIONS))
                conn.close()
                continue
            thread = threading.Thread(target=self._serve, args=(conn, socket_addr(addr)), daemon=True)
            with self._lock:
                self._threads.add(thread)
            thread.start()

    def _serve(self, conn: socket.socket, peer: str) -> None:
        session = _Session(session_id=str(uuid.uuid4()), peer=peer, started=self.clock(), sock=conn)
        try:
            self._session(session)
        except Exception:  # a bug must cost one connection, never the service
            log.exception("database connection failed", extra={"remote_addr": peer})
        finally:
            _close(session.sock)
            with contextlib.suppress(OSError):
                conn.close()
            with self._lock:
                self._sessions.pop(session.session_id, None)
                self._threads.discard(threading.current_thread())

    def _session(self, session: _Session) -> None:
        """Run one connection to its end."""
        session.sock.settimeout(STARTUP_TIMEOUT_SECONDS)
        try:
            startup = self._negotiate(session)
        except PostgresProtocolError as err:
            _send_quietly(session.sock, error_response(str(err), SQLSTATE_PROTOCOL_VIOLATION))
            return
        except _Refused as refused:
            _send_quietly(session.sock, error_response(refused.reason, refused.code))
            return
        except _ClientGone:
            return
        if isinstance(startup, CancelRequest):
            self._cancel(startup, session)
            return
        with self._lock:
            self._sessions[session.session_id] = session
        try:
            upstream = self._authorize_and_connect(session, startup)
        except _Refused as refused:
            self._emit_start(session, success=False, error=refused.audit_reason)
            _send_quietly(session.sock, error_response(refused.reason, refused.code))
            return
        try:
            self._relay(session.sock, upstream, session, startup)
        finally:
            with contextlib.suppress(OSError):
                upstream.close()

    def _negotiate(self, session: _Session) -> StartupMessage | CancelRequest:
        """Read the client's packets up to its StartupMessage (or CancelRequest), doing TLS on the way
        (``session.sock`` becomes the TLS socket)."""
        tls = False
        for _ in range(MAX_NEGOTIATION_PACKETS + 1):
            first = _peek(session.sock) if not tls else b""
            if first and first[0] == _TLS_HANDSHAKE:
                session.sock = self._start_tls(session)
                tls = True
                continue
            header = _read_exactly(session.sock, 4)
            packet = header + _read_exactly(session.sock, packet_length(header) - 4)
            message = parse_startup_packet(packet)
            if isinstance(message, GSSEncRequest) and not tls:
                _send(session.sock, b"N")
            elif isinstance(message, SSLRequest) and not tls:
                _send(session.sock, b"S")
                session.sock = self._start_tls(session)
                tls = True
            elif isinstance(message, CancelRequest):
                return message
            elif isinstance(message, StartupMessage):
                if not tls:
                    raise _Refused(NO_CERTIFICATE_REASON)
                return message
            else:
                raise PostgresProtocolError("unexpected encryption request after TLS was negotiated")
        raise PostgresProtocolError("too many encryption requests")

    def _start_tls(self, session: _Session) -> ssl.SSLSocket:
        assert self._tls is not None and self._user_ca is not None
        try:
            client = self._tls.wrap_socket(session.sock, server_side=True)
        except (ssl.SSLError, OSError) as err:
            log.info("TLS handshake failed", extra={"remote_addr": session.peer, "error": str(err)})
            raise _ClientGone from None
        session.authenticated_at = self.clock()
        der = client.getpeercert(binary_form=True)
        if der:
            try:
                session.identity = verify_x509_client_cert(
                    x509.load_der_x509_certificate(der), self._user_ca, session.authenticated_at
                )
            except (TrustError, ValueError) as err:
                log.info("client certificate refused", extra={"remote_addr": session.peer, "reason": str(err)})
        return client

    # ------------------------------------------------------------------------------------------ decision
    def _authorize_and_connect(self, session: _Session, startup: StartupMessage) -> socket.socket:
        identity = session.identity
        if identity is None:
            raise _Refused(NO_CERTIFICATE_REASON)
        if not startup.user:
            raise _Refused("no PostgreSQL user name specified in startup packet")
        session.db_user, session.db_name = startup.user, startup.database
        name = _database_name(identity)
        if name is None:
            raise _Refused(NO_ROUTE_REASON)
        database = self.databases.get(name)
        if database is None:
            raise _Refused(f'database "{name}" is not served by {self.config.hostname}')
        session.database = database
        session.target = DatabaseTarget(
            name=database.name,
            protocol=database.protocol,
            labels=database.labels,
            service_id=self.host_id,
            service_hostname=self.config.hostname,
        )
        state = self.membership.current_state
        if state is None:
            raise _Refused(NO_STATE_REASON)
        decision = decide(
            identity,
            database=DatabaseSession(session.target, session.db_user, session.db_name),
            roles=state.roles,
            cluster_mode=state.device_trust_mode,
            locks=state.locks,
            now=self.clock(),
            session_proof=state.auth_preference.device_trust.session_proof,
            authenticated_at=session.authenticated_at,
        )
        session.decision = decision
        if not decision.allowed:
            log.info(
                "database session refused",
                extra={
                    "user": identity.username,
                    "db": name,
                    "db_user": session.db_user,
                    "reason": decision.audit_reason,
                },
            )
            raise _Refused(decision.reason, audit_reason=decision.audit_reason)
        try:
            return self._connect_upstream(database)
        except DevicetrustError as err:
            raise _Refused(str(err), SQLSTATE_CONNECTION_FAILURE) from None

    def _connect_upstream(self, database: DatabaseEntry) -> socket.socket:
        host, port = upstream_address(database)
        try:
            sock = socket.create_connection((host, port), timeout=UPSTREAM_CONNECT_TIMEOUT_SECONDS)
        except OSError as err:
            raise DevicetrustError(f"cannot reach database {database.name}: {err.strerror or err}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        context = self._upstream_tls.get(database.name)
        if context is None:
            return sock
        try:
            sock.sendall(_SSL_REQUEST)
            answer = sock.recv(1)
            if answer != b"S":
                raise DevicetrustError(f"database {database.name} does not accept TLS (its ca_file is set)")
            return context.wrap_socket(sock, server_hostname=host)
        except ssl.SSLCertVerificationError as err:
            sock.close()
            raise DevicetrustError(
                f"TLS to database {database.name} failed: its certificate does not verify with the service's "
                f"ca_file ({err.verify_message})"
            ) from None
        except (OSError, ssl.SSLError) as err:
            sock.close()
            raise DevicetrustError(f"TLS to database {database.name} failed: {err}") from None
        except DevicetrustError:
            sock.close()
            raise

    # ------------------------------------------------------------------------------------------ relay
    def _relay(
        self, client: socket.socket, upstream: socket.socket, session: _Session, startup: StartupMessage
    ) -> None:
        identity = session.identity
        assert identity is not None and session.database is not None
        stream = ServerStream()

        def watch(stream: ServerStream) -> None:
            if session.announced or stream.startup:
                return
            session.announced = True
            session.backend_key = stream.backend_key
            self._emit_start(session, success=stream.ready and not stream.startup_error, error=stream.startup_error)

        relay = Relay(client, upstream, stream, on_server_data=watch)
        session.relay = relay
        if session.ending:  # a lock arrived while the session was starting
            relay.terminate(error_response(session.ending, SQLSTATE_ADMIN_SHUTDOWN))
        try:
            send_all(upstream, startup.raw)
        except Exception:
            self._emit_start(session, success=False, error="the database closed the connection")
            return
        log.info(
            "database session started",
            extra={"user": identity.username, "db": session.database.name, "db_user": session.db_user},
        )
        ended = relay.run()
        if not session.announced:
            session.announced = True
            self._emit_start(session, success=False, error=session.ending or "the database closed the connection")
            return
        extra: dict[str, str] = {}
        if session.ending:
            extra["reason"] = session.ending
        if stream.ready and not stream.startup_error:
            self._emit(session, "db.session.end", success=True, **extra)
        log.info("database session ended", extra={"user": identity.username, "ended_by": ended})

    # ------------------------------------------------------------------------------------------ cancel
    def _cancel(self, request: CancelRequest, session: _Session) -> None:
        """Pass a CancelRequest to the database running the backend it names, if it is one of ours (and, when
        the canceller presented a certificate, one of its user's sessions)."""
        with self._lock:
            targets = [s for s in self._sessions.values() if s.backend_key == request.key and s.database is not None]
        if session.identity is not None:
            targets = [
                s for s in targets if s.identity is not None and s.identity.username == session.identity.username
            ]
        if not targets or targets[0].database is None:
            log.info("cancel request for an unknown backend ignored", extra={"remote_addr": session.peer})
            return
        try:
            upstream = self._connect_upstream(targets[0].database)
        except DevicetrustError as err:
            log.warning("cancel request not delivered", extra={"error": str(err)})
            return
        with contextlib.closing(upstream), contextlib.suppress(OSError):
            upstream.sendall(request.raw)

    # ------------------------------------------------------------------------------------------ audit
    def _emit_start(self, session: _Session, *, success: bool, error: str = "") -> None:
        self._emit(session, "db.session.start", success=success, **({"error": error} if error else {}))

    def _emit(self, session: _Session, name: str, *, success: bool, **extra: object) -> None:
        database = session.database
        event: dict[str, object] = {
            "event": name,
            **user_fields(session.identity),
            "sid": session.session_id,
            "success": success,
            "db_service": database.name if database is not None else "",
            "db_protocol": database.protocol if database is not None else DB_PROTOCOL_POSTGRES,
            "db_uri": database.uri if database is not None else "",
            "db_labels": dict(database.labels) if database is not None else {},
            "db_name": session.db_name,
            "db_user": session.db_user,
            "server_id": self.host_id,
            "server_hostname": self.config.hostname,
            **extra,
        }
        if session.peer:
            event["addr.remote"] = session.peer
        event.update(device_fields(session.identity, session.decision))
        self.emit(event)


class _ClientGone(Exception):
    """The client went away or broke the connection during negotiation."""


_SSL_REQUEST = (8).to_bytes(4, "big") + (80877103).to_bytes(4, "big")


def upstream_address(database: DatabaseEntry) -> tuple[str, int]:
    """HOST and PORT of a database's ``uri`` (``postgres://HOST:PORT/…`` or ``HOST:PORT``; port 5432 if none)."""
    rest = database.uri.split("://", 1)[-1].split("/", 1)[0]
    host, sep, port = rest.rpartition(":")
    if not sep or host.endswith(":") or (":" in host and not host.startswith("[")):
        host, port = rest, "5432"
    return host.strip("[]"), int(port)


def _database_name(identity: Identity) -> str | None:
    """Which database a certificate is for: its route, else the target of its session proof for a database."""
    if identity.db_route is not None:
        return identity.db_route.service_name
    proof = identity.session_proof
    if proof is not None and proof.kind == "db":
        return proof.target
    return None


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _peek(sock: socket.socket) -> bytes:
    try:
        return sock.recv(1, socket.MSG_PEEK)
    except (TimeoutError, OSError):
        raise _ClientGone from None


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        try:
            chunk = sock.recv(size - len(data))
        except (TimeoutError, OSError, ssl.SSLError):
            raise _ClientGone from None
        if not chunk:
            if data:
                raise PostgresProtocolError("incomplete startup packet")
            raise _ClientGone
        data += chunk
    return bytes(data)


def _send(sock: socket.socket, data: bytes) -> None:
    try:
        sock.sendall(data)
    except OSError:
        raise _ClientGone from None


def _close(sock: socket.socket) -> None:
    """Close a client connection; TLS ones with a close_notify first, as PostgreSQL does (libpq 17+ reports a
    TLS connection that just drops, e.g. after a cancel request, as an error)."""
    if isinstance(sock, ssl.SSLSocket):
        with contextlib.suppress(OSError, ValueError):
            sock.setblocking(False)  # send ours, do not wait for the client's
            sock.unwrap()
    with contextlib.suppress(OSError):
        sock.close()


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):
        sock.settimeout(STARTUP_TIMEOUT_SECONDS)
        sock.sendall(data)


def _upstream_context(database: DatabaseEntry) -> ssl.SSLContext:
    assert database.ca_file is not None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    try:
        context.load_verify_locations(cafile=str(database.ca_file))
    except (OSError, ssl.SSLError) as err:
        raise ConfigError(
            f"db_service.databases[{database.name}].ca_file: cannot read {database.ca_file}: {err}"
        ) from None
    return context
