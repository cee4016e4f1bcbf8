"""The auth service's domain logic, free of HTTP: users, roles, bots, tokens, certificates, audit.

:class:`AuthServer` is a facade over services with one job each, which share an :class:`AuthContext`: the cluster
(:mod:`~devicetrust.auth.cluster`), sessions and login (:mod:`~devicetrust.auth.sessions`), users, bots and tokens
(:mod:`~devicetrust.auth.identities`), resources by kind (:mod:`~devicetrust.auth.resources`), locks, devices,
nodes, MDM agents and audit search. Every public method that acts for somebody takes the :class:`Caller` and
checks its permissions first. State lives in the backend only, so any number of ``AuthServer`` instances over one
database are interchangeable.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from argon2 import PasswordHasher

from devicetrust.auth.cluster import ClusterService
from devicetrust.auth.context import AuthContext, Caller, utcnow
from devicetrust.auth.databases import DatabaseAccessService
from devicetrust.auth.devices import DeviceService
from devicetrust.auth.event_search import EventSearch
from devicetrust.auth.identities import INVITE_TTL, IdentityService
from devicetrust.auth.kube import KubeAccessService
from devicetrust.auth.locks import LockService
from devicetrust.auth.mdm import MdmService
from devicetrust.auth.nodes import NodeService
from devicetrust.auth.resources import ResourceService
from devicetrust.auth.sessions import (
    MAX_LOGIN_FAILURES,
    MAX_LOGIN_FAILURES_PER_ADDRESS,
    LoginResult,
    SessionService,
)
from devicetrust.crypto.ca import CertAuthority
from devicetrust.protocol import WhoamiResponse
from devicetrust.storage.backend import Backend

__all__ = [
    "INVITE_TTL",
    "MAX_LOGIN_FAILURES",
    "MAX_LOGIN_FAILURES_PER_ADDRESS",
    "AuthContext",
    "AuthServer",
    "Caller",
    "LoginResult",
    "utcnow",
]


class AuthServer:
    """The services, and their operations under the names the HTTP layer, the daemon and the tests use."""

    def __init__(
        self,
        backend: Backend,
        *,
        cluster_name: str,
        clock: Callable[[], datetime] = utcnow,
        password_hasher: PasswordHasher | None = None,
    ) -> None:
        self.context = context = AuthContext(backend, cluster_name=cluster_name, clock=clock)
        # Argon2id with the library's RFC 9106 low-memory profile.
        hasher = password_hasher or PasswordHasher()
        self.cluster = ClusterService(context)
        self.sessions = SessionService(context, hasher)
        self.identities = IdentityService(context, hasher)
        self.locks = LockService(context)
        self.devices = DeviceService(context, self.sessions.authenticate_in)
        self.nodes = NodeService(context)
        self.databases = DatabaseAccessService(context)
        self.kube = KubeAccessService(context)
        self.mdm = MdmService(context)
        self.events = EventSearch(context)
        self.resources = ResourceService(
            context, identities=self.identities, locks=self.locks, devices=self.devices, cluster=self.cluster
        )
        self.audit = context.audit
        self.auth_preference = context.auth_preference
        self.auth_preference_in = context.auth_preference_in
        self.cluster_cas = context.cluster_cas
        # cluster
        self.initialize = self.cluster.initialize
        self.issue_tls_server_cert = self.cluster.issue_tls_server_cert
        self.ping = self.cluster.ping
        self.cert_authority_documents = self.cluster.cert_authority_documents
        # sessions
        self.issue_admin_identity = self.sessions.issue_admin_identity
        self.authenticate = self.sessions.authenticate
        self.login = self.sessions.login
        self.bot_join = self.sessions.bot_join
        self.logout = self.sessions.logout
        # identities
        self.create_user = self.identities.create_user
        self.reset_user = self.identities.reset_user
        self.update_user = self.identities.update_user
        self.signup = self.identities.signup
        self.create_bot = self.identities.create_bot
        self.delete_bot = self.identities.delete_bot
        self.create_join_token = self.identities.create_join_token
        self.list_tokens = self.identities.list_tokens
        self.delete_token = self.identities.delete_token
        # resources, locks, audit
        self.list_resources = self.resources.list_resources
        self.get_resource = self.resources.get_resource
        self.put_resource = self.resources.put_resource
        self.delete_resource = self.resources.delete_resource
        self.create_lock = self.locks.create
        self.delete_lock = self.locks.delete
        self.search_events = self.events.search

    # The cluster's name and CAs are settled by initialize(): read through to the context.
    @property
    def backend(self) -> Backend:
        return self.context.backend

    @property
    def clock(self) -> Callable[[], datetime]:
        return self.context.clock

    @property
    def cluster_name(self) -> str:
        return self.context.cluster_name

    @property
    def user_ca(self) -> CertAuthority:
        return self.context.user_ca

    @property
    def host_ca(self) -> CertAuthority:
        return self.context.host_ca

    def purge_expired(self) -> dict[str, int]:
        """Delete what has expired and can never count again; the number of rows per kind."""
        now = self.clock()
        with self.backend.begin() as store:
            return {
                "sessions": store.sessions.purge_expired(now),
                "tokens": store.tokens.purge_expired(now),
                "rate_limits": store.rate_limits.purge_expired(now),
                "pending_ceremonies": store.pending.purge_expired(now),
                "spent_ceremonies": store.spent_ceremonies.purge_expired(now),
            }

    @staticmethod
    def whoami(caller: Caller) -> WhoamiResponse:
        return WhoamiResponse(
            user=caller.name,
            kind=caller.kind,
            roles=list(caller.role_names),
            logins=list(caller.checker.logins()),
            bot_name=caller.bot_name,
        )
