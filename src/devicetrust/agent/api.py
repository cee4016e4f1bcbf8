"""The node's side of the auth service's node API (``/v1/nodes/…``), over HTTPS with the cluster's host CA pinned.

Asynchronous (the node lives on an event loop) and with short timeouts: a node must notice an unreachable auth
service quickly and carry on with its cached state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from devicetrust.client import body, error_from_response, pinned_ssl_context, reply_as, transport_errors, with_port
from devicetrust.errors import ConnectionFailedError
from devicetrust.protocol import (
    AgentEventBatchResult,
    AgentRole,
    DatabaseInfo,
    HeartbeatRequest,
    KubeClusterInfo,
    NodeJoinRequest,
    NodeJoinResponse,
    NodeState,
)

__all__ = ["NODE_CONNECT_TIMEOUT_SECONDS", "NODE_REQUEST_TIMEOUT_SECONDS", "NodeAPI"]

#: Seconds a node waits for one answer from the auth service (state polls run every 2 s).
NODE_REQUEST_TIMEOUT_SECONDS = 5.0
NODE_CONNECT_TIMEOUT_SECONDS = 3.0


class NodeAPI:
    def __init__(self, addr: str, ca_pem: str, token: str | None = None) -> None:
        self.addr = addr
        self._http = httpx.AsyncClient(
            base_url=f"https://{addr}",
            verify=pinned_ssl_context(ca_pem),
            headers={"Authorization": f"Bearer {token}"} if token else {},
            timeout=httpx.Timeout(NODE_REQUEST_TIMEOUT_SECONDS, connect=NODE_CONNECT_TIMEOUT_SECONDS),
            follow_redirects=False,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def request(
        self, method: str, path: str, body: Mapping[str, Any] | None = None, *, encoded: bytes | None = None
    ) -> Any:
        """``body`` as JSON, or ``encoded``, a body already encoded as JSON."""
        headers = {"Content-Type": "application/json"} if encoded is not None else None
        with transport_errors(self.addr, untrusted="a certificate not issued by the cluster's host CA"):
            response = await self._http.request(method, path, json=body, content=encoded, headers=headers)
        if response.status_code >= 500:
            raise ConnectionFailedError(
                f"the auth service at {with_port(self.addr)} answered HTTP {response.status_code}"
            )
        if response.status_code >= 400:
            raise error_from_response(response)
        return response.json()

    async def join(
        self,
        *,
        token: str,
        hostname: str,
        addr: str,
        labels: Mapping[str, str],
        public_key: str,
        role: AgentRole = "node",
    ) -> NodeJoinResponse:
        request = NodeJoinRequest.model_construct(
            token=token, hostname=hostname, addr=addr, labels=dict(labels), public_key=public_key, role=role
        )
        return reply_as(NodeJoinResponse, await self.request("POST", "/v1/nodes/join", body(request)), "nodes/join")

    async def heartbeat(
        self,
        *,
        hostname: str,
        addr: str,
        labels: Mapping[str, str],
        databases: Sequence[DatabaseInfo] = (),
        kube_clusters: Sequence[KubeClusterInfo] = (),
    ) -> None:
        request = HeartbeatRequest.model_construct(
            addr=addr, labels=dict(labels), databases=list(databases), kube_clusters=list(kube_clusters)
        )
        await self.request("POST", "/v1/nodes/heartbeat", body(request))

    async def state(self) -> NodeState:
        return reply_as(NodeState, await self.request("GET", "/v1/nodes/state"), "nodes/state")

    async def event(self, encoded: bytes) -> None:
        """One audit event, encoded as JSON, as the body agents sent before batches (every auth service takes
        it); ValidationError if the service refuses it."""
        await self.request("POST", "/v1/nodes/events", encoded=encoded)

    async def events(self, encoded: Sequence[bytes]) -> AgentEventBatchResult:
        """Audit events, each encoded as JSON, in one request (up to ``MAX_AGENT_EVENT_BATCH_BYTES`` in all): the
        reply names those the service refused."""
        reply = await self.request("POST", "/v1/nodes/events", encoded=b'{"events":[' + b",".join(encoded) + b"]}")
        return reply_as(AgentEventBatchResult, reply, "nodes/events")
