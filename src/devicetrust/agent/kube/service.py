"""kube_service: Kubernetes API servers behind device trust, RBAC and locks, decided like SSH and database sessions.

Life of the service: the same as an SSH node's or a database service's (:mod:`devicetrust.agent.membership`):
join with a ``kube`` token (or reuse ``<data_dir>/kube/``), poll the cluster state, heartbeat its clusters,
forward audit events. It listens for kubectl (HTTPS, HTTP/1.1) on one address for all its clusters; a cluster's
requests come under ``/kube/<name>/`` (the server URL ``tsh kube login`` writes).

Life of a request (one thread per connection):
1. TLS asks for a client certificate from the cluster's user CA (the session certificate ``tsh kube
   credentials`` returns); a request without one gets 401 Unauthorized.
2. :func:`devicetrust.access.decide` decides against the cached state at the time of the request, with a fresh
   session proof for this cluster required where a device is. A denial is an HTTP 403 ``metav1.Status``
   (kubectl: ``Error from server (Forbidden): access to resource requires a trusted device``).
3. The request goes to the API server with the service's bearer token and ``Impersonate-User`` /
   ``Impersonate-Group`` from the granted kubernetes_users / kubernetes_groups (:func:`.requests.impersonation`);
   the client's own credentials and impersonation headers never pass through.
4. The reply is relayed (:mod:`.http1` frames both the client's request and the API server's reply); a streamed
   one (a watch, ``logs -f``) chunk by chunk as it arrives.
5. A protocol upgrade (``exec``, ``attach``, ``port-forward`` over WebSocket or SPDY) goes on a connection of its
   own with the same token and impersonation; after the API server's 101, bytes both ways (unread) until either
   side closes.
6. A lock that targets an open stream (a watch, ``logs -f``, an upgraded one) ends it: both connections are shut
   down.
7. Audit: ``kube.request`` with the path, verb, response code, cluster and resource (and subresource), and the
   device block; an upgraded stream's when it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import select
import socket
import socketserver
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from cryptography import x509

from devicetrust.access import Decision, KubeClusterTarget, allowed_until, decide, kube_session_locks, lock_reason
from devicetrust.agent.api import NodeAPI
from devicetrust.agent.audit import device_fields, encoded_members, joined_members, user_fields
from devicetrust.agent.kube import spdy
from devicetrust.agent.kube.http1 import (
    MAX_LINE,
    MAX_REQUEST_HEAD,
    Fields,
    MalformedReply,
    MalformedRequest,
    Reply,
    ReplyCutShort,
    RequestHeads,
    head_end,
    read_chunked_body,
    read_fields,
)
from devicetrust.agent.kube.kubeconfig import api_server_access
from devicetrust.agent.kube.requests import (
    ImpersonationRefused,
    impersonation,
    request_info,
    route,
    status_body,
)
from devicetrust.agent.network import socket_addr
from devicetrust.agent.state import ClusterState
from devicetrust.agent.tls_service import TLSService
from devicetrust.config import KubeClusterEntry
from devicetrust.crypto.certs import verify_x509_client_cert
from devicetrust.crypto.identity import Identity
from devicetrust.errors import ConfigError, TrustError
from devicetrust.protocol import KubeClusterInfo
from devicetrust.types.clock import utcnow

__all__ = ["KubeService", "KubeServiceConfig"]

log = logging.getLogger(__name__)

#: Seconds to reach the API server and get its reply's headers (a watch's body may then stream for hours).
UPSTREAM_TIMEOUT_SECONDS = 30.0
#: Largest request body relayed (kubectl apply of a large manifest fits).
MAX_REQUEST_BODY = 16 * 1024 * 1024
#: Kept-alive connections to each API server, at most.
MAX_IDLE_UPSTREAM_CONNECTIONS = 16
#: Bytes read from a streamed reply at a time.
STREAM_CHUNK = 64 * 1024
NO_STATE_REASON = "this kube service has not received the cluster's access policy yet; try again shortly"
NO_CERTIFICATE_REASON = "Unauthorized"
#: Longest status line and headers of an API server's reply to an upgrade.
MAX_REPLY_HEAD = 64 * 1024
#: Headers that concern one connection only (RFC 9110 §7.6.1), and those the service sets itself.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "authorization",
    }
)


@dataclass(frozen=True)
class KubeServiceConfig:
    """What a kube service needs to run. ``listen_addr`` may use port 0 (tests): the bound port is advertised."""

    service_dir: Path
    hostname: str
    listen_addr: str
    auth_server: str
    clusters: tuple[KubeClusterEntry, ...]
    auth_ca_pem: str | None = None
    join_token: str | Callable[[], str] | None = None


@dataclass
class _Upstream:
    entry: KubeClusterEntry
    host: str
    port: int
    base_path: str
    context: ssl.SSLContext
    token: str
    #: ``host:port`` as the Host header names the API server
    authority: str
    #: kept-alive connections to the API server, as a client of it keeps them (a TLS handshake per request
    #: would cost more than the request)
    idle: list[ssl.SSLSocket] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def connection(self) -> tuple[ssl.SSLSocket, bool]:
        """An idle connection (and True), else a new one (and False)."""
        with self.lock:
            if self.idle:
                return self.idle.pop(), True
        return self.dial(), False

    def dial(self) -> ssl.SSLSocket:
        """A new connection (an upgraded one is never reused)."""
        raw = socket.create_connection((self.host, self.port), timeout=UPSTREAM_TIMEOUT_SECONDS)
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return self.context.wrap_socket(raw, server_hostname=self.host)
        except BaseException:
            raw.close()
            raise

    def release(self, sock: ssl.SSLSocket) -> None:
        """Keep a connection whose reply was read to its end, with the timeout it was dialled with."""
        with self.lock:
            if len(self.idle) < MAX_IDLE_UPSTREAM_CONNECTIONS:
                self.idle.append(sock)
                return
        sock.close()

    def request_line(self, method: str, api_path: str) -> bytes | None:
        """A request's line as sent to the API server (with its line end); None if it cannot be sent."""
        return _http_lines([f"{method} {self.base_path}{api_path} HTTP/1.1"])

    def header_lines(self, headers: list[tuple[str, str]]) -> bytes | None:
        """A request's header lines as sent to the API server, Host first, up to the empty line that ends the head;
        None if a value cannot be sent."""
        lines = [f"Host: {self.authority}", *(f"{key}: {value}" for key, value in headers), ""]
        return _http_lines(lines)


