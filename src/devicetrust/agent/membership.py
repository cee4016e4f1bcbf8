"""What every agent (the SSH node, the database service) does as a member of the cluster, in one place: join with
a token or reuse the identity stored under its directory, keep an API session, the cluster state cache
(:mod:`.state`), the audit forwarder (:mod:`.audit`) and the heartbeat.

An agent builds a :class:`ClusterMembership`, calls :meth:`~ClusterMembership.start` before it listens and
:meth:`~ClusterMembership.run_loops` once it does, and :meth:`~ClusterMembership.stop` after its sessions ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric import ec

from devicetrust.agent.api import NodeAPI
from devicetrust.agent.audit import AuditForwarder
from devicetrust.agent.identity import NodeIdentity, load_host_key, load_identity, save_identity
from devicetrust.agent.state import ClusterState, StateCache
from devicetrust.crypto.keys import public_key_to_openssh
from devicetrust.errors import AuthenticationError, ConfigError, ConnectionFailedError, TrustError
from devicetrust.protocol import AgentRole

__all__ = [
    "FIRST_STATE_TIMEOUT_SECONDS",
    "HEARTBEAT_INTERVAL_SECONDS",
    "STOP_AUDIT_FLUSH_SECONDS",
    "AgentConfig",
    "ClusterMembership",
    "JoinSettings",
]

log = logging.getLogger(__name__)

#: Seconds between heartbeats (labels, address, databases) to the auth service.
HEARTBEAT_INTERVAL_SECONDS = 30.0
#: How long the first state fetch may take before the agent starts listening anyway (refusing sessions meanwhile).
FIRST_STATE_TIMEOUT_SECONDS = 10.0
#: On stop: how long queued audit events get to go out.
STOP_AUDIT_FLUSH_SECONDS = 3.0


class JoinSettings(Protocol):
    """What an agent's own settings (NodeConfig, DatabaseServiceConfig, KubeServiceConfig) say about joining."""

    @property
    def hostname(self) -> str: ...

    @property
    def auth_server(self) -> str: ...

    @property
    def auth_ca_pem(self) -> str | None: ...

    @property
    def join_token(self) -> str | Callable[[], str] | None: ...


@dataclass(frozen=True)
class AgentConfig:
    """How an agent joins: ``role`` is its join token type ("node" or "db"), ``section`` the devicetrust.yaml
    section its settings come from (named in errors)."""

    role: AgentRole
    section: str
    state_dir: Path
    hostname: str
    auth_server: str
    labels: Mapping[str, str] = field(default_factory=dict)
    #: The cluster's host CA (PEM) to verify the auth service with before the agent has joined.
    auth_ca_pem: str | None = None
    #: A join token, or a function minting one (auth in the same process); used only to (re)join.
    join_token: str | Callable[[], str] | None = None

    @classmethod
    def of(
        cls,
        role: AgentRole,
        section: str,
        state_dir: Path,
        settings: JoinSettings,
        labels: Mapping[str, str] | None = None,
    ) -> AgentConfig:
        return cls(
            role=role,
            section=section,
            state_dir=state_dir,
            hostname=settings.hostname,
            auth_server=settings.auth_server,
            labels=labels if labels is not None else {},
            auth_ca_pem=settings.auth_ca_pem,
            join_token=settings.join_token,
        )


