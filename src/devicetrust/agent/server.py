"""ssh_service: an SSH node (asyncssh) that enforces device trust, RBAC and locks when a session starts.

Life of a node: join the cluster with a node token (or reuse the identity under ``<data_dir>/node/``), fetch the
cluster state, listen for SSH, then keep three loops running: the state poll (every 2 s, see
:mod:`devicetrust.agent.state`), the heartbeat and the audit forwarder.

Life of a connection:
1. User auth accepts only certificates: the raw certificate is verified with
   :func:`~devicetrust.crypto.certs.verify_ssh_user_cert` against the cluster's user CA (chain, validity window, no
   unknown critical options) and the requested login must be one of its principals (:mod:`.certs`).
2. Each session channel is decided by :func:`devicetrust.access.decide` against the cached state; a denial
   rejects the channel with ``OPEN_ADMINISTRATIVELY_PROHIBITED`` and the decision's reason (exactly
   "unauthorized device" for a missing trusted device). Port forwarding and agent forwarding follow the
   options of the roles that grant the node.
3. Sessions run as the login's OS account (:mod:`.session`); audit events go to the auth service.
4. Every state refresh ends the live sessions that a lock now targets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import NoReturn

import asyncssh

from devicetrust.access import Decision, NodeTarget, decide, lock_reason, session_locks
from devicetrust.agent.api import NodeAPI
from devicetrust.agent.audit import AuditForwarder, device_fields, user_fields
from devicetrust.agent.certs import ClientKeyCapture, cert_line, gate_agent_forwarding
from devicetrust.agent.identity import NodeIdentity
from devicetrust.agent.membership import AgentConfig, ClusterMembership
from devicetrust.agent.network import advertised_addr, listen_host_port, socket_addr
from devicetrust.agent.session import LoginAccount, NodeSession, lookup_account
from devicetrust.agent.state import ClusterState, StateCache
from devicetrust.crypto.certs import verify_ssh_user_cert
from devicetrust.crypto.identity import Identity
from devicetrust.crypto.keys import private_key_to_pem
from devicetrust.errors import ConfigError, TrustError
from devicetrust.types.clock import utcnow

__all__ = ["NodeConfig", "SSHNode"]

log = logging.getLogger(__name__)

#: Seconds a client has to authenticate after connecting.
LOGIN_TIMEOUT_SECONDS = 30.0
#: Idle connections are probed this often and dropped after this many unanswered probes.
KEEPALIVE_INTERVAL_SECONDS = 30.0
KEEPALIVE_COUNT_MAX = 3
#: Certificates a client may offer on one connection before the node stops remembering them.
MAX_OFFERED_CERTS = 16
#: Seconds between ending a locked connection's sessions and dropping the connection itself.
LOCK_DISCONNECT_DELAY_SECONDS = 1.0
#: On stop: how long sessions get to end.
STOP_SESSIONS_SECONDS = 5.0
#: Remote forwards below this port need the root login, as with OpenSSH.
FIRST_UNPRIVILEGED_PORT = 1024
SESSION_NAMESPACE = "default"
NO_STATE_REASON = "this node has not received the cluster's access policy yet; try again shortly"
SERVER_VERSION = "devicetrust"


@dataclass(frozen=True)
class NodeConfig:
    """What an SSH node needs to run. ``listen_addr`` may use port 0 (tests): the bound port is advertised."""

    node_dir: Path
    hostname: str
    listen_addr: str
    auth_server: str
    labels: Mapping[str, str] = field(default_factory=dict)
    #: The cluster's host CA (PEM) to verify the auth service with before the node has joined.
    auth_ca_pem: str | None = None
    #: A node join token, or a function minting one (auth in the same process); used only to (re)join.
    join_token: str | Callable[[], str] | None = None


@dataclass
class _LiveSession:
    session: NodeSession
    connection: NodeConnection
    session_id: str
    decision: Decision
    started: datetime


class SSHNode:
    def __init__(self, config: NodeConfig, *, clock: Callable[[], datetime] = utcnow) -> None:
        self.config = config
        self.clock = clock
        self.membership = ClusterMembership(
            AgentConfig.of("node", "ssh_service", config.node_dir, config, labels=config.labels),
            clock=clock,
            on_state=self._state_updated,
        )
        self.port = 0
        self._acceptor: asyncssh.SSHAcceptor | None = None
        self._connections: set[NodeConnection] = set()
        self._live: dict[NodeSession, _LiveSession] = {}
        self._sessions_done = asyncio.Event()
        self._sessions_done.set()

    # ------------------------------------------------------------------------------------------ properties
    @property
    def identity(self) -> NodeIdentity | None:
        return self.membership.identity

    @property
    def api(self) -> NodeAPI | None:
        return self.membership.api

    @property
    def state(self) -> StateCache | None:
        return self.membership.state

    @property
    def audit(self) -> AuditForwarder | None:
        return self.membership.audit

    @property
    def target(self) -> NodeTarget:
        assert self.identity is not None
        return NodeTarget(self.identity.host_id, self.config.hostname, self.config.labels)

    @property
    def hostname(self) -> str:
        return self.config.hostname

    def advertised_addr(self, port: int | None = None) -> str:
        """Where clients reach this node: the listen address, or the host name when it listens on all."""
        return advertised_addr(self.config.listen_addr, self.config.hostname, port)

    # ------------------------------------------------------------------------------------------ life cycle
    async def start(self) -> None:
        """Join (or reuse the stored identity), fetch the state, listen. Raises DevicetrustError on failure."""
        identity = await self.membership.start(self.advertised_addr())
        host_key = self.membership.host_key
        assert host_key is not None
        host, port = listen_host_port(self.config.listen_addr, "ssh_service.listen_addr")
        key = asyncssh.import_private_key(private_key_to_pem(host_key))
        cert = asyncssh.import_certificate(identity.host_cert)
        try:
            self._acceptor = await asyncssh.listen(
                host,
                port,
                server_factory=lambda: NodeConnection(self),
                server_host_keys=[(key, cert)],
                config=None,
                encoding=None,
                line_editor=False,
                allow_pty=True,
                agent_forwarding=True,
                x11_forwarding=False,
                login_timeout=LOGIN_TIMEOUT_SECONDS,
                keepalive_interval=KEEPALIVE_INTERVAL_SECONDS,
                keepalive_count_max=KEEPALIVE_COUNT_MAX,
                server_version=SERVER_VERSION,
            )
        except OSError as err:
            raise ConfigError(f"ssh_service.listen_addr {self.config.listen_addr}: {err.strerror or err}") from None
        self.port = self._acceptor.get_port()
        self.membership.run_loops(self._heartbeat, "node")
        log.info(
            "ssh service started",
            extra={
                "listen_addr": self.advertised_addr(self.port),
                "host_id": identity.host_id,
                "hostname": self.hostname,
                "labels": dict(self.config.labels),
            },
        )

    async def _heartbeat(self, api: NodeAPI) -> None:
        await api.heartbeat(hostname=self.hostname, addr=self.advertised_addr(self.port), labels=self.config.labels)

    async def stop(self) -> None:
        """Stop listening, end live sessions, flush audit events (bounded), close the API client."""
        acceptor, self._acceptor = self._acceptor, None
        if acceptor is not None:
            acceptor.close()
        for connection in list(self._connections):
            connection.close("the node is shutting down")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._sessions_done.wait(), STOP_SESSIONS_SECONDS)
        if acceptor is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(acceptor.wait_closed(), STOP_SESSIONS_SECONDS)
        await self.membership.stop()
        log.info("ssh service stopped")

    # ------------------------------------------------------------------------------------------ auth
    def verify_client_cert(self, blob: bytes | None, login: str) -> Identity | None:
        """The identity of a user certificate offered for ``login``, or None (logged) if it is not acceptable."""
        if blob is None or self.identity is None:
            return None
        trusted = {self.identity.user_ca_ssh}
        state = self.state.current if self.state is not None else None
        if state is not None:
            trusted.add(state.user_ca_ssh)
        try:
            identity = verify_ssh_user_cert(cert_line(blob), sorted(trusted), self.clock())
        except TrustError as err:
            log.info("client certificate refused", extra={"login": login, "reason": str(err)})
            return None
        if login not in identity.logins:
            log.info(
                "client certificate refused",
                extra={"login": login, "user": identity.username, "reason": "login is not a principal"},
            )
            return None
        return identity

    # ------------------------------------------------------------------------------------------ sessions
    def decide(self, connection: NodeConnection) -> Decision | None:
        """The access decision for a new channel on ``connection``; None while the node has no state."""
        state = self.state.current if self.state is not None else None
        if state is None or connection.identity is None:
            return None
        return decide(
            connection.identity,
            login=connection.login,
            node=self.target,
            roles=state.roles,
            cluster_mode=state.device_trust_mode,
            locks=state.locks,
            now=self.clock(),
            session_proof=state.auth_preference.device_trust.session_proof,
            authenticated_at=connection.authenticated_at,
        )

    def open_session(self, connection: NodeConnection) -> NodeSession:
        """Accept a session channel, or raise ChannelOpenError(ADMINISTRATIVELY_PROHIBITED, reason)."""
        identity = connection.identity
        session_id = str(uuid.uuid4())
        if identity is None:
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, "not authenticated")
        decision = self.decide(connection)
        if decision is None:
            self._reject(connection, session_id, NO_STATE_REASON, None)
        if not decision.allowed:
            self._reject(connection, session_id, decision.reason, decision)
        if identity.not_after <= self.clock():
            self._reject(connection, session_id, "your certificate has expired; run 'tsh login'", decision)
        account = self._account(connection, session_id, decision)
        session = NodeSession(
            account=account,
            env={"DEVICETRUST_SESSION_ID": session_id, "DEVICETRUST_USER": identity.username},
            on_end=self._session_ended,
            agent_forwarding=decision.forward_agent,
        )
        self._live[session] = _LiveSession(session, connection, session_id, decision, self.clock())
        connection.sessions.add(session)
        self._sessions_done.clear()
        self._emit("session.start", connection, session_id, decision, success=True)
        log.info(
            "session started",
            extra={"user": identity.username, "login": connection.login, "session_id": session_id},
        )
        return session

    def _account(self, connection: NodeConnection, session_id: str, decision: Decision) -> LoginAccount:
        login = connection.login
        account = lookup_account(login)
        if account is None:
            self._reject(connection, session_id, f'login "{login}" does not exist on {self.hostname}', decision)
        if os.geteuid() != 0 and account.uid != os.geteuid():
            self._reject(
                connection,
                session_id,
                f'this node does not run as root and cannot start sessions as "{login}"',
                decision,
            )
        return account

    def _reject(self, connection: NodeConnection, session_id: str, reason: str, decision: Decision | None) -> NoReturn:
        """Refuse the session channel with ``reason``; the audit gets the decision's more precise reason."""
        audit_reason = decision.audit_reason if decision is not None and decision.audit_reason else reason
        self._emit("session.rejected", connection, session_id, decision, success=False, reason=audit_reason)
        log.info(
            "session rejected",
            extra={
                "user": connection.identity.username if connection.identity else "",
                "login": connection.login,
                "reason": audit_reason,
            },
        )
        raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, reason)

    def _session_ended(self, session: NodeSession, exit_status: int | None) -> None:
        live = self._live.pop(session, None)
        if live is None:
            return
        live.connection.sessions.discard(session)
        extra: dict[str, object] = {"exit_status": exit_status}
        if session.terminated:
            extra["reason"] = session.terminated
        self._emit("session.end", live.connection, live.session_id, live.decision, success=True, **extra)
        if not self._live:
            self._sessions_done.set()

    def _emit(
        self,
        name: str,
        connection: NodeConnection,
        session_id: str,
        decision: Decision | None,
        *,
        success: bool,
        **extra: object,
    ) -> None:
        identity = connection.identity
        # Teleport's session event shape (sid, addr.*, ei, namespace, proto, user_kind, server_*), plus our own
        # session_id / remote_addr names kept for existing consumers.
        event: dict[str, object] = {
            "event": name,
            "ei": 0 if name != "session.end" else 1,
            **user_fields(identity),
            "login": connection.login,
            "namespace": SESSION_NAMESPACE,
            "proto": "ssh",
            "server_hostname": self.hostname,
            "server_addr": self.advertised_addr(self.port),
            "server_labels": dict(self.config.labels),
            "success": success,
            "sid": session_id,
            "session_id": session_id,
            **{key: value for key, value in extra.items() if value is not None},
        }
        if self.identity is not None:
            event["server_id"] = self.identity.host_id
        if connection.peer:
            event["addr.remote"] = connection.peer
            event["remote_addr"] = connection.peer
        if connection.local:
            event["addr.local"] = connection.local
        event.update(device_fields(identity, decision))
        if self.audit is not None:
            self.audit.emit(event)

    # ------------------------------------------------------------------------------------------ forwarding
    def check_forwarding(self, connection: NodeConnection, what: str) -> None:
        decision = self.decide(connection)
        if decision is None:
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, NO_STATE_REASON)
        if not decision.allowed:
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, decision.reason)
        if not decision.port_forwarding:
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, f"{what} is not permitted by your roles"
            )

    def agent_forwarding_allowed(self, connection: NodeConnection) -> bool:
        decision = self.decide(connection)
        return decision is not None and decision.forward_agent

    # ------------------------------------------------------------------------------------------ locks
    def _state_updated(self, state: ClusterState) -> None:
        """End what a lock now targets: every session of a locked user/role/device/node, sessions of a login."""
        now = self.clock()
        for connection in list(self._connections):
            identity = connection.identity
            if identity is None:
                continue
            locks = session_locks(identity, connection.login, self.target, state.locks, now)
            if locks:
                connection.close(lock_reason(locks[0]), delay=LOCK_DISCONNECT_DELAY_SECONDS)

    def register(self, connection: NodeConnection) -> None:
        self._connections.add(connection)

    def unregister(self, connection: NodeConnection) -> None:
        self._connections.discard(connection)