def _http_lines(lines: list[str]) -> bytes | None:
    """``lines``, each ended by CRLF, as sent; None if one holds a line break or a character outside Latin-1."""
    text = "\r\n".join(lines) + "\r\n"
    if text.count("\n") != len(lines) or "\r" in text.replace("\r\n", ""):
        return None
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return None


class _Granted(NamedTuple):
    """A request the decision allowed: the API server it goes to, and as whom."""

    upstream: _Upstream
    api_path: str
    body: bytes
    user: str
    groups: tuple[str, ...]
    identity: Identity
    target: KubeClusterTarget


@dataclass
class _Stream:
    """An open streamed reply (a watch), ended by a lock on its user, roles, device or this service."""

    identity: Identity
    target: KubeClusterTarget
    #: the client's connection and the API server's: both shut down to end the stream
    sockets: tuple[socket.socket, ...]
    ended: str = ""

    def is_ended(self) -> bool:
        """Whether it was ended (by another thread: a lock, or the service stopping)."""
        return bool(self.ended)


class KubeService(TLSService[KubeServiceConfig]):
    role = "kube"
    title = "kube service"

    def __init__(self, config: KubeServiceConfig, *, clock: Callable[[], datetime] = utcnow) -> None:
        names = [cluster.name for cluster in config.clusters]
        if len(set(names)) != len(names):
            raise ConfigError("kube_service.kubernetes_clusters: each name may appear once")
        super().__init__(config, clock=clock)
        self._server: _Server | None = None
        self._serving: threading.Thread | None = None
        self._upstreams: dict[str, _Upstream] = {}
        #: each cluster's target as the decision sees it, made once (while the host id is the same)
        self._targets: dict[str, KubeClusterTarget] = {}
        self._lock = threading.Lock()
        self._streams: dict[int, _Stream] = {}

    # ------------------------------------------------------------------------------------------ life cycle
    async def start(self) -> None:
        """Join (or reuse the stored identity), fetch the state, listen. Raises DevicetrustError on failure."""
        self._upstreams = {cluster.name: _upstream(cluster) for cluster in self.config.clusters}
        identity, tls, (host, port) = await self.join("http/1.1")
        # a connection's client certificate is the one of its handshake, read once for all its requests
        tls.options |= ssl.OP_NO_RENEGOTIATION
        try:
            server = _Server((host, port), self, tls)
        except OSError as err:
            raise ConfigError(f"kube_service.listen_addr {self.config.listen_addr}: {err.strerror or err}") from None
        self._server = server
        self.port = int(server.server_address[1])
        self._serving = threading.Thread(target=server.serve_forever, args=(0.5,), name="kube-serve", daemon=True)
        self._run(self._serving)
        log.info(
            "kube service started",
            extra={
                "listen_addr": self.advertised_addr(self.port),
                "host_id": identity.host_id,
                "hostname": self.config.hostname,
                "kubernetes_clusters": sorted(self._upstreams),
            },
        )

    async def stop(self) -> None:
        """Stop serving, end open streams, flush audit events (bounded), close the API client."""
        if self._server is not None:
            await asyncio.to_thread(self._server.shutdown)
            self._server.server_close()
        with self._lock:
            streams = list(self._streams.values())
        for stream in streams:
            self._end(stream, "the kube service is shutting down")
        await self.membership.stop()
        log.info("kube service stopped")

    async def _heartbeat(self, api: NodeAPI) -> None:
        clusters = [
            KubeClusterInfo.model_construct(name=cluster.name, labels=dict(cluster.labels))
            for cluster in self.config.clusters
        ]
        await api.heartbeat(
            hostname=self.config.hostname, addr=self.advertised_addr(self.port), labels={}, kube_clusters=clusters
        )

    # ------------------------------------------------------------------------------------------ locks
    def _state_updated(self, state: ClusterState) -> None:
        """End every open stream a lock now targets (user, role, verified device, this service)."""
        now = self.clock()
        with self._lock:
            streams = list(self._streams.values())
        for stream in streams:
            locks = kube_session_locks(stream.identity, stream.target, state.locks, now)
            if locks:
                self._end(stream, lock_reason(locks[0]))

    def _end(self, stream: _Stream, reason: str) -> None:
        stream.ended = stream.ended or reason
        for sock in stream.sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    # ------------------------------------------------------------------------------------------ decision
    def target(self, name: str) -> KubeClusterTarget | None:
        known = self._targets.get(name)
        if known is not None and known.service_id == self.host_id:
            return known
        entry = self._upstreams.get(name)
        if entry is None:
            return None
        target = self._targets[name] = KubeClusterTarget(
            name=name, labels=entry.entry.labels, service_id=self.host_id, service_hostname=self.config.hostname
        )
        return target

    def identify(self, der: bytes | None, now: datetime) -> Identity | None:
        if not der or self._user_ca is None:
            return None
        try:
            return verify_x509_client_cert(x509.load_der_x509_certificate(der), self._user_ca, now)
        except (TrustError, ValueError) as err:
            log.info("client certificate refused", extra={"reason": str(err)})
            return None

    def decide(self, identity: Identity, target: KubeClusterTarget) -> Decision | None:
        state = self.membership.current_state
        if state is None:
            return None
        return decide(
            identity,
            kube=target,
            roles=state.roles,
            cluster_mode=state.device_trust_mode,
            locks=state.locks,
            now=self.clock(),
            session_proof=state.auth_preference.device_trust.session_proof,
        )

    # ------------------------------------------------------------------------------------------ streams
    def open_stream(self, stream: _Stream) -> None:
        with self._lock:
            self._streams[id(stream)] = stream
        state = self.membership.current_state
        if state is not None:  # a lock that arrived while the request was on its way
            locks = kube_session_locks(stream.identity, stream.target, state.locks, self.clock())
            if locks:
                self._end(stream, lock_reason(locks[0]))

    def close_stream(self, stream: _Stream) -> None:
        with self._lock:
            self._streams.pop(id(stream), None)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = False

    def __init__(self, address: tuple[str, int], service: KubeService, tls: ssl.SSLContext) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.service = service
        self.tls = tls
        super().__init__(address, socketserver.BaseRequestHandler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A bug costs one connection, never the service; it goes to the log, not to stderr."""
        log.exception("kube connection failed", extra={"remote_addr": socket_addr(client_address)})

    def finish_request(self, request: Any, client_address: Any) -> None:
        """TLS in the connection's own thread: a slow handshake never holds up accepting."""
        try:
            request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            request.settimeout(UPSTREAM_TIMEOUT_SECONDS)
            tls = self.tls.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError) as err:
            log.info("TLS handshake failed", extra={"remote_addr": socket_addr(client_address), "error": str(err)})
            return
        tls.settimeout(None)
        try:
            _Handler(tls, client_address, self).handle()
        finally:
            with contextlib.suppress(OSError):
                tls.close()


