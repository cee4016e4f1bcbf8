"""What the database service and the kube service share: they join the cluster for a host certificate, serve TLS
with it, and take client certificates from the user CA (each decides how to refuse a client without one).

A service subclasses :class:`TLSService`, calls :meth:`~TLSService.join` from its ``start`` before it listens, and
forwards audit events from its connection threads with :meth:`~TLSService.emit`.
"""

from __future__ import annotations

import asyncio
import ssl
import tempfile
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import ClassVar, Generic, Protocol, TypeVar

from cryptography import x509

from devicetrust.agent.api import NodeAPI
from devicetrust.agent.identity import NodeIdentity
from devicetrust.agent.membership import AgentConfig, ClusterMembership, JoinSettings
from devicetrust.agent.network import advertised_addr, listen_host_port
from devicetrust.agent.state import ClusterState
from devicetrust.crypto.ca import load_certificate_pem
from devicetrust.crypto.keys import private_key_to_pem
from devicetrust.errors import ConfigError
from devicetrust.protocol import AgentRole

__all__ = ["TLSService", "TLSServiceSettings", "server_context"]


class TLSServiceSettings(JoinSettings, Protocol):
    """The settings of DatabaseServiceConfig and KubeServiceConfig that joining and listening use."""

    @property
    def service_dir(self) -> Path: ...

    @property
    def listen_addr(self) -> str: ...


_Settings = TypeVar("_Settings", bound=TLSServiceSettings)


class TLSService(Generic[_Settings]):
    #: its join token type; its devicetrust.yaml section is ``<role>_service``
    role: ClassVar[AgentRole]
    #: what it is called in errors
    title: ClassVar[str]

    def __init__(self, config: _Settings, *, clock: Callable[[], datetime]) -> None:
        self.config = config
        self.clock = clock
        self.section = f"{self.role}_service"
        self.membership = ClusterMembership(
            AgentConfig.of(self.role, self.section, config.service_dir, config),
            clock=clock,
            on_state=self._state_updated,
        )
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._user_ca: x509.Certificate | None = None

    @property
    def host_id(self) -> str:
        identity = self.membership.identity
        return identity.host_id if identity is not None else ""

    def advertised_addr(self, port: int | None = None) -> str:
        return advertised_addr(self.config.listen_addr, self.config.hostname, port)

    async def join(self, alpn: str) -> tuple[NodeIdentity, ssl.SSLContext, tuple[str, int]]:
        """Join (or reuse the stored identity) and fetch the state: the identity, the TLS to serve clients with
        (protocol ``alpn``) and the host and port to listen on. Raises DevicetrustError on failure."""
        identity = await self.membership.start(self.advertised_addr())
        if not identity.tls_cert or not identity.user_ca_pem:
            raise ConfigError(
                f"{self.config.service_dir} holds no {self.title} identity; delete it and join again "
                f"with a {self.role} token (tctl tokens add --type={self.role})"
            )
        host_key = self.membership.host_key
        assert host_key is not None
        tls = server_context(identity.tls_cert, private_key_to_pem(host_key), identity.user_ca_pem, alpn)
        self._user_ca = load_certificate_pem(identity.user_ca_pem.encode())
        return identity, tls, listen_host_port(self.config.listen_addr, f"{self.section}.listen_addr")

    def _run(self, server: threading.Thread) -> None:
        """Start ``server`` (the thread serving clients) and the membership's loops."""
        self._loop = asyncio.get_running_loop()
        server.start()
        self.membership.run_loops(self._heartbeat, self.role)

    async def _heartbeat(self, api: NodeAPI) -> None:
        """Announce the service (its address, what it serves) to the auth service."""
        raise NotImplementedError

    def emit(self, event: dict[str, object]) -> None:
        """Queue an audit event from any thread."""
        audit = self.membership.audit
        if audit is not None:
            audit.emit_threadsafe(event)

    def emit_encoded(self, name: str, encoded: bytes) -> None:
        """Queue an audit event named ``name``, encoded as sent, from any thread."""
        audit = self.membership.audit
        if audit is not None:
            audit.emit_encoded_threadsafe(name, encoded)

    def _state_updated(self, state: ClusterState) -> None:
        """End what a lock in the new ``state`` now targets."""
        raise NotImplementedError


def server_context(cert_pem: str, key_pem: bytes, user_ca_pem: str, alpn: str) -> ssl.SSLContext:
    """TLS for clients: the service's host certificate; client certificates from the user CA, asked for but
    checked after the handshake, so a client without one gets the protocol's own refusal rather than a TLS
    alert."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    with tempfile.TemporaryDirectory() as tmp:
        cert_path, key_path = Path(tmp) / "tls.crt", Path(tmp) / "tls.key"
        cert_path.write_text(cert_pem)
        key_path.touch(0o600)
        key_path.write_bytes(key_pem)
        context.load_cert_chain(cert_path, key_path)
    context.load_verify_locations(cadata=user_ca_pem)
    context.verify_mode = ssl.CERT_OPTIONAL
    context.set_alpn_protocols([alpn])
    return context
