"""What every auth service shares: the backend, the clock, the cluster's name and CAs, the audit writer and the
auth preference reader — and who is calling (:class:`Caller`). Services receive this, never each other's owner."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from devicetrust.access import AccessChecker
from devicetrust.auth.cache import CachedState, StateCache
from devicetrust.auth.parsing import parse_as
from devicetrust.crypto.ca import CertAuthority
from devicetrust.storage.backend import Backend
from devicetrust.storage.records import AuditEntry
from devicetrust.storage.repositories import Store
from devicetrust.types import ClusterAuthPreference, Lock, Role, locks_in_force
from devicetrust.types.clock import utcnow

CAP_KIND = "cluster_auth_preference"
CAP_NAME = "cluster-auth-preference"
BOT_USER_PREFIX = "bot-"

# RBAC resource names used in role rules.
RES_USER = "user"
RES_ROLE = "role"
RES_BOT = "bot"
RES_TOKEN = "token"
RES_CAP = CAP_KIND
RES_EVENT = "event"
RES_LOCK = "lock"
RES_CERT_AUTHORITY = "cert_authority"


@dataclass(frozen=True)
class Caller:
    """Who is calling, with the roles in force right now (re-read at every request)."""

    name: str
    kind: str  # "user" | "bot" | "admin"
    roles: tuple[Role, ...]
    traits: Mapping[str, tuple[str, ...]]
    session_hash: str = ""
    bot_name: str | None = None
    checker: AccessChecker = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "checker", AccessChecker(self.roles, self.traits))

    def check(self, resource: str, verb: str) -> None:
        self.checker.check_rule(resource, verb)

    @property
    def role_names(self) -> tuple[str, ...]:
        return tuple(role.metadata.name for role in self.roles)


class AuthContext:
    """The cluster's shared state. The CAs are loaded at start-up (see :mod:`devicetrust.auth.cluster`)."""

    def __init__(self, backend: Backend, *, cluster_name: str, clock: Callable[[], datetime] = utcnow) -> None:
        self.backend = backend
        self.clock = clock
        self.cluster_name = cluster_name
        self.user_ca: CertAuthority
        self.host_ca: CertAuthority
        #: the HMAC key sealing device-authentication ceremony state (shared by every server of the cluster)
        self.ceremony_key: bytes = b""
        self.cache = StateCache()

    def audit(self, store: Store, event: tuple[str, str], user: str, success: bool, /, **body: Any) -> None:
        name, code = event
        body.setdefault("cluster_name", self.cluster_name)
        store.audit.append(name, code, self.clock(), user, success, body)

    def audit_many(self, store: Store, events: Sequence[tuple[tuple[str, str], str, bool, dict[str, object]]]) -> None:
        """Append ``events`` ((name, code), user, success, body), in order, at one time."""
        now = self.clock()
        store.audit.append_many(
            [
                AuditEntry(name, code, now, user, success, {"cluster_name": self.cluster_name, **body})
                for (name, code), user, success, body in events
            ]
        )

    def audit_entry(self, event: tuple[str, str], user: str, success: bool, /, **body: Any) -> AuditEntry:
        """An event for :meth:`AuditRepository.append_many`, which writes several in one statement."""
        name, code = event
        body.setdefault("cluster_name", self.cluster_name)
        return AuditEntry(name, code, self.clock(), user, success, body)

    def state(self, store: Store) -> CachedState:
        """The cached roles, auth preference, bots and locks, current as of this transaction."""
        return self.cache.current(store)

    def auth_preference(self) -> ClusterAuthPreference:
        with self.backend.read() as store:
            return self.state(store).auth_preference

    def auth_preference_in(self, store: Store) -> ClusterAuthPreference:
        return self.state(store).auth_preference

    def locks_in_force(self, store: Store, now: datetime, **targets: Any) -> tuple[Lock, ...]:
        """The locks in force at ``now`` on any of ``targets`` (see :func:`devicetrust.types.locks_in_force`)."""
        return locks_in_force(self.state(store).locks, now, **targets)

    def cluster_cas(self) -> dict[str, str]:
        return {
            "user_ca_ssh": self.user_ca.ssh_public_key(),
            "user_ca_pem": self.user_ca.certificate_pem().decode(),
            "host_ca_ssh": self.host_ca.ssh_public_key(),
            "host_ca_pem": self.host_ca.certificate_pem().decode(),
        }


__all__ = ["AuthContext", "Caller", "parse_as", "utcnow"]