class _ClientReader:
    """What the client sends, read as it comes (a request's head usually in one receive) and kept until taken: the
    head, then the body, then the next request's head."""

    __slots__ = ("_data", "_sock")

    def __init__(self, sock: ssl.SSLSocket) -> None:
        self._sock = sock
        self._data = b""

    def _receive(self) -> bool:
        """Read what came next; False at the end of the connection."""
        chunk = self._sock.recv(STREAM_CHUNK)
        self._data += chunk
        return bool(chunk)

    def head(self) -> bytes:
        """The next request's head, up to its empty line; cut short where the connection ended or a bound was
        passed (for the parser to refuse); b"" if the connection ended before it began."""
        if not self._data and not self._receive():
            return b""
        while True:
            data = self._data
            end = head_end(data)
            if end >= 0:
                break
            if len(data) - (data.rfind(b"\n") + 1) > MAX_LINE or len(data) > MAX_REQUEST_HEAD or not self._receive():
                end = len(self._data)
                break
        data = self._data
        self._data = data[end:]
        return data[:end] if end < len(data) else data

    def read(self, size: int = -1, /) -> bytes:
        """``size`` bytes (fewer if the connection ends first)."""
        data = self._data
        if len(data) < size:  # a large body: its pieces joined once
            pieces, have = [data], len(data)
            while have < size:
                chunk = self._sock.recv(STREAM_CHUNK)
                if not chunk:
                    break
                pieces.append(chunk)
                have += len(chunk)
            data = b"".join(pieces)
        self._data = data[size:]
        return data[:size]

    def readline(self, size: int = -1, /) -> bytes:
        """Up to and with the next line end, at most ``size`` bytes (fewer if the connection ends first)."""
        while True:
            end = self._data.find(b"\n", 0, size if size >= 0 else None)
            if end >= 0:
                size = end + 1
                break
            if 0 <= size <= len(self._data) or not self._receive():
                break
        return self.read(min(size, len(self._data)) if size >= 0 else len(self._data))

    def take(self) -> bytes:
        """What was read and not yet taken (the start of an upgraded stream)."""
        data, self._data = self._data, b""
        return data


#: The methods served (an API server's); others get 501.
_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})