class NodeConnection(asyncssh.SSHServer):
    """One client connection: certificate-only user auth, then session and forwarding requests."""

    def __init__(self, node: SSHNode) -> None:
        self._node = node
        self._conn: asyncssh.SSHServerConnection | None = None
        self._capture: ClientKeyCapture | None = None
        self._offered: dict[bytes, Identity] = {}
        self.identity: Identity | None = None
        self.login = ""
        self.peer = ""
        self.local = ""
        #: when user authentication completed: a session proof must have been fresh then
        self.authenticated_at: datetime | None = None
        self.sessions: set[NodeSession] = set()
        self._closing = False

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        self._node.register(self)
        self._capture = ClientKeyCapture(conn)
        gate_agent_forwarding(conn, lambda: self._node.agent_forwarding_allowed(self))
        self.peer = socket_addr(conn.get_extra_info("peername"))
        self.local = socket_addr(conn.get_extra_info("sockname"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._node.unregister(self)

    def begin_auth(self, username: str) -> bool:
        self.login = username
        return True

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def host_based_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return False  # plain keys never: only certificates from the cluster's user CA

    def validate_ca_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        blob = self._capture.pending if self._capture is not None else None
        identity = self._node.verify_client_cert(blob, username)
        if identity is None or blob is None:
            return False
        if len(self._offered) >= MAX_OFFERED_CERTS:
            self._offered.clear()
        self._offered[blob] = identity
        return True

    def auth_completed(self) -> None:
        blob = self._capture.authenticated if self._capture is not None else None
        self.identity = self._offered.get(blob) if blob is not None else None
        self.authenticated_at = self._node.clock()
        self._offered.clear()
        if self.identity is None:  # cannot happen: only certificates validate
            self.close("authentication state lost")
            return
        log.info(
            "user authenticated",
            extra={"user": self.identity.username, "login": self.login, "remote_addr": self.peer},
        )

    def session_requested(self) -> NodeSession:
        return self._node.open_session(self)

    def connection_requested(self, dest_host: str, dest_port: int, orig_host: str, orig_port: int) -> bool:
        self._node.check_forwarding(self, "port forwarding")
        return True

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        try:
            self._node.check_forwarding(self, "remote port forwarding")
        except asyncssh.ChannelOpenError:
            return False
        return not (0 < listen_port < FIRST_UNPRIVILEGED_PORT and self.login != "root")

    def unix_connection_requested(self, dest_path: str) -> bool:
        raise asyncssh.ChannelOpenError(
            asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, "UNIX socket forwarding is not supported"
        )

    def unix_server_requested(self, listen_path: str) -> bool:
        return False

    def close(self, reason: str, *, delay: float = 0.0) -> None:
        """End every session with ``reason``, then drop the connection (after ``delay`` seconds)."""
        if self._closing:
            return
        self._closing = True
        for session in list(self.sessions):
            session.terminate(reason)
        conn = self._conn
        if conn is None:
            return

        def disconnect() -> None:
            with contextlib.suppress(Exception):
                conn.disconnect(asyncssh.DISC_BY_APPLICATION, reason)

        if delay:
            asyncio.get_running_loop().call_later(delay, disconnect)
        else:
            disconnect()
