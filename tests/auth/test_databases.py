"""Databases on the auth service: db tokens join database services, heartbeats announce databases, users see the
ones their roles grant and get certificates routed to them; each agent kind reports only its own events."""

from __future__ import annotations

from datetime import timedelta

import pytest
from cryptography.x509.oid import ExtensionOID
from tests.auth.server_harness import PASSWORD, Clock, public_key, signed_up

from devicetrust.auth.databases import DB_SERVICE_TTL
from devicetrust.auth.server import AuthServer, Caller
from devicetrust.crypto.ca import load_certificate_pem
from devicetrust.crypto.certs import verify_x509_client_cert
from devicetrust.crypto.identity import DatabaseRoute
from devicetrust.errors import AccessDeniedError, AuthenticationError, NotFoundError, ValidationError

_SAN = ExtensionOID.SUBJECT_ALTERNATIVE_NAME

DATABASES = [
    {"name": "pg-prod", "protocol": "postgres", "uri": "postgres://db:5432", "labels": {"env": "prod"}},
    {"name": "pg-dev", "protocol": "postgres", "uri": "postgres://db:5433", "labels": {"env": "dev"}},
]


def join_db_service(server: AuthServer, admin: Caller) -> tuple[Caller, dict[str, object]]:
    token, _ = server.create_join_token(admin, "db", None)
    reply = server.nodes.join(token, "db-host", "127.0.0.1:5433", {}, public_key(), "db")
    caller = server.authenticate(str(reply["session_token"]))
    server.nodes.heartbeat(caller, "127.0.0.1:5433", {}, DATABASES)
    return caller, reply


def test_a_db_token_joins_a_database_service_with_a_tls_certificate(server: AuthServer, admin: Caller) -> None:
    caller, reply = join_db_service(server, admin)
    assert caller.kind == "db" and caller.name == reply["host_id"]
    cert = load_certificate_pem(str(reply["tls_cert"]).encode())
    names = [str(name.value) for name in cert.extensions.get_extension_for_oid(_SAN).value]
    assert {str(reply["host_id"]), "db-host", "127.0.0.1"} <= set(names)
    # a node token is no db token, and the other way round
    node_token, _ = server.create_join_token(admin, "node", None)
    with pytest.raises(AuthenticationError, match="db join token"):
        server.nodes.join(node_token, "db-host", "127.0.0.1:5433", {}, public_key(), "db")


def test_users_see_the_databases_their_roles_grant(server: AuthServer, admin: Caller) -> None:
    join_db_service(server, admin)
    server.put_resource(
        admin,
        {
            "kind": "role",
            "version": "v7",
            "metadata": {"name": "dev-dba"},
            "spec": {"allow": {"db_labels": {"env": "dev"}, "db_users": ["postgres"], "db_names": ["*"]}},
        },
        force=True,
    )
    signed_up(server, admin, "dana", ("dev-dba",))
    dana = server.authenticate(server.login("dana", PASSWORD, public_key(), None).session_token)
    listed = server.databases.list_visible(dana)
    assert [(d["name"], d["allowed_users"], d["allowed_names"]) for d in listed] == [("pg-dev", ["postgres"], ["*"])]
    assert listed[0]["service"]["addr"] == "127.0.0.1:5433"


def test_a_silent_service_stops_listing_its_databases(server: AuthServer, admin: Caller, clock: Clock) -> None:
    join_db_service(server, admin)
    assert len(server.databases.list_visible(admin)) == 2
    clock.advance(DB_SERVICE_TTL + timedelta(seconds=1))
    assert server.databases.list_visible(admin) == []


def test_a_database_certificate_is_routed_and_keeps_the_login_expiry(
    server: AuthServer, admin: Caller, clock: Clock
) -> None:
    join_db_service(server, admin)
    signed_up(server, admin, "alice")
    login = server.login("alice", PASSWORD, public_key(), None)
    alice = server.authenticate(login.session_token)
    pem, database = server.databases.issue_cert(
        alice, database="pg-prod", ssh_cert=login.ssh_cert, db_user="alice", db_name="app"
    )
    identity = verify_x509_client_cert(load_certificate_pem(pem), server.user_ca.certificate, clock.now)
    assert identity.db_route == DatabaseRoute("pg-prod", "postgres", "alice", "app")
    assert identity.not_after == login.tls_cert.not_valid_after_utc and identity.session_proof is None
    assert database["name"] == "pg-prod"
    with pytest.raises(NotFoundError):
        server.databases.issue_cert(alice, database="pg-nowhere", ssh_cert=login.ssh_cert)


def test_each_agent_reports_only_its_own_events(server: AuthServer, admin: Caller) -> None:
    db_service, _ = join_db_service(server, admin)
    server.nodes.record_event(db_service, {"event": "db.session.start", "user": "alice", "success": False})
    server.nodes.record_event(db_service, {"event": "db.session.end", "user": "alice"})
    with pytest.raises(ValidationError):
        server.nodes.record_event(db_service, {"event": "session.start", "user": "alice"})
    node_token, _ = server.create_join_token(admin, "node", None)
    node = server.authenticate(
        str(server.nodes.join(node_token, "n1", "127.0.0.1:3022", {}, public_key())["session_token"])
    )
    with pytest.raises(ValidationError):
        server.nodes.record_event(node, {"event": "db.session.start", "user": "alice"})
    codes = [
        (e["event"], e["code"], e["success"])
        for e in server.search_events(
            admin,
            since=None,
            until=None,
            event_types=["db.session.start", "db.session.end"],
            user=None,
            limit=10,
            after_id=None,
        )
    ]
    assert codes == [("db.session.start", "TDB00W", False), ("db.session.end", "TDB01I", True)]
    # a database service is no SSH node: tsh ls does not list it
    assert [n["hostname"] for n in server.nodes.list_visible(admin)] == ["n1"]
    with pytest.raises(AccessDeniedError):
        server.nodes.heartbeat(admin, "127.0.0.1:1", {})