class _Handler:
    """One client connection: its requests in turn, each decided, forwarded and relayed."""

    def __init__(self, connection: ssl.SSLSocket, client_address: Any, server: _Server) -> None:
        self.connection = connection
        self.client_address = client_address
        self.peer = socket_addr(client_address)
        self.server = server
        self.reader = _ClientReader(connection)
        self.heads = RequestHeads()
        #: the client certificate (renegotiation is refused: it stays the handshake's)
        self.certificate = connection.getpeercert(binary_form=True)
        #: the client certificate verified on this connection (its exact bytes) and its identity
        self._verified: tuple[bytes, Identity] | None = None
        #: a decision that allowed this connection: (the state it was made on, identity, target, decision, until)
        self._allowed: tuple[object, Identity, KubeClusterTarget, Decision, datetime] | None = None
        #: the audit event's part that names who made the last request, where and with what device: made for
        #: (identity, decision, host id)
        self._event_who: tuple[Identity | None, Decision | None, str, bytes] | None = None
        #: the audit event's part that says what the last request asked and as whom, and what it was made for
        self._event_what: tuple[tuple[object, ...], bytes] | None = None
        #: the last request's impersonation: its fields, identity and decision, and whom it acts as (or the refusal)
        self._acting: tuple[Fields, Identity, Decision, tuple[str, tuple[str, ...]] | str] | None = None
        #: the last request line sent on: its method, API server and API path, and the line
        self._sent_line: tuple[str, _Upstream, str, bytes | None] | None = None
        #: the header lines sent on for the last forwarded request: its fields and upstream, (user, groups, body
        #: length), and the lines
        self._sent_lines: tuple[Fields, _Upstream, tuple[str, tuple[str, ...], int | None], bytes | None] | None = None
        self.close_connection = True
        self.command = ""
        self.path = ""
        self.request_version = "HTTP/1.1"
        #: the request's header fields
        self.fields = Fields()

    def handle(self) -> None:
        self._handle_one_request()
        while not self.close_connection:
            self._handle_one_request()

    def _handle_one_request(self) -> None:
        self.close_connection = True
        self.command, self.request_version = "", "HTTP/1.1"
        try:
            head = self.reader.head()
        except OSError:  # the client went away
            return
        if not head:
            return
        try:
            self.command, path, self.request_version, self.fields = self.heads.parse(head)
        except MalformedRequest as malformed:
            self._send_error(malformed.status, malformed.reason)
            return
        if self.command not in _METHODS:
            self._send_error(501, f"Unsupported method ({self.command!r})")
            return
        # a path starting with // reads as a scheme-relative URL to some clients
        self.path = "/" + path.lstrip("/") if path.startswith("//") else path
        connection = (self.fields.get("Connection") or "").lower()
        if connection == "close":
            self.close_connection = True
        elif connection == "keep-alive" or self.request_version >= "HTTP/1.1":
            self.close_connection = False
        if (self.fields.get("Expect") or "").lower() == "100-continue" and self.request_version >= "HTTP/1.1":
            try:
                self.connection.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            except OSError:
                self.close_connection = True
                return
        self._serve()

    def _send_error(self, code: int, message: str) -> None:
        """A request that cannot be read: a Status, and the connection ends."""
        self.close_connection = True
        body = status_body(code, message)
        with contextlib.suppress(_ClientGone):
            self._send(code, "application/json", body, close=True)

    def _send(self, code: int, content_type: str, body: bytes, *, close: bool = False) -> None:
        """A reply of the service's own, in one write (the body left out for HEAD)."""
        head = b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n" % (
            code,
            _REASONS.get(code, "").encode(),
            content_type.encode(),
            len(body),
        )
        if close:
            head += b"Connection: close\r\n"
        self._write(head + b"\r\n" + (body if self.command != "HEAD" else b""))

    # ----------------------------------------------------------------------------------------------
    def _reply(self, code: int, message: str) -> None:
        """A refusal: a ``metav1.Status``, except for discovery (``/api``, ``/apis``, ``/version``, …) where
        client-go reads only a text/plain body (it shows any other as "unknown"), so the message goes as text."""
        if request_info(self.command, route_path(self.path)).resource:
            body, content_type = status_body(code, message), "application/json"
        else:
            body, content_type = message.encode() + b"\n", "text/plain; charset=utf-8"
        self._send(code, content_type, body)

    def _serve(self) -> None:
        service = self.server.service
        now = service.clock()
        identity = self._identity(self.certificate, now)
        routed = route(self.path)
        decision: Decision | None = None
        granted: _Granted | None = None
        code, error, ended = 500, "", ""
        try:
            body = self._read_body()
            if identity is None:
                code = 401
                self._reply(401, NO_CERTIFICATE_REASON)
                return
            if routed is None:
                code = 404
                self._reply(404, "the path names no Kubernetes cluster: use 'tsh kube login NAME'")
                return
            name, api_path = routed
            target = service.target(name)
            if target is None:
                code = 404
                self._reply(404, f'kubernetes cluster "{name}" not found')
                return
            decision = self._decide(identity, target, now)
            if decision is None:
                code = 503
                self._reply(503, NO_STATE_REASON)
                return
            if not decision.allowed:
                code, error = 403, decision.audit_reason
                log.info(
                    "kube request refused",
                    extra={"user": identity.username, "kube_cluster": name, "reason": decision.audit_reason},
                )
                self._reply(403, decision.reason)
                return
            acting = self._impersonation(identity, decision)
            if isinstance(acting, str):
                code, error = 403, acting
                self._reply(403, acting)
                return
            user, groups = acting
            granted = _Granted(service._upstreams[name], api_path, body, user, groups, identity, target)
            if "upgrade" in (self.fields.get("Connection") or "").lower() and self.fields.get("Upgrade"):
                code, ended = self._tunnel(granted)
            else:
                code, ended = self._forward(granted)
        except MalformedRequest as malformed:
            code = malformed.status
            self.close_connection = True  # what is left of the body cannot be told from a next request
            self._reply(code, malformed.reason)
        except _ClientGone:
            code = 499
        finally:
            # made once the reply is out: the client reads it meanwhile
            try:
                event = self._event(identity, routed, decision, granted, code, error, ended)
            except (TypeError, ValueError) as err:  # a bug in the event: it could never be delivered
                log.error(
                    "audit event cannot be encoded; dropping it", extra={"event": KUBE_REQUEST, "error": str(err)}
                )
            else:
                service.emit_encoded(KUBE_REQUEST, event)

    def _event(
        self,
        identity: Identity | None,
        routed: tuple[str, str] | None,
        decision: Decision | None,
        granted: _Granted | None,
        code: int,
        error: str,
        ended: str,
    ) -> bytes:
        """The request's ``kube.request`` audit event, encoded. Its parts that most requests on a connection share
        (who and with what device; what was asked, as whom) are encoded again only when they differ from the
        last request's."""
        outcome = b'"response_code":%d,"success":%s' % (code, b"true" if code == 101 or 200 <= code < 400 else b"false")
        if error or ended:
            said = {"error": error} if error else {}
            outcome += b"," + encoded_members({**said, "reason": ended} if ended else said)
        return joined_members(
            [
                self._event_who_part(identity, decision),
                self._event_what_part(identity is not None, routed, granted),
                outcome,
            ]
        )

    def _event_who_part(self, identity: Identity | None, decision: Decision | None) -> bytes:
        """Who made the request (the device block where the decision names it), from where, to which service."""
        service = self.server.service
        host_id, known = service.host_id, self._event_who
        if known is not None and known[0] is identity and known[1] is decision and known[2] == host_id:
            return known[3]
        who = {
            "event": KUBE_REQUEST,
            **user_fields(identity),
            "addr.remote": self.peer,
            "server_id": host_id,
            "server_hostname": service.config.hostname,
            **device_fields(identity, decision),
        }
        encoded = encoded_members(who)
        self._event_who = (identity, decision, host_id, encoded)
        return encoded

    def _event_what_part(self, identified: bool, routed: tuple[str, str] | None, granted: _Granted | None) -> bytes:
        """What the request asked (the Kubernetes verb and resource where it named a cluster and the client who it
        is, else the HTTP method), and as whom it went on."""
        # routed is made from the path
        key = (identified, self.command, self.path, *((granted.user, granted.groups) if granted else ()))
        known = self._event_what
        if known is not None and known[0] == key:
            return known[1]
        what: dict[str, object] = {"request_path": routed[1] if routed else self.path, "verb": self.command}
        if identified and routed is not None:
            info = request_info(self.command, routed[1])
            what.update(
                kubernetes_cluster=routed[0],
                resource_kind=info.resource,
                resource_subresource=info.subresource,
                resource_name=info.name,
                resource_namespace=info.namespace,
                resource_api_group=info.api_group,
                verb=info.verb,
            )
        if granted is not None:
            what.update(kubernetes_users=[granted.user], kubernetes_groups=list(granted.groups))
        encoded = encoded_members(what)
        self._event_what = (key, encoded)
        return encoded

    def _impersonation(self, identity: Identity, decision: Decision) -> tuple[str, tuple[str, ...]] | str:
        """Whom the request acts as on the API server, or why it may not: worked out again only when its header
        fields, identity or decision are not the last request's."""
        fields, known = self.fields, self._acting
        if known is not None and known[0] is fields and known[1] is identity and known[2] is decision:
            return known[3]
        acting: tuple[str, tuple[str, ...]] | str
        try:
            acting = impersonation(
                identity.username,
                decision.kubernetes_users,
                decision.kubernetes_groups,
                fields.get_all("Impersonate-User"),
                fields.get_all("Impersonate-Group"),
                other_impersonation=any(
                    name.startswith("impersonate-") and name not in _IMPERSONATE for name in fields.names()
                ),
            )
        except ImpersonationRefused as refused:
            acting = str(refused)
        self._acting = (fields, identity, decision, acting)
        return acting

    def _identity(self, der: bytes | None, now: datetime) -> Identity | None:
        """The client certificate's identity: verified once per connection (by its exact bytes), its validity
        window checked on every request."""
        known = self._verified
        if der and known is not None and known[0] == der:
            cached = known[1]
            return cached if cached.not_before <= now < cached.not_after else None
        identity = self.server.service.identify(der, now)
        if der and identity is not None:
            self._verified = (der, identity)
        return identity

    def _decide(self, identity: Identity, target: KubeClusterTarget, now: datetime) -> Decision | None:
        """The service's decision; one that allowed this connection's identity is reused while the cluster
        state is the same object and until :func:`allowed_until` (denials are decided anew every request)."""
        service = self.server.service
        state = service.membership.current_state
        known = self._allowed
        # the service makes each cluster's target once (again only when its host id changes)
        if known is not None and known[0] is state and known[1] is identity and known[2] is target and now < known[4]:
            return known[3]
        decision = service.decide(identity, target)
        if decision is not None and decision.allowed:
            self._allowed = (state, identity, target, decision, allowed_until(identity))
        return decision

    def _read_body(self) -> bytes:
        """The request's body, within MAX_REQUEST_BODY (MalformedRequest otherwise), before anything is decided:
        a kept-alive connection's next request starts after it."""
        if (self.fields.get("Transfer-Encoding") or "").lower() == "chunked":
            return read_chunked_body(self.reader, MAX_REQUEST_BODY)
        length = int(self.fields.get("Content-Length") or 0)
        if length > MAX_REQUEST_BODY:
            raise MalformedRequest(413, "the request body is too large")
        body = self.reader.read(length) if length else b""
        if len(body) != length:
            raise _ClientGone
        return body

    def _forward(self, granted: _Granted) -> tuple[int, str]:
        """Send the request on and relay the reply: its status, and why the service ended it early ("" if it
        did not)."""
        upstream, target = granted.upstream, granted.target
        request_line = self._request_line(granted)
        header_lines = self._forwarded_lines(granted)
        if request_line is None or header_lines is None:
            self._reply(400, "a header value cannot be sent on")
            return 400, ""
        message = request_line + header_lines + granted.body
        for attempt in range(2):
            try:
                sock, reused = upstream.connection()
            except OSError as err:
                self._reply(502, f"cannot reach the Kubernetes API server of {target.name}: {err}")
                return 502, ""
            reply = Reply(head_request=self.command == "HEAD")
            try:
                _send_whole(sock, message)
                _read_reply(sock, reply, whole=False)
                break
            except (OSError, MalformedReply) as err:
                sock.close()
                # a kept-alive connection the API server closed meanwhile: once more on a new one
                if reused and attempt == 0 and isinstance(err, _STALE_CONNECTION) and not reply.status:
                    continue
                self._reply(502, f"cannot reach the Kubernetes API server of {target.name}: {err}")
                return 502, ""
        reusable = False
        try:
            code, ended, reusable = self._relay(reply, sock, granted.identity, target)
        finally:
            # kept only when its reply was read to the end (a client gone mid-reply leaves it half read)
            if reusable:
                upstream.release(sock)
            else:
                sock.close()
        return code, ended

    def _request_line(self, granted: _Granted) -> bytes | None:
        """The request line sent on (see :meth:`_Upstream.request_line`), made again only when it differs from the
        last one."""
        known = self._sent_line
        if (
            known is not None
            and known[0] == self.command
            and known[1] is granted.upstream
            and known[2] == granted.api_path
        ):
            return known[3]
        line = granted.upstream.request_line(self.command, granted.api_path)
        self._sent_line = (self.command, granted.upstream, granted.api_path, line)
        return line

    def _forwarded_lines(self, granted: _Granted) -> bytes | None:
        """The header lines a forwarded request is sent on with (see :meth:`_upstream_headers`): made again only
        when its fields, API server, impersonation or body length are not the last forwarded request's."""
        fields, upstream, known = self.fields, granted.upstream, self._sent_lines
        sent_as = (granted.user, granted.groups, self._body_length(granted))
        if known is not None and known[0] is fields and known[1] is upstream and known[2] == sent_as:
            return known[3]
        lines = upstream.header_lines(self._upstream_headers(granted, keep=frozenset()))
        self._sent_lines = (fields, upstream, sent_as, lines)
        return lines

    def _body_length(self, granted: _Granted) -> int | None:
        """The Content-Length sent on (None: none)."""
        return len(granted.body) if granted.body or self.command in ("POST", "PUT", "PATCH") else None

    def _upstream_headers(self, granted: _Granted, *, keep: frozenset[str]) -> list[tuple[str, str]]:
        """The client's headers, less its credentials, its impersonation and the hop-by-hop ones (but ``keep``),
        plus the service's token and the granted impersonation."""
        headers = [
            (key, value)
            for lowered, key, value in self.fields.lowered_items()
            if (lowered not in _HOP_BY_HOP or lowered in keep) and not lowered.startswith("impersonate-")
        ]
        headers += [("Authorization", f"Bearer {granted.upstream.token}"), ("Impersonate-User", granted.user)]
        headers += [("Impersonate-Group", group) for group in granted.groups]
        length = self._body_length(granted)
        if length is not None:
            headers.append(("Content-Length", str(length)))
        return headers

    def _tunnel(self, granted: _Granted) -> tuple[int, str]:
        """A protocol upgrade (exec, attach, port-forward over WebSocket or SPDY) on a connection of its own: after
        the API server's 101, bytes both ways until either side closes or a lock ends it. Its status, and why the
        service ended it early ("" if it did not)."""
        self.close_connection = True
        upstream, target, identity = granted.upstream, granted.target, granted.identity
        # the client's Connection header is not passed on: a proxy before the API server would drop the headers
        # it names, and the impersonation must never be among them
        headers = [*self._upstream_headers(granted, keep=_UPGRADE_HEADERS), ("Connection", "Upgrade")]
        request_line = upstream.request_line(self.command, granted.api_path)
        header_lines = upstream.header_lines(headers)
        if request_line is None or header_lines is None:
            self._reply(400, "a header value cannot be sent on")
            return 400, ""
        head = request_line + header_lines
        try:
            sock = upstream.dial()
        except (OSError, ssl.SSLError) as err:
            self._reply(502, f"cannot reach the Kubernetes API server of {target.name}: {err}")
            return 502, ""
        with contextlib.closing(sock):
            try:
                sock.sendall(head + granted.body)
                reply_head, rest = _read_head(sock)
                code = int(reply_head.split(b" ", 2)[1])
                if code != 101:  # a refusal (a Status): relayed as it is, and the connection ends with it
                    rest += _read_body_rest(sock, reply_head, len(rest))
            except (OSError, ValueError, IndexError) as err:
                self._reply(502, f"the Kubernetes API server of {target.name} failed the upgrade: {err}")
                return 502, ""
            self._write(reply_head + rest)
            if code != 101:
                return code, ""
            service = self.server.service
            watch = _spdy_exec_watch(reply_head, request_info(self.command, granted.api_path).subresource)
            # a followed SPDY stream is ended by cutting the API server's side only: the client's then gets a Status
            sockets = (sock,) if watch is not None else (self.connection, sock)
            stream = _Stream(identity, target, sockets)
            service.open_stream(stream)
            try:
                _splice(self.connection, self._early(), sock, stream, watch)
            finally:
                service.close_stream(stream)
                if stream.ended:
                    log.info("kube stream ended", extra={"user": identity.username, "reason": stream.ended})
        return 101, stream.ended

    def _relay(
        self, reply: Reply, upstream_sock: ssl.SSLSocket, identity: Identity, target: KubeClusterTarget
    ) -> tuple[int, str, bool]:
        """Relay the reply whose head was read: (the status the client got, why the service ended it early or "",
        whether the API server's connection may be reused)."""
        head = [b"HTTP/1.1 %d %s\r\n" % (reply.status, reply.reason)]
        head += [
            name + b": " + value + b"\r\n"
            for (name, value), lowered in zip(reply.fields, reply.lowered_names, strict=True)
            if lowered not in _HOP_BY_HOP_BYTES
        ]
        if reply.has_length:
            try:
                _read_reply(upstream_sock, reply, whole=True)
            except (OSError, MalformedReply) as err:
                self.close_connection = True
                self._reply(502, f"the Kubernetes API server of {target.name} failed its reply: {err}")
                return 502, "", False
            body = reply.take_body()
            head.append(b"Content-Length: %d\r\n\r\n" % len(body))
            self._write(b"".join(head) + body)
            return reply.status, "", reply.reusable
        # streamed (a watch, logs -f): chunk by chunk as it comes, until either side ends or a lock does
        head.append(b"Transfer-Encoding: chunked\r\n\r\n")
        keep_client, self.close_connection = self.close_connection, True
        finished = False
        service = self.server.service
        stream = _Stream(identity, target, (self.connection, upstream_sock))
        upstream_sock.settimeout(None)  # a watch may be quiet for a long time
        service.open_stream(stream)
        try:
            pending = b"".join(head)
            while not stream.ended:
                chunk = reply.take_body()
                if chunk:
                    pending += b"%x\r\n" % len(chunk) + chunk + b"\r\n"
                if reply.complete:
                    self._write(pending + b"0\r\n\r\n")
                    finished = True
                    break
                if pending:
                    self._write(pending)
                    pending = b""
                try:
                    data = upstream_sock.recv(STREAM_CHUNK)
                    if stream.is_ended():  # shut down by a lock: no last chunk, the client sees the stream cut
                        break
                    if data:
                        reply.feed(data)
                    else:
                        reply.end_of_input()
                except (OSError, MalformedReply):  # cut short, or shut down by a lock
                    break
        finally:
            service.close_stream(stream)
            if stream.ended:
                log.info("kube stream ended", extra={"user": identity.username, "reason": stream.ended})
        if not finished or stream.is_ended():
            return reply.status, stream.ended, False
        # relayed to its end (a chunked list, a watch the API server closed): both connections carry on
        self.close_connection = keep_client
        upstream_sock.settimeout(UPSTREAM_TIMEOUT_SECONDS)
        return reply.status, "", reply.reusable

    def _early(self) -> bytes:
        """What the client sent after the upgrade request that was read or decrypted already: select would not
        tell of it."""
        early = self.reader.take()
        pending = self.connection.pending()
        return early + self.connection.recv(pending) if pending else early

    def _write(self, data: bytes) -> None:
        try:
            _send_whole(self.connection, data)
        except OSError:
            raise _ClientGone from None


