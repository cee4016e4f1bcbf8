"""The session-time access decision (DESIGN §6): one pure function every service asks before a session starts.

``decide`` never raises for a denial and never guesses: anything it cannot read (an unknown device trust mode)
denies. Callers show ``Decision.reason`` to the user as it is; device denials read exactly
:data:`~devicetrust.access.modes.UNAUTHORIZED_DEVICE`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from devicetrust.access.checker import AccessChecker
from devicetrust.access.modes import UNAUTHORIZED_DEVICE, strictest_mode
from devicetrust.crypto.identity import Identity
from devicetrust.errors import ValidationError
from devicetrust.types.cluster_auth_preference import DEFAULT_CLUSTER_DEVICE_TRUST_MODE
from devicetrust.types.lock import Lock, locks_in_force
from devicetrust.types.role import Role

__all__ = ["MODE_OFF", "Decision", "NodeTarget", "decide", "lock_reason", "session_locks"]

#: The effective mode in which device data stays out of audit events (DESIGN §6).
MODE_OFF = "off"
_REQUIRED = "required"
_REQUIRED_FOR_HUMANS = "required-for-humans"


@dataclass(frozen=True, slots=True)
class NodeTarget:
    """The resource a session is for: an SSH node by its host id, host name and labels."""

    host_id: str
    hostname: str
    labels: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Decision:
    """Whether a session may start, and what the enforcing service needs to know about it.

    ``mode`` is the effective device trust mode (the strictest of the cluster's and the granting roles'), or ""
    when a mode could not be read (the session is then denied). ``roles`` are the roles that grant access to
    this resource (their options decide port and agent forwarding).
    """

    allowed: bool
    reason: str
    device_verified: bool
    mode: str
    roles: tuple[Role, ...] = ()

    @property
    def audit_device(self) -> bool:
        """Whether audit events may carry the device: verified, and device trust not off (DESIGN §6)."""
        return self.device_verified and self.mode not in (MODE_OFF, "")

    @property
    def port_forwarding(self) -> bool:
        return self.allowed and any(role.options.port_forwarding for role in self.roles)

    @property
    def forward_agent(self) -> bool:
        return self.allowed and any(role.options.forward_agent for role in self.roles)


def lock_reason(lock: Lock) -> str:
    """What a user stopped by ``lock`` is told: ``locked: <message>``."""
    return f"locked: {lock.message or f'{lock.target.kind} {lock.target.value} is locked'}"


def session_locks(
    identity: Identity, login: str, node: NodeTarget, locks: Iterable[Lock], now: datetime
) -> tuple[Lock, ...]:
    """The locks in force at ``now`` on the session's user, roles, verified device, login or node (id or name)."""
    locks = tuple(locks)
    device_id = identity.device.device_id if identity.device is not None else None
    found = {
        lock.name: lock
        for node_name in dict.fromkeys((node.host_id, node.hostname))
        for lock in locks_in_force(
            locks, now, user=identity.username, roles=identity.roles, device_id=device_id, login=login, node=node_name
        )
    }
    return tuple(found.values())


def decide(
    identity: Identity,
    *,
    login: str,
    node: NodeTarget,
    roles: Mapping[str, Role],
    cluster_mode: str,
    locks: Iterable[Lock],
    now: datetime,
) -> Decision:
    """May ``identity`` start a session as ``login`` on ``node``?

    - ``roles`` is the enforcing service's cache by name; a role the certificate names that is missing from it
      grants nothing (its locks still apply: they match by name).
    - Locks on the user, any of its roles, its verified device, the login or the node deny.
    - The login must be one of the certificate's principals and allowed on the node by the roles (deny beats
      allow; trait templates expand from the certificate's traits).
    - A device is required when the strictest of ``cluster_mode`` and the modes of the roles granting access to
      the node is ``required``, or ``required-for-humans`` for a human; then only a device-verified certificate
      (``identity.device`` set) passes. An unknown mode denies.
    """
    device_verified = identity.device is not None
    in_force = session_locks(identity, login, node, locks, now)
    known = tuple(roles[name] for name in identity.roles if name in roles)
    checker = AccessChecker(known, identity.traits)
    granting = checker.roles_matching_node(node.labels)
    try:
        mode = strictest_mode((cluster_mode, *(role.options.device_trust_mode for role in granting)))
    except ValidationError:
        mode = ""
    else:
        mode = mode or DEFAULT_CLUSTER_DEVICE_TRUST_MODE

    def deny(reason: str) -> Decision:
        return Decision(False, reason, device_verified, mode, granting)

    if in_force:
        return deny(lock_reason(in_force[0]))
    if not granting or login not in identity.logins or login not in checker.node_logins(node.labels):
        return deny(f"access denied to {identity.username} connecting to {node.hostname}")
    if not mode:
        return deny(UNAUTHORIZED_DEVICE)  # fail closed: a mode we cannot read
    required = mode == _REQUIRED or (mode == _REQUIRED_FOR_HUMANS and not identity.is_bot)
    if required and not device_verified:
        return deny(UNAUTHORIZED_DEVICE)
    return Decision(True, "", device_verified, mode, granting)