class ClusterMembership:
    def __init__(
        self,
        config: AgentConfig,
        *,
        clock: Callable[[], datetime],
        on_state: Callable[[ClusterState], None],
    ) -> None:
        self.config = config
        self.clock = clock
        self._on_state = on_state
        self.host_key: ec.EllipticCurvePrivateKey | None = None
        self.identity: NodeIdentity | None = None
        self.api: NodeAPI | None = None
        self.state: StateCache | None = None
        self.audit: AuditForwarder | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def current_state(self) -> ClusterState | None:
        return self.state.current if self.state is not None else None

    async def start(self, advertised_addr: str) -> NodeIdentity:
        """Join (or reuse the stored identity) and fetch the state once. Raises DevicetrustError on failure."""
        self.host_key = load_host_key(self.config.state_dir)
        self.identity = identity = await self._ensure_identity(self.host_key, advertised_addr)
        api = NodeAPI(self.config.auth_server, identity.host_ca_pem, identity.session_token)
        self.api = api
        self.state = StateCache(api, self._state_updated, self.clock)
        self.audit = AuditForwarder(api)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.state.refresh(), FIRST_STATE_TIMEOUT_SECONDS)
        return identity

    def run_loops(self, heartbeat: Callable[[NodeAPI], Awaitable[None]], name: str) -> None:
        """Start the state poll, the audit forwarder and the heartbeat (``heartbeat(api)`` sends one)."""
        assert self.state is not None and self.audit is not None, "start() first"
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self.state.run(), name=f"{name}-state"),
            loop.create_task(self.audit.run(), name=f"{name}-audit"),
            loop.create_task(self._heartbeat_loop(heartbeat), name=f"{name}-heartbeat"),
        ]

    async def stop(self) -> None:
        """Flush audit events (bounded), stop the loops, close the API client."""
        if self.audit is not None and not await self.audit.flush(STOP_AUDIT_FLUSH_SECONDS):
            self.audit.abandon()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self.api is not None:
            await self.api.aclose()
            self.api = None

    def _state_updated(self, state: ClusterState) -> None:
        if self.audit is not None:
            self.audit.retry_now()
        self._on_state(state)

    async def _ensure_identity(self, host_key: ec.EllipticCurvePrivateKey, advertised_addr: str) -> NodeIdentity:
        section = self.config.section
        stored = load_identity(self.config.state_dir)
        if stored is not None:
            probe = NodeAPI(self.config.auth_server, stored.host_ca_pem, stored.session_token)
            try:
                await probe.state()
            except AuthenticationError:
                if self.config.join_token is None:
                    raise ConfigError(
                        f"the auth service no longer accepts this agent's identity ({self.config.state_dir}); "
                        f"give it a new join token ({section}.join_token or token_file)"
                    ) from None
                log.warning("stored identity refused by the auth service; joining again", extra={"role": section})
            except (ConnectionFailedError, TrustError) as err:
                # Keep the stored identity: sessions are refused until the state arrives.
                log.warning(
                    "auth service unreachable at start; using the stored identity",
                    extra={"error": str(err), "role": section},
                )
                return stored
            else:
                return stored
            finally:
                await probe.aclose()
        return await self._join(host_key, stored, advertised_addr)

    async def _join(
        self, host_key: ec.EllipticCurvePrivateKey, stored: NodeIdentity | None, advertised_addr: str
    ) -> NodeIdentity:
        config = self.config
        token_source = config.join_token
        if token_source is None:
            raise ConfigError(f"{config.section}: not joined to the cluster yet; set join_token or token_file")
        ca_pem = config.auth_ca_pem or (stored.host_ca_pem if stored is not None else None)
        if not ca_pem:
            raise ConfigError(
                f"{config.section}: no cluster CA to verify the auth service with; set {config.section}.ca_file "
                "to the cluster's host CA certificate"
            )
        token = token_source() if callable(token_source) else token_source
        api = NodeAPI(config.auth_server, ca_pem)
        try:
            reply = await api.join(
                token=token,
                hostname=config.hostname,
                addr=advertised_addr,
                labels=config.labels,
                public_key=public_key_to_openssh(host_key.public_key()),
                role=config.role,
            )
        finally:
            await api.aclose()
        identity = NodeIdentity.from_join(reply, hostname=config.hostname, auth_server=config.auth_server)
        save_identity(config.state_dir, identity)
        log.info(
            "joined the cluster",
            extra={"host_id": identity.host_id, "cluster_name": identity.cluster_name, "role": config.section},
        )
        return identity

    async def _heartbeat_loop(self, heartbeat: Callable[[NodeAPI], Awaitable[None]]) -> None:
        failing = False
        while True:
            assert self.api is not None
            try:
                await heartbeat(self.api)
            except Exception as err:  # a heartbeat failure must never stop the agent
                if not failing:
                    log.warning("heartbeat failed", extra={"error": str(err), "role": self.config.section})
                failing = True
            else:
                failing = False
            await asyncio.sleep(HEARTBEAT_INTERVAL_SECONDS)