KUBE_REQUEST = "kube.request"
_IMPERSONATE = frozenset({"impersonate-user", "impersonate-group"})
#: The hop-by-hop header an upgrade passes on: it names the protocol asked for.
_UPGRADE_HEADERS = frozenset({"upgrade"})
_HOP_BY_HOP_BYTES = frozenset(name.encode() for name in _HOP_BY_HOP)
_REASONS = {status.value: status.phrase for status in HTTPStatus}
_STALE_CONNECTION = (ReplyCutShort, ConnectionResetError, BrokenPipeError)


class _ClientGone(Exception):
    """The client went away mid-request."""


def _send_whole(sock: ssl.SSLSocket, data: bytes) -> None:
    """Send all of ``data`` on a blocking connection: a message of a TLS record or less goes in one send, without
    the loop of sendall."""
    sent = sock.send(data)
    if sent < len(data):
        sock.sendall(memoryview(data)[sent:])


def _read_reply(sock: ssl.SSLSocket, reply: Reply, *, whole: bool) -> None:
    """Feed ``reply`` from ``sock`` until its head is in (some of its body may be too), or with ``whole`` all of
    it (MalformedReply if the connection ends first)."""
    while not (reply.complete if whole else reply.headers_complete):
        data = sock.recv(STREAM_CHUNK)
        if data:
            reply.feed(data)
        else:
            reply.end_of_input()


