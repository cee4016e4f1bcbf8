"""The session-time access decision: one pure function every service asks before a session starts.

``decide`` never raises for a denial and never guesses: anything it cannot read (an unknown device trust mode)
denies. Callers show ``Decision.reason`` to the user as it is; device denials read exactly
:data:`~devicetrust.access.modes.UNAUTHORIZED_DEVICE` for SSH and
:data:`~devicetrust.access.modes.TRUSTED_DEVICE_REQUIRED` for databases (each protocol's own wording, as
Teleport's), and ``Decision.audit_reason`` says precisely why.

One decision for every protocol: an SSH session is a login on a node (``login=``, ``node=``), a database session
a database user and name on a database (``database=``), a Kubernetes request a cluster (``kube=``). They differ
only in which roles grant the resource and which principals they must allow; locks, modes and the device
requirement are the same code.

Where a device is required, what counts as the device depends on the cluster's ``session_proof`` setting:
``per_session`` admits only a session proof (:class:`~devicetrust.crypto.identity.SessionProof`) taken for this very
target and still fresh; ``login`` admits the device values that login put in the certificate.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from devicetrust.access.checker import AccessChecker
from devicetrust.access.modes import TRUSTED_DEVICE_REQUIRED, UNAUTHORIZED_DEVICE, strictest_mode
from devicetrust.crypto.identity import Identity
from devicetrust.errors import ValidationError
from devicetrust.types.cluster_auth_preference import (
    DEFAULT_CLUSTER_DEVICE_TRUST_MODE,
    MAX_SESSION_PROOF_TTL,
    SESSION_PROOF_LOGIN,
    SESSION_PROOF_PER_SESSION,
)
from devicetrust.types.lock import Lock, locks_in_force
from devicetrust.types.role import Role

__all__ = [
    "DB_ACCESS_DENIED",
    "KUBE_ACCESS_DENIED",
    "MODE_OFF",
    "NO_SESSION_PROOF",
    "NO_TRUSTED_DEVICE",
    "PROOF_CLOCK_SKEW",
    "PROOF_EXPIRED",
    "PROOF_FOR_ANOTHER_TARGET",
    "PROOF_NOT_YET_VALID",
    "DatabaseSession",
    "DatabaseTarget",
    "Decision",
    "KubeClusterTarget",
    "NodeTarget",
    "allowed_until",
    "database_session_locks",
    "decide",
    "kube_session_locks",
    "lock_reason",
    "session_locks",
    "session_proof_problem",
]

#: The effective mode in which device data stays out of audit events.
MODE_OFF = "off"
_OPTIONAL = "optional"
_REQUIRED = "required"
_REQUIRED_FOR_HUMANS = "required-for-humans"

#: Why a device requirement was not met (audit only: users see "unauthorized device").
NO_SESSION_PROOF = "no session device proof"
PROOF_FOR_ANOTHER_TARGET = "device proof is for another target"
PROOF_EXPIRED = "device proof expired"
PROOF_NOT_YET_VALID = "device proof is not valid yet"
NO_TRUSTED_DEVICE = "certificate carries no trusted device"
#: The auth service's and the enforcing service's clocks may disagree by this much.
PROOF_CLOCK_SKEW = timedelta(seconds=30)
#: What a database user is told when RBAC refuses the database, user or name (Teleport's words).
DB_ACCESS_DENIED = "access to db denied. User does not have permissions. Confirm database user and name."
#: What a Kubernetes user is told when no role grants the cluster with a Kubernetes user or group to act as.
KUBE_ACCESS_DENIED = (
    "access to kubernetes cluster denied: your roles grant no kubernetes_users or kubernetes_groups "
    "on this cluster; ask your cluster administrator"
)


@dataclass(frozen=True, slots=True)
class NodeTarget:
    """The resource a session is for: an SSH node by its host id, host name and labels."""

    host_id: str
    hostname: str
    labels: Mapping[str, str]

    @property
    def proof_target(self) -> tuple[str, str]:
        """What a session proof for this node is bound to."""
        return ("ssh", self.host_id)


@dataclass(frozen=True, slots=True)
class DatabaseTarget:
    """A database a database service serves: its name (unique in the cluster; what a session proof for it is
    bound to), protocol and labels, and the service (host id and host name) serving it."""

    name: str
    protocol: str
    labels: Mapping[str, str]
    service_id: str
    service_hostname: str

    @property
    def proof_target(self) -> tuple[str, str]:
        return ("db", self.name)


@dataclass(frozen=True, slots=True)
class DatabaseSession:
    """A database session request: which database, as which database user, on which database name."""

    database: DatabaseTarget
    db_user: str
    db_name: str


@dataclass(frozen=True, slots=True)
class KubeClusterTarget:
    """A Kubernetes cluster a kube service serves: its name (unique in the cluster; what a session proof for it
    is bound to) and labels, and the service (host id and host name) serving it."""

    name: str
    labels: Mapping[str, str]
    service_id: str
    service_hostname: str

    @property
    def proof_target(self) -> tuple[str, str]:
        return ("kube", self.name)


@dataclass(frozen=True, slots=True)
class Decision:
    """Whether a session may start, and what the enforcing service needs to know about it.

    ``mode`` is the effective device trust mode (the strictest of the cluster's and the granting roles'), or ""
    when a mode could not be read (the session is then denied). ``roles`` are the roles that grant access to
    this resource (their options decide port and agent forwarding). ``device_verified``: the device is proven
    the way the cluster requires (a fresh session proof for this target, or login-time values). ``audit_device``:
    audit events may name the certificate's device (never when device trust is off). ``audit_reason``: what the
    audit records for a denial, more precise than ``reason``.
    """

    allowed: bool
    reason: str
    device_verified: bool
    mode: str
    roles: tuple[Role, ...] = ()
    audit_device: bool = False
    audit_reason: str = ""
    #: Kubernetes: the users and groups the granting roles allow impersonating (sorted; no "*")
    kubernetes_users: tuple[str, ...] = ()
    kubernetes_groups: tuple[str, ...] = ()

    @property
    def port_forwarding(self) -> bool:
        return self.allowed and any(role.options.port_forwarding for role in self.roles)

    @property
    def forward_agent(self) -> bool:
        return self.allowed and any(role.options.forward_agent for role in self.roles)


def lock_reason(lock: Lock) -> str:
    """What a user stopped by ``lock`` is told: ``locked: <message>``."""
    return f"locked: {lock.message or f'{lock.target.kind} {lock.target.value} is locked'}"


def _locks(
    identity: Identity, login: str | None, server_names: Iterable[str], locks: Iterable[Lock], now: datetime
) -> tuple[Lock, ...]:
    locks = tuple(locks)
    device_id = identity.device.device_id if identity.device is not None else None
    found = {
        lock.name: lock
        for server in dict.fromkeys(server_names)
        for lock in locks_in_force(
            locks, now, user=identity.username, roles=identity.roles, device_id=device_id, login=login, node=server
        )
    }
    return tuple(found.values())


def session_locks(
    identity: Identity, login: str, node: NodeTarget, locks: Iterable[Lock], now: datetime
) -> tuple[Lock, ...]:
    """The locks in force at ``now`` on the session's user, roles, verified device, login or node (id or name)."""
    return _locks(identity, login, (node.host_id, node.hostname), locks, now)


