"""Databases on the auth service: which ones a user may reach (``tsh db ls``), and X.509 certificates routed to
one of them (``tsh db login``).

Database services announce their databases in their heartbeats (:mod:`devicetrust.auth.nodes`); a database is
listed while its service has been seen within :data:`DB_SERVICE_TTL`. Names are unique in the cluster: when two
services announce one name, the one seen last serves it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypedDict

from devicetrust import audit as events
from devicetrust.auth.nodes import RES_DB_SERVICE, ServingAgent, announced
from devicetrust.crypto.certs import (
    certificate_to_pem,
    issue_x509_client_cert,
    load_ssh_certificate,
    verify_ssh_user_cert,
)
from devicetrust.crypto.identity import DatabaseRoute
from devicetrust.crypto.keys import require_p256_public_key
from devicetrust.errors import AccessDeniedError, NotFoundError, TrustError

if TYPE_CHECKING:
    from devicetrust.auth.context import AuthContext, Caller

__all__ = ["DB_SERVICE_TTL", "DatabaseAccessService"]

#: A database service not heard from for this long (heartbeats come every 30 s) no longer lists its databases.
DB_SERVICE_TTL = timedelta(minutes=10)


class AnnouncedDatabase(TypedDict):
    name: str
    protocol: str
    uri: str
    labels: dict[str, str]
    service: ServingAgent
    last_seen: str


class VisibleDatabase(AnnouncedDatabase):
    """A database as ``tsh db ls`` lists it (:class:`devicetrust.protocol.DatabaseServer`)."""

    allowed_users: list[str]
    allowed_names: list[str]


def _announced_database(item: Mapping[str, Any], agent: ServingAgent, last_seen: str) -> AnnouncedDatabase:
    return {
        "name": item["name"],
        "protocol": item["protocol"],
        "uri": item["uri"],
        "labels": dict(item.get("labels", {})),
        "service": agent,
        "last_seen": last_seen,
    }


class DatabaseAccessService:
    def __init__(self, context: AuthContext) -> None:
        self.context = context

    def _databases(self, now: datetime) -> dict[str, AnnouncedDatabase]:
        """Every database a live service announces, by name (the most recently seen service wins)."""
        return announced(self.context, RES_DB_SERVICE, "databases", now, DB_SERVICE_TTL, _announced_database)

    def _visible(self, caller: Caller, database: AnnouncedDatabase) -> VisibleDatabase | None:
        labels = database["labels"]
        if caller.kind != "admin" and not caller.checker.roles_matching_database(labels):
            return None
        return {
            **database,
            "allowed_users": list(caller.checker.database_users(labels)),
            "allowed_names": list(caller.checker.database_names(labels)),
        }

    def list_visible(self, caller: Caller) -> list[VisibleDatabase]:
        """The databases whose labels one of the caller's roles allows (and none denies), by name."""
        databases = self._databases(self.context.clock())
        visible = (self._visible(caller, databases[name]) for name in sorted(databases))
        return [database for database in visible if database is not None]

    def issue_cert(
        self, caller: Caller, *, database: str, ssh_cert: bytes, db_user: str = "", db_name: str = ""
    ) -> tuple[bytes, VisibleDatabase]:
        """An X.509 client certificate for the key of the caller's login certificate ``ssh_cert``, routed to
        ``database``, expiring with the login certificate. It carries the login certificate's device values (if
        any) but never a session proof: where a session proof is required, each connection still needs one."""
        if caller.kind not in ("user", "bot"):
            raise AccessDeniedError("database certificates are for users and bots")
        now = self.context.clock()
        found = self._databases(now).get(database)
        visible = self._visible(caller, found) if found is not None else None
        if found is None or visible is None:
            raise NotFoundError(f'database "{database}" not found')
        identity = verify_ssh_user_cert(ssh_cert, [self.context.user_ca.ssh_public_key()], now)
        if identity.username != caller.name:
            raise TrustError("the certificate does not belong to the logged-in user")
        if identity.session_proof is not None:
            raise TrustError("a session certificate cannot be used here; use the login one")
        routed = replace(identity, db_route=DatabaseRoute(database, str(found["protocol"]), db_user, db_name))
        public_key = require_p256_public_key(load_ssh_certificate(ssh_cert).public_key(), "certificate key")
        cert = issue_x509_client_cert(self.context.user_ca, public_key, routed)
        with self.context.backend.begin() as store:
            self.context.audit(
                store,
                events.CERT_CREATE,
                caller.name,
                True,
                cert_type="db",
                identity={
                    "user": caller.name,
                    "expires": routed.not_after.isoformat(),
                    "route_to_database": {
                        "service_name": database,
                        "protocol": found["protocol"],
                        "username": db_user,
                        "database": db_name,
                    },
                },
            )
        return certificate_to_pem(cert), visible
