"""What every auth service shares: the backend, the clock, the cluster's name and CAs, the audit writer and the
auth preference reader — and who is calling (:class:`Caller`). Services receive this, never each other's owner."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from devicetrust.access import AccessChecker
from devicetrust.auth.parsing import parse_stored
from devicetrust.crypto import CertAuthority
from devicetrust.errors import ValidationError
from devicetrust.storage import Backend, Store
from devicetrust.types import Bot, ClusterAuthPreference, Resource, Role, User

_R = TypeVar("_R", Role, User, Bot, ClusterAuthPreference)

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


def utcnow() -> datetime:
    return datetime.now(UTC)


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

    def audit(self, store: Store, event: tuple[str, str], user: str, success: bool, /, **body: Any) -> None:
        name, code = event
        body.setdefault("cluster_name", self.cluster_name)
        store.audit.append(name, code, self.clock(), user, success, body)

    def auth_preference(self) -> ClusterAuthPreference:
        with self.backend.begin() as store:
            return self.auth_preference_in(store)

    @staticmethod
    def auth_preference_in(store: Store) -> ClusterAuthPreference:
        return parse_as(store.resources.get(CAP_KIND, CAP_NAME).body, ClusterAuthPreference)

    def cluster_cas(self) -> dict[str, str]:
        return {
            "user_ca_ssh": self.user_ca.ssh_public_key(),
            "user_ca_pem": self.user_ca.certificate_pem().decode(),
            "host_ca_ssh": self.host_ca.ssh_public_key(),
            "host_ca_pem": self.host_ca.certificate_pem().decode(),
        }


def parse_as(body: Mapping[str, Any], cls: type[_R]) -> _R:
    """A stored document as the resource class it must be."""
    resource: Resource = parse_stored(body)
    if not isinstance(resource, cls):
        raise ValidationError(f"stored resource is a {type(resource).__name__}, expected {cls.__name__}")
    return resource