def database_session_locks(
    identity: Identity, database: DatabaseTarget, locks: Iterable[Lock], now: datetime
) -> tuple[Lock, ...]:
    """The locks in force at ``now`` on the session's user, roles or verified device, or on the database service
    (a node lock naming its host id or host name, as for an SSH node)."""
    return _locks(identity, None, (database.service_id, database.service_hostname), locks, now)


def kube_session_locks(
    identity: Identity, cluster: KubeClusterTarget, locks: Iterable[Lock], now: datetime
) -> tuple[Lock, ...]:
    """The locks in force at ``now`` on the request's user, roles or verified device, or on the kube service
    (a node lock naming its host id or host name, as for an SSH node)."""
    return _locks(identity, None, (cluster.service_id, cluster.service_hostname), locks, now)


def session_proof_problem(identity: Identity, target: tuple[str, str], now: datetime) -> str | None:
    """None if ``identity`` carries a session proof for ``target`` (kind, id) that admits a session at ``now``;
    otherwise why not, for the audit."""
    proof = identity.session_proof
    if identity.device is None or proof is None:
        return NO_SESSION_PROOF
    if (proof.kind, proof.target) != target:
        return PROOF_FOR_ANOTHER_TARGET
    if now < proof.time - PROOF_CLOCK_SKEW:
        return PROOF_NOT_YET_VALID
    # the window is capped here too, so a proof minted with a long window by mistake is still refused
    if now >= proof.expires or now >= proof.time + MAX_SESSION_PROOF_TTL + PROOF_CLOCK_SKEW:
        return PROOF_EXPIRED
    return None


def allowed_until(identity: Identity) -> datetime:
    """Until when a decision that allowed ``identity`` stands, the cluster state (roles, settings, locks) being
    the same: its session proof, if it has one, admits sessions until then, and its certificate is valid (a lock
    only ever ends by itself; a new one comes with a new state)."""
    proof = identity.session_proof
    if proof is None:
        return identity.not_after
    return min(identity.not_after, proof.expires, proof.time + MAX_SESSION_PROOF_TTL + PROOF_CLOCK_SKEW)


