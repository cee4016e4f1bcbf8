"""Agents on the auth service: SSH nodes (node token) and database services (db token) join, heartbeat their
labels (and databases), fetch the cluster state they enforce (roles, auth preference, locks) and report session
audit events. Both kinds go through the same code; only what they are stored as and which events they may report
differ."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypedDict, TypeVar, cast

from devicetrust.access import label_matches, names_node, resolve_node
from devicetrust.auth.secrets import hash_token, new_token
from devicetrust.config import is_ip_address
from devicetrust.crypto.certs import certificate_to_pem, issue_ssh_host_cert, issue_tls_server_cert
from devicetrust.crypto.keys import load_public_key, require_p256_public_key
from devicetrust.errors import AccessDeniedError, AuthenticationError, NotFoundError, ValidationError
from devicetrust.protocol import NodeState
from devicetrust.types import os_display_name

if TYPE_CHECKING:
    from devicetrust.auth.context import AuthContext, Caller
    from devicetrust.storage.repositories import Store

RES_NODE = "node"
#: A database service and the databases it announced in its last heartbeat.
RES_DB_SERVICE = "db_service"
#: A kube service and the Kubernetes clusters it announced in its last heartbeat.
RES_KUBE_SERVICE = "kube_service"
#: The agent kinds: their join token type, session kind and stored resource kind.
AGENT_RESOURCES = {"node": RES_NODE, "db": RES_DB_SERVICE, "kube": RES_KUBE_SERVICE}
#: Agents that serve TLS to users (a TLS server certificate from the host CA comes with their join).
_TLS_AGENTS = ("db", "kube")
#: A node's host certificate and API session last this long; restarting the node with its stored identity
#: keeps working within it, after that it needs a new join token.
NODE_IDENTITY_TTL = timedelta(days=365)
#: Events a node may append to the audit log, and nothing else.
NODE_EVENTS = {
    "session.start": "T2000I",
    "session.end": "T2004I",
    "session.rejected": "T1006W",
}
#: Events a database service may append: (code when it succeeded, code when it failed), as Teleport's.
DB_EVENTS = {
    "db.session.start": ("TDB00I", "TDB00W"),
    "db.session.end": ("TDB01I", "TDB01I"),
}
#: Events a kube service may append: (code when it succeeded, code when it failed).
KUBE_EVENTS = {"kube.request": ("T3009I", "T3009W")}
MAX_LABELS = 64
MAX_HOSTNAME_CHARS = 253
_HOSTNAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")


class ServingAgent(TypedDict):
    """The agent serving a database or Kubernetes cluster: where to connect, and the host id its TLS
    certificate names."""

    host_id: str
    hostname: str
    addr: str


def _labels(value: Mapping[str, Any]) -> dict[str, str]:
    if len(value) > MAX_LABELS or not all(
        isinstance(k, str) and isinstance(v, str) and 0 < len(k) <= 63 and len(v) <= 253 for k, v in value.items()
    ):
        raise ValidationError(f"labels: at most {MAX_LABELS} string pairs (keys 1–63, values ≤ 253 characters)")
    return dict(value)


#: Fields of an agent's event the auth service sets itself (the cluster's name is added when it is stored).
_SET_BY_THE_AUTH_SERVICE = frozenset({"event", "code", "user", "success", "time", "cluster_name"})


class NodeService:
    def __init__(self, context: AuthContext) -> None:
        self.context = context

    def join(
        self,
        token: str,
        hostname: str,
        addr: str,
        labels: Mapping[str, Any],
        public_key: str,
        role: str = "node",
    ) -> dict[str, str]:
        """Admit an agent of ``role`` ("node" or "db") holding a join token of that type."""
        if role not in AGENT_RESOURCES:
            raise ValidationError(f"role: expected one of {', '.join(AGENT_RESOURCES)}")
        if not _HOSTNAME_RE.match(hostname):
            raise ValidationError(f"hostname: {hostname!r} is not a valid host name")
        key = require_p256_public_key(load_public_key(public_key), "host key")
        clean_labels = _labels(labels)
        context = self.context
        now = context.clock()
        spend_join_token(context, token, role, now)
        host_id = str(uuid.uuid4())
        host, _, _ = addr.rpartition(":")
        principals = sorted({host_id, hostname, f"{hostname}.{context.cluster_name}", host or "127.0.0.1"})
        host_cert = issue_ssh_host_cert(
            context.host_ca, key, host_id, principals, now - timedelta(minutes=1), now + NODE_IDENTITY_TTL
        )
        tls_cert = ""
        if role in _TLS_AGENTS:
            tls_cert = certificate_to_pem(
                issue_tls_server_cert(
                    context.host_ca,
                    key,
                    sorted({host_id, hostname, *([host] if host and not is_ip_address(host.strip("[]")) else [])}),
                    [host.strip("[]")] if host and is_ip_address(host.strip("[]")) else ["127.0.0.1"],
                    now - timedelta(minutes=1),
                    now + NODE_IDENTITY_TTL,
                )
            ).decode()
        session = new_token()
        node = {
            "host_id": host_id,
            "hostname": hostname,
            "addr": addr,
            "labels": clean_labels,
            "joined": now.isoformat(),
            "last_seen": now.isoformat(),
        }
        if role == "db":
            node["databases"] = []
        if role == "kube":
            node["kube_clusters"] = []
        with context.backend.begin() as store:
            store.resources.create(AGENT_RESOURCES[role], host_id, node)
            store.sessions.create(hash_token(session), host_id, role, {"hostname": hostname}, now + NODE_IDENTITY_TTL)
            context.audit(
                store, ("node.join", "TJ002I"), hostname, True, host_id=host_id, labels=clean_labels, role=role
            )
        return {
            "host_id": host_id,
            "host_cert": host_cert.decode(),
            "tls_cert": tls_cert,
            "session_token": session,
            "cluster_name": context.cluster_name,
            **context.cluster_cas(),
        }

    @staticmethod
    def _require_agent(caller: Caller) -> str:
        """The resource kind the calling agent is stored as; AccessDeniedError for anyone but a joined agent."""
        if caller.kind not in AGENT_RESOURCES:
            raise AccessDeniedError("only joined nodes may call this")
        return AGENT_RESOURCES[caller.kind]

    def heartbeat(
        self,
        caller: Caller,
        addr: str,
        labels: Mapping[str, Any],
        databases: Sequence[Mapping[str, Any]] = (),
        kube_clusters: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        kind = self._require_agent(caller)
        context = self.context
        body_update: dict[str, object] = {"addr": addr, "labels": _labels(labels)}
        if kind == RES_DB_SERVICE:
            names = [str(database["name"]) for database in databases]
            if len(set(names)) != len(names):
                raise ValidationError("databases: each name may appear once")
            body_update["databases"] = [
                {**database, "labels": _labels(database.get("labels", {}))} for database in databases
            ]
        if kind == RES_KUBE_SERVICE:
            names = [str(cluster["name"]) for cluster in kube_clusters]
            if len(set(names)) != len(names):
                raise ValidationError("kube_clusters: each name may appear once")
            body_update["kube_clusters"] = [
                {"name": cluster["name"], "labels": _labels(cluster.get("labels", {}))} for cluster in kube_clusters
            ]
        with context.backend.begin() as store:
            record = store.resources.get(kind, caller.name)
            body = {**record.body, **body_update, "last_seen": context.clock().isoformat()}
            store.resources.update(kind, caller.name, body)

    def state(self, caller: Caller) -> NodeState:
        """Everything an agent needs to decide on sessions by itself while the auth service is away."""
        self._require_agent(caller)
        context = self.context
        with context.backend.read() as store:
            roles = [record.body for record in store.resources.list("role")]
            cap = store.resources.get("cluster_auth_preference", "cluster-auth-preference").body
            locks = [record.body for record in store.locks.list(context.clock())]
        return NodeState(
            cluster_name=context.cluster_name,
            roles=roles,
            cluster_auth_preference=cap,
            locks=locks,
            user_ca_ssh=context.user_ca.ssh_public_key(),
            generated=context.clock().isoformat(),
        )

    def record_event(self, caller: Caller, event: Mapping[str, object]) -> None:
        """Append one event the calling agent reports; ValidationError if it may not report it."""
        refused = self.record_events(caller, [event])
        if refused:
            raise ValidationError(refused[0][1])

    def record_events(self, caller: Caller, events: Sequence[Mapping[str, object]]) -> list[tuple[int, str]]:
        """Append the events the calling agent reports, in order, in one transaction: all but those it may not
        report, which are returned as (index in ``events``, why)."""
        kind = self._require_agent(caller)
        accepted: list[tuple[tuple[str, str], str, bool, dict[str, object]]] = []
        refused: list[tuple[int, str]] = []
        for index, event in enumerate(events):
            try:
                name_and_code = _event_code(kind, event)
            except ValidationError as err:
                refused.append((index, str(err)))
                continue
            success = bool(event.get("success", True))
            body = {k: v for k, v in event.items() if k not in _SET_BY_THE_AUTH_SERVICE}
            # attributed to the agent whose session reports it, in this cluster, whatever the event says
            body["server_id"] = caller.name
            accepted.append((name_and_code, str(event.get("user", "")), success, body))
        if not accepted:
            return refused
        with self.context.backend.begin() as store:
            os_names: dict[str, str | None] = {}
            for _, _, _, body in accepted:
                device = body.get("device")
                if isinstance(device, Mapping) and not device.get("os") and isinstance(device.get("device_id"), str):
                    # Certificates carry the device's id, asset tag and credential, not its OS: the inventory does.
                    device_id = device["device_id"]
                    if device_id not in os_names:
                        record = store.devices.find(device_id)
                        os_names[device_id] = os_display_name(record.os_type) if record is not None else None
                    os_name = os_names[device_id]
                    if os_name is not None:
                        body["device"] = {**device, "os": os_name}
            self.context.audit_many(store, accepted)
        return refused

    def list_visible(self, caller: Caller) -> list[dict[str, Any]]:
        """Nodes whose labels one of the caller's roles allows (and none denies)."""
        with self.context.backend.begin() as store:
            nodes = [record.body for record in store.resources.list(RES_NODE)]
        return [node for node in nodes if node_visible(caller, node)]


