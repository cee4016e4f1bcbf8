"""Kubernetes clusters on the auth service: kube tokens join kube services, heartbeats announce clusters, users
see the ones their roles grant with the Kubernetes users and groups they may act as; a kube service reports only
kube.request events."""

from __future__ import annotations

from datetime import timedelta

import pytest
from tests.auth.server_harness import PASSWORD, Clock, public_key, signed_up

from devicetrust.auth.kube import KUBE_SERVICE_TTL
from devicetrust.auth.server import AuthServer, Caller
from devicetrust.crypto.ca import load_certificate_pem
from devicetrust.errors import AuthenticationError, ValidationError

CLUSTERS = [{"name": "prod", "labels": {"env": "prod"}}, {"name": "staging", "labels": {"env": "staging"}}]


def join_kube_service(server: AuthServer, admin: Caller) -> tuple[Caller, dict[str, object]]:
    token, _ = server.create_join_token(admin, "kube", None)
    reply = server.nodes.join(token, "kube-host", "127.0.0.1:3026", {}, public_key(), "kube")
    caller = server.authenticate(str(reply["session_token"]))
    server.nodes.heartbeat(caller, "127.0.0.1:3026", {}, (), CLUSTERS)
    return caller, reply


def test_a_kube_token_joins_a_kube_service_with_a_tls_certificate(server: AuthServer, admin: Caller) -> None:
    caller, reply = join_kube_service(server, admin)
    assert caller.kind == "kube" and caller.name == reply["host_id"]
    assert load_certificate_pem(str(reply["tls_cert"]).encode())
    db_token, _ = server.create_join_token(admin, "db", None)
    with pytest.raises(AuthenticationError, match="kube join token"):
        server.nodes.join(db_token, "kube-host", "127.0.0.1:3026", {}, public_key(), "kube")


def test_users_see_the_clusters_their_roles_grant(server: AuthServer, admin: Caller, clock: Clock) -> None:
    join_kube_service(server, admin)
    server.put_resource(
        admin,
        {
            "kind": "role",
            "version": "v7",
            "metadata": {"name": "staging-dev"},
            "spec": {
                "allow": {
                    "kubernetes_labels": {"env": "staging"},
                    "kubernetes_groups": ["{{internal.kubernetes_groups}}", "developers"],
                }
            },
        },
        force=True,
    )
    signed_up(server, admin, "dana", ("staging-dev",))
    dana = server.authenticate(server.login("dana", PASSWORD, public_key(), None).session_token)
    listed = server.kube.list_visible(dana)
    assert [(c["name"], c["kubernetes_users"], c["kubernetes_groups"]) for c in listed] == [
        ("staging", [], ["developers"])
    ]
    assert listed[0]["service"]["addr"] == "127.0.0.1:3026"
    assert [c["name"] for c in server.kube.list_visible(admin)] == ["prod", "staging"]
    clock.advance(KUBE_SERVICE_TTL + timedelta(seconds=1))
    assert server.kube.list_visible(admin) == []


def test_a_kube_service_reports_only_kube_requests(server: AuthServer, admin: Caller) -> None:
    caller, _ = join_kube_service(server, admin)
    server.nodes.record_event(caller, {"event": "kube.request", "user": "dana", "success": False, "verb": "list"})
    with pytest.raises(ValidationError, match=r"kube services may only report kube\.request"):
        server.nodes.record_event(caller, {"event": "db.session.start", "user": "dana"})
    with pytest.raises(ValidationError, match="each name may appear once"):
        server.nodes.heartbeat(caller, "127.0.0.1:3026", {}, (), [CLUSTERS[0], CLUSTERS[0]])