def _read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    """A reply's status line and headers, and the bytes read after them."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(STREAM_CHUNK)
        if not chunk:
            raise ConnectionError("the connection closed before the reply")
        data += chunk
        if len(data) > MAX_REPLY_HEAD:
            raise ValueError("the reply's headers are too long")
    end = data.index(b"\r\n\r\n") + 4
    return data[:end], data[end:]


def _read_body_rest(sock: socket.socket, head: bytes, have: int) -> bytes:
    """The rest of a reply's body after ``have`` bytes: by its Content-Length, else until the connection ends."""
    length = next(
        (int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")),
        None,
    )
    data = b""
    while length is None or have + len(data) < length:
        chunk = sock.recv(STREAM_CHUNK)
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_REQUEST_BODY:
            raise ValueError("the reply is too long")
    return data


def _splice(
    client: socket.socket, early: bytes, upstream: socket.socket, stream: _Stream, watch: _SpdyExecWatch | None = None
) -> None:
    """Relay bytes both ways, in this one thread (a TLS connection must not be read and written at once from two),
    until either side closes, fails, or the stream is ended (its sockets shut down). With ``watch``, a stream ended
    by the service ends for the client as a failed command does (see :class:`_SpdyExecWatch`)."""
    other = {client: upstream, upstream: client}
    try:
        for sock in other:
            sock.setblocking(False)
        if early:
            if watch is not None:
                watch.from_client(early)
            _send_all(upstream, early)
        while not stream.ended:
            readable, _, _ = select.select(list(other), [], [])
            for sock in readable:
                while True:  # everything TLS already decrypted, else select would not say so again
                    try:
                        data = sock.recv(STREAM_CHUNK)
                    except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                        break
                    if not data:
                        raise EOFError
                    if watch is not None:
                        data = watch.from_client(data) if sock is client else watch.from_upstream(data)
                    if data:
                        _send_all(other[sock], data)
    except (OSError, ValueError, EOFError):  # a side went away (or was shut down by a lock)
        pass
    ending = watch.ending(stream.ended) if watch is not None and stream.ended else b""
    if ending:
        with contextlib.suppress(OSError, ValueError):
            _send_all(client, ending)


def _spdy_exec_watch(reply_head: bytes, subresource: str) -> _SpdyExecWatch | None:
    """A watch for an exec or attach the API server upgraded to plain SPDY (not for port-forward: its streams
    belong to forwarded connections, which a cut connection ends as they would end anyway)."""
    if subresource not in ("exec", "attach"):
        return None
    try:
        fields = read_fields(io.BytesIO(reply_head.partition(b"\r\n")[2]))
    except MalformedRequest:  # relayed as it came; only not followed
        return None
    if (fields.get("Upgrade") or "").lower() != "spdy/3.1":
        return None
    return _SpdyExecWatch(fields.get("X-Stream-Protocol-Version") or "")


class _SpdyExecWatch:
    """Follows a plain SPDY exec or attach, so that a stream the service ends (a lock) ends for kubectl as the API
    server ends a failed command: a Status on the error stream, then GOAWAY. A cut connection alone reads as
    success to kubectl's SPDY client (an error stream that ends empty).

    The client's SYN_STREAMs name the error stream (their header blocks share one zlib stream, so each is inflated
    in order until that one is seen); the API server's frames are passed on whole, so that the service's own can go
    between two. Client bytes that cannot be followed (malformed, or too much before the error stream is named)
    leave the stream to be cut as before."""

    #: client bytes held at most while looking for the error stream's SYN_STREAM
    MAX_FOLLOWED = 256 * 1024

    def __init__(self, protocol: str) -> None:
        self._protocol = protocol
        self._client: spdy.Session | None = spdy.Session()
        self._upstream = spdy.FrameBoundary()
        self.error_stream: int | None = None

    def from_client(self, data: bytes) -> bytes:
        """``data`` unchanged, having followed it."""
        client = self._client
        if client is None:
            return data
        try:
            for frame in client.feed(data):
                if frame.kind == spdy.SYN_STREAM and client.headers(frame).get("streamtype") == "error":
                    self.error_stream = frame.stream_id
                    self._client = None  # nothing more to learn
                    return data
        except spdy.MalformedFrame:
            self._client = None
        if self._client is not None and client.buffered > self.MAX_FOLLOWED:
            self._client = None
        return data

    def from_upstream(self, data: bytes) -> bytes:
        """What of ``data`` (and what was held) completes frames; the rest is held."""
        return self._upstream.complete(data)

    def ending(self, reason: str) -> bytes:
        """The frames that end the stream for the client with ``reason``: b"" if the error stream is unknown."""
        if self.error_stream is None:
            return b""
        message = f"the kube service ended the session: {reason}"
        # v4 writes a Status; v1 to v3 write a failure as its bare message
        payload = status_body(403, message) if self._protocol == "v4.channel.k8s.io" else message.encode()
        return spdy.Session.data(self.error_stream, payload, fin=True) + spdy.Session.goaway(0)


def _send_all(sock: socket.socket, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            sent = sock.send(view)
        except (ssl.SSLWantWriteError, BlockingIOError):
            _, writable, _ = select.select([], [sock], [], UPSTREAM_TIMEOUT_SECONDS)
            if not writable:
                raise TimeoutError("the peer stopped reading") from None
            continue
        except ssl.SSLWantReadError:
            select.select([sock], [], [], UPSTREAM_TIMEOUT_SECONDS)
            continue
        view = view[sent:]


def route_path(path: str) -> str:
    routed = route(path)
    return routed[1] if routed is not None else path


def _upstream(cluster: KubeClusterEntry) -> _Upstream:
    access = api_server_access(cluster)
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=access.ca_pem)
    except ssl.SSLError as err:
        source = "kubeconfig" if cluster.kubeconfig is not None else "ca_file"
        raise ConfigError(
            f"kube_service.kubernetes_clusters[{cluster.name}].{source}: the CA is not a PEM certificate ({err.reason})"
        ) from None
    context.set_alpn_protocols(["http/1.1"])
    split = urlsplit(access.server)
    host = split.hostname or ""
    port = split.port or 443
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return _Upstream(cluster, host, port, split.path.rstrip("/"), context, access.token, authority)