def node_visible(caller: Caller, node: Mapping[str, Any]) -> bool:
    """Whether ``caller`` may see the node (stored ``node`` document): one of its roles allows the node's labels
    and none denies them."""
    # labels are stored as _labels returned them, at join and heartbeat
    return caller.kind == "admin" or bool(caller.checker.roles_matching_node(cast("dict[str, str]", node["labels"])))


def resolve_visible_node(store: Store, caller: Caller, name: str, cluster_name: str) -> dict[str, Any]:
    """The stored document of the node ``caller`` means by ``name``, among those it may see (as ``tsh ssh``
    resolves a name in ``GET /v1/nodes``). Raises NotFoundError when none or several carry the name."""
    named = [
        _NamedDocument(record.body)
        for record in store.resources.list(RES_NODE)
        if names_node(
            name,
            cluster_name,
            host_id=str(record.body.get("host_id", "")),
            hostname=str(record.body.get("hostname", "")),
        )
    ]
    return resolve_node([node for node in named if node_visible(caller, node.body)], name, cluster_name).body


@dataclass(frozen=True)
class _NamedDocument:
    body: dict[str, Any]

    @property
    def host_id(self) -> str:
        return str(self.body["host_id"])

    @property
    def hostname(self) -> str:
        return str(self.body["hostname"])