def decide(
    identity: Identity,
    *,
    login: str = "",
    node: NodeTarget | None = None,
    database: DatabaseSession | None = None,
    kube: KubeClusterTarget | None = None,
    roles: Mapping[str, Role],
    cluster_mode: str,
    locks: Iterable[Lock],
    now: datetime,
    session_proof: str = SESSION_PROOF_PER_SESSION,
    authenticated_at: datetime | None = None,
) -> Decision:
    """May ``identity`` start a session as ``login`` on ``node``, or as ``database.db_user`` on
    ``database.db_name`` of ``database.database``, or send requests to the Kubernetes cluster ``kube``? Give
    exactly one of ``node`` (with ``login``), ``database`` and ``kube``.

    - ``roles`` is the enforcing service's cache by name; a role the certificate names that is missing from it
      grants nothing (its locks still apply: they match by name).
    - Locks on the user, any of its roles, its verified device, the login (SSH) or the server (the node, or the
      database service: by host id or host name) deny.
    - SSH: the login must be one of the certificate's principals and allowed on the node by the roles. Databases:
      one role matching the database's labels must allow both the database user and the database name.
      Kubernetes: the roles matching the cluster's labels must grant at least one Kubernetes user or group
      (``Decision.kubernetes_users`` / ``kubernetes_groups``). Deny beats allow; trait templates expand from the
      certificate's traits.
    - A device is required when the strictest of ``cluster_mode`` and the modes of the roles granting access to
      the resource (by its labels) is ``required``, or ``required-for-humans`` for a human; then only a
      device-verified certificate passes: with ``session_proof`` ``per_session``, one whose session proof is for
      this resource and fresh at ``authenticated_at`` (when the client authenticated the connection the session
      runs on; default ``now``: a connection proven once may open more channels, e.g. port forwards, later);
      with ``login``, one carrying the device values. An unknown mode or setting denies.
    """
    known = tuple(roles[name] for name in identity.roles if name in roles)
    checker = AccessChecker(known, identity.traits)
    kube_users: tuple[str, ...] = ()
    kube_groups: tuple[str, ...] = ()
    if sum(target is not None for target in (node, database, kube)) != 1:
        raise ValueError("decide() needs exactly one of node=, database= or kube=")
    if node is not None:
        proof_target = node.proof_target
        in_force = session_locks(identity, login, node, locks, now)
        granting = checker.roles_matching_node(node.labels)
        permitted = bool(granting) and login in identity.logins and login in checker.node_logins(node.labels)
        rbac_denial = f"access denied to {identity.username} connecting to {node.hostname}"
        device_denial = UNAUTHORIZED_DEVICE
    elif database is not None:
        target = database.database
        proof_target = target.proof_target
        in_force = database_session_locks(identity, target, locks, now)
        granting = checker.roles_matching_database(target.labels)
        permitted = bool(checker.roles_granting_database(target.labels, database.db_user, database.db_name))
        rbac_denial = DB_ACCESS_DENIED
        device_denial = TRUSTED_DEVICE_REQUIRED
    else:
        assert kube is not None
        proof_target = kube.proof_target
        in_force = kube_session_locks(identity, kube, locks, now)
        granting = checker.roles_matching_kubernetes_cluster(kube.labels)
        kube_users = checker.kubernetes_cluster_users(kube.labels)
        kube_groups = checker.kubernetes_cluster_groups(kube.labels)
        permitted = bool(granting) and bool(kube_users or kube_groups)
        rbac_denial = KUBE_ACCESS_DENIED
        device_denial = TRUSTED_DEVICE_REQUIRED

    if session_proof == SESSION_PROOF_LOGIN:
        problem = None if identity.device is not None else NO_TRUSTED_DEVICE
    elif session_proof == SESSION_PROOF_PER_SESSION:
        problem = session_proof_problem(identity, proof_target, authenticated_at or now)
    else:
        problem = f"unknown session_proof setting {session_proof!r}"
    device_verified = problem is None
    try:
        mode = strictest_mode((cluster_mode, *(role.options.device_trust_mode for role in granting)))
    except ValidationError:
        mode = ""
    else:
        mode = mode or DEFAULT_CLUSTER_DEVICE_TRUST_MODE

    required = mode == _REQUIRED or (mode == _REQUIRED_FOR_HUMANS and not identity.is_bot)
    # Login-time device values still name the device in optional mode; where a device is required, only a
    # device proven as the cluster requires does.
    audit_device = mode not in (MODE_OFF, "") and identity.device is not None and (device_verified or mode == _OPTIONAL)

    def deny(reason: str, audit_reason: str = "") -> Decision:
        return Decision(False, reason, device_verified, mode, granting, audit_device, audit_reason or reason)

    if in_force:
        return deny(lock_reason(in_force[0]))
    if not permitted:
        return deny(rbac_denial)
    if not mode:
        return deny(device_denial, "unreadable device trust mode")  # fail closed
    if required and not device_verified:
        return deny(device_denial, problem or device_denial)
    return Decision(True, "", device_verified, mode, granting, audit_device, "", kube_users, kube_groups)