__all__ = [
    "AGENT_RESOURCES",
    "DB_EVENTS",
    "KUBE_EVENTS",
    "NODE_EVENTS",
    "RES_DB_SERVICE",
    "RES_KUBE_SERVICE",
    "RES_NODE",
    "NodeService",
    "ServingAgent",
    "announced",
    "label_matches",
    "node_visible",
    "resolve_visible_node",
    "spend_join_token",
]


def _event_code(kind: str, event: Mapping[str, object]) -> tuple[str, str]:
    """The event's name and audit code, if an agent of ``kind`` may report it; ValidationError otherwise."""
    name = event.get("event")
    success = bool(event.get("success", True))
    if kind == RES_KUBE_SERVICE:
        if not isinstance(name, str) or name not in KUBE_EVENTS:
            raise ValidationError(f"event: kube services may only report {', '.join(sorted(KUBE_EVENTS))}")
        return name, KUBE_EVENTS[name][0 if success else 1]
    if kind == RES_DB_SERVICE:
        if not isinstance(name, str) or name not in DB_EVENTS:
            raise ValidationError(f"event: database services may only report {', '.join(sorted(DB_EVENTS))}")
        return name, DB_EVENTS[name][0 if success else 1]
    if not isinstance(name, str) or name not in NODE_EVENTS:
        raise ValidationError(f"event: nodes may only report {', '.join(sorted(NODE_EVENTS))}")
    return name, NODE_EVENTS[name]


def spend_join_token(context: AuthContext, token: str, kind: str, now: datetime) -> None:
    """Spend a join token of ``kind`` (an agent role, "mdm"); AuthenticationError if it is unknown, expired or
    already spent."""
    with context.backend.begin() as store:
        try:
            store.tokens.consume(hash_token(token), kind, now)
        except NotFoundError:
            failure = True
        else:
            failure = False
    if failure:
        raise AuthenticationError(f"invalid or expired {kind} join token")


def live_agents(context: AuthContext, kind: str, now: datetime, ttl: timedelta) -> list[dict[str, Any]]:
    """The records of the agents of ``kind`` (``RES_DB_SERVICE``, ``RES_KUBE_SERVICE``) heard from within ``ttl``,
    least recently seen first: where two announce the same name, the later one wins."""
    with context.backend.read() as store:
        records = [record.body for record in store.resources.list(kind)]
    live: list[tuple[datetime, dict[str, Any]]] = []
    for record in records:
        try:
            seen = datetime.fromisoformat(str(record["last_seen"]))
        except (KeyError, ValueError):
            continue
        if now - seen <= ttl:
            live.append((seen, record))
    return [record for _, record in sorted(live, key=lambda pair: pair[0])]


_AnnouncedT = TypeVar("_AnnouncedT")


def announced(
    context: AuthContext,
    kind: str,
    key: str,
    now: datetime,
    ttl: timedelta,
    entry: Callable[[Mapping[str, Any], ServingAgent, str], _AnnouncedT],
) -> dict[str, _AnnouncedT]:
    """What the live agents of ``kind`` announce under ``key`` (their databases, their kube clusters), by name, as
    ``entry(item, the agent serving it, when that agent was last seen)`` makes it (the most recently seen agent
    wins)."""
    found: dict[str, _AnnouncedT] = {}
    for service in live_agents(context, kind, now, ttl):
        agent: ServingAgent = {"host_id": service["host_id"], "hostname": service["hostname"], "addr": service["addr"]}
        for item in service.get(key, []):
            found[str(item["name"])] = entry(item, agent, service["last_seen"])
    return found
