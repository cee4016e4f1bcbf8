"""AuthServer without HTTP: a real SQLite backend, a frozen clock, fast argon2 parameters."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta

import pytest
from tests.auth.server_harness import PASSWORD, Clock, make_server, public_key, signed_up

from devicetrust.auth.server import (
    INVITE_TTL,
    MAX_LOGIN_FAILURES,
    AuthServer,
    Caller,
)
from devicetrust.crypto.certs import verify_ssh_user_cert
from devicetrust.errors import (
    AccessDeniedError,
    AlreadyExistsError,
    AuthenticationError,
    ConfigError,
    NotFoundError,
    RateLimitedError,
    SessionExpiredError,
    ValidationError,
)
from devicetrust.storage.backend import Backend
from devicetrust.types import resource_to_dict


def test_initialize_is_idempotent_and_keeps_cas(server: AuthServer, backend: Backend, clock: Clock) -> None:
    again = make_server(backend, clock)
    assert again.user_ca.ssh_public_key() == server.user_ca.ssh_public_key()
    assert again.host_ca.certificate_pem() == server.host_ca.certificate_pem()


def test_cluster_name_cannot_change(server: AuthServer, backend: Backend, clock: Clock) -> None:
    with pytest.raises(ConfigError, match="cluster_name"):
        make_server(backend, clock, cluster_name="other.name")


def test_login_issues_certs_bound_to_the_user_ca(server: AuthServer, admin: Caller, clock: Clock) -> None:
    signed_up(server, admin, "alice")
    result = server.login("alice", PASSWORD, public_key(), None)
    identity = verify_ssh_user_cert(result.ssh_cert, [server.user_ca.ssh_public_key()], clock.now)
    assert identity.username == "alice"
    assert identity.logins == ("alice",)
    assert identity.not_after == clock.now + timedelta(hours=12)
    assert result.tls_cert.not_valid_after_utc == identity.not_after
    caller = server.authenticate(result.session_token)
    assert caller.name == "alice" and caller.role_names == ("access",)


def test_role_max_session_ttl_caps_certificates(server: AuthServer, admin: Caller, clock: Clock) -> None:
    short = {
        "kind": "role",
        "version": "v7",
        "metadata": {"name": "short"},
        "spec": {"options": {"max_session_ttl": "1h"}, "allow": {"logins": ["x"]}},
    }
    server.put_resource(admin, short, force=False)
    signed_up(server, admin, "bob", ("short",))
    result = server.login("bob", PASSWORD, public_key(), timedelta(hours=8))
    assert result.identity.not_after == clock.now + timedelta(hours=1)
    with pytest.raises(ValidationError, match=r"^certificate TTL must be at least 1 minute$"):
        server.login("bob", PASSWORD, public_key(), timedelta(seconds=5))


def test_sessions_expire_with_the_certificates(server: AuthServer, admin: Caller, clock: Clock) -> None:
    signed_up(server, admin, "alice")
    result = server.login("alice", PASSWORD, public_key(), timedelta(hours=1))
    clock.advance(timedelta(hours=1, seconds=1))
    with pytest.raises(SessionExpiredError, match="tsh login"):
        server.authenticate(result.session_token)
    with pytest.raises(SessionExpiredError):
        server.authenticate("not-a-token")
    with pytest.raises(SessionExpiredError):
        server.authenticate("")


def test_role_changes_apply_to_existing_sessions(server: AuthServer, admin: Caller) -> None:
    signed_up(server, admin, "alice")
    token = server.login("alice", PASSWORD, public_key(), None).session_token
    with pytest.raises(AccessDeniedError):
        server.create_user(server.authenticate(token), "x", ("access",), {})
    server.update_user(admin, "alice", set_roles=("access", "editor"))
    server.create_user(server.authenticate(token), "x", ("access",), {})


def test_deleting_a_user_ends_their_sessions(server: AuthServer, admin: Caller) -> None:
    signed_up(server, admin, "alice")
    token = server.login("alice", PASSWORD, public_key(), None).session_token
    server.delete_resource(admin, "user", "alice")
    with pytest.raises(SessionExpiredError):
        server.authenticate(token)


def test_failed_logins_are_rate_limited_per_user(server: AuthServer, admin: Caller, clock: Clock) -> None:
    signed_up(server, admin, "alice")
    signed_up(server, admin, "bob")
    for _ in range(MAX_LOGIN_FAILURES):
        with pytest.raises(AuthenticationError, match="invalid username or password"):
            server.login("alice", "wrong password", public_key(), None)
    with pytest.raises(RateLimitedError) as limited:
        server.login("alice", PASSWORD, public_key(), None)
    assert limited.value.retry_after > 0
    server.login("bob", PASSWORD, public_key(), None)  # other users are unaffected
    clock.advance(timedelta(minutes=11))
    server.login("alice", PASSWORD, public_key(), None)
    events = server.search_events(
        admin, since=None, until=None, event_types=["user.login"], user="alice", limit=100, after_id=None
    )
    assert [e["success"] for e in events].count(False) == MAX_LOGIN_FAILURES + 1
    assert events[-1]["success"] is True


def test_unknown_user_and_user_without_password_fail_alike(server: AuthServer, admin: Caller) -> None:
    server.create_user(admin, "pending", ("access",), {})
    for user in ("pending", "ghost"):
        with pytest.raises(AuthenticationError, match=r"^invalid username or password$"):
            server.login(user, PASSWORD, public_key(), None)


def test_invite_is_single_use_even_under_concurrency(server: AuthServer, admin: Caller) -> None:
    _, invite = server.create_user(admin, "alice", ("access",), {})
    outcomes: list[str] = []
    barrier = threading.Barrier(8)

    def attempt() -> None:
        barrier.wait()
        try:
            server.signup(invite, PASSWORD)
            outcomes.append("ok")
        except AuthenticationError:
            outcomes.append("refused")

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["ok"] + ["refused"] * 7


def test_invite_expires(server: AuthServer, admin: Caller, clock: Clock) -> None:
    _, invite = server.create_user(admin, "alice", ("access",), {})
    clock.advance(INVITE_TTL + timedelta(seconds=1))
    with pytest.raises(AuthenticationError, match="invalid or expired signup token"):
        server.signup(invite, PASSWORD)
    with pytest.raises(ValidationError, match="at least 12"):
        server.signup(server.reset_user(admin, "alice"), "short")


def test_reset_user_revokes_password_and_sessions(server: AuthServer, admin: Caller) -> None:
    signed_up(server, admin, "alice")
    token = server.login("alice", PASSWORD, public_key(), None).session_token
    invite = server.reset_user(admin, "alice")
    with pytest.raises(SessionExpiredError):
        server.authenticate(token)
    with pytest.raises(AuthenticationError):
        server.login("alice", PASSWORD, public_key(), None)
    server.signup(invite, PASSWORD + "!")
    server.login("alice", PASSWORD + "!", public_key(), None)


def test_admin_identity_rotation_revokes_the_old_one(server: AuthServer) -> None:
    first = server.issue_admin_identity("host-a")
    second = server.issue_admin_identity("host-a", replaces=first)
    with pytest.raises(SessionExpiredError):
        server.authenticate(first)
    assert server.authenticate(second).kind == "admin"


def test_auth_servers_on_hosts_of_one_name_keep_each_others_admin_identity(backend: Backend, clock: Clock) -> None:
    first, second = make_server(backend, clock), make_server(backend, clock)
    first_token = first.issue_admin_identity("same-host")
    second_token = second.issue_admin_identity("same-host")
    assert first.authenticate(first_token).kind == "admin"
    # The second server restarts: only its own previous token goes.
    renewed = second.issue_admin_identity("same-host", replaces=second_token)
    assert first.authenticate(first_token).kind == "admin"
    assert second.authenticate(renewed).kind == "admin"
    with pytest.raises(SessionExpiredError):
        second.authenticate(second_token)


def test_admin_identity_never_revokes_a_non_admin_session(server: AuthServer, admin: Caller) -> None:
    signed_up(server, admin, "alice")
    alice = server.login("alice", PASSWORD, public_key(), None).session_token
    server.issue_admin_identity("host-a", replaces=alice)
    assert server.authenticate(alice).name == "alice"


def test_cert_authorities_are_served_without_private_keys(server: AuthServer, admin: Caller) -> None:
    listed = server.list_resources(admin, "cert_authorities")
    assert [doc["metadata"]["name"] for doc in listed] == ["user", "host"]
    assert server.get_resource(admin, "ca", "host") == listed[1]
    assert listed[1]["spec"]["active_keys"]["ssh"][0]["public_key"] == server.host_ca.ssh_public_key()
    assert "PRIVATE" not in repr(listed)
    with pytest.raises(NotFoundError):
        server.get_resource(admin, "cert_authority", "db")
    with pytest.raises(ValidationError, match="cannot be deleted"):
        server.delete_resource(admin, "cert_authority", "user")


def test_bot_join_is_single_use_and_marks_the_identity(server: AuthServer, admin: Caller, clock: Clock) -> None:
    _, token, _ = server.create_bot(admin, "robot", ("access",), {"logins": ["robot"]}, None)
    result = server.bot_join(token, public_key(), None)
    identity = verify_ssh_user_cert(result.ssh_cert, [server.user_ca.ssh_public_key()], clock.now)
    assert identity.bot_name == "robot" and identity.is_bot
    assert identity.username == "bot-robot"
    caller = server.authenticate(result.session_token)
    assert caller.kind == "bot" and caller.bot_name == "robot"
    with pytest.raises(AuthenticationError, match="invalid or expired bot join token"):
        server.bot_join(token, public_key(), None)
    server.delete_bot(admin, "robot")
    with pytest.raises(SessionExpiredError):
        server.authenticate(result.session_token)


@pytest.mark.parametrize(
    ("operation", "verb", "resource"),
    [
        (lambda s, c: s.create_user(c, "x", ("access",), {}), "create", "user"),
        (lambda s, c: s.update_user(c, "x", set_roles=("access",)), "update", "user"),
        (lambda s, c: s.reset_user(c, "x"), "update", "user"),
        (lambda s, c: s.delete_resource(c, "user", "x"), "delete", "user"),
        (lambda s, c: s.list_resources(c, "roles"), "list", "role"),
        (lambda s, c: s.get_resource(c, "role", "access"), "read", "role"),
        (lambda s, c: s.delete_resource(c, "role", "access"), "delete", "role"),
        (lambda s, c: s.create_bot(c, "b", ("access",), {}, None), "create", "bot"),
        (lambda s, c: s.create_join_token(c, "node", None), "create", "token"),
        (lambda s, c: s.list_tokens(c), "list", "token"),
        (
            lambda s, c: s.search_events(c, since=None, until=None, event_types=[], user=None, limit=10, after_id=None),
            "list",
            "event",
        ),
        (
            lambda s, c: s.put_resource(
                c,
                {"kind": "role", "version": "v7", "metadata": {"name": "r"}, "spec": {}},
                force=False,
            ),
            "create",
            "role",
        ),
    ],
)
def test_every_operation_checks_permissions(
    server: AuthServer, admin: Caller, operation: object, verb: str, resource: str
) -> None:
    signed_up(server, admin, "plain")
    caller = server.authenticate(server.login("plain", PASSWORD, public_key(), None).session_token)
    with pytest.raises(AccessDeniedError, match=f'missing permission "{verb}" on "{resource}"'):
        operation(server, caller)  # type: ignore[operator]


def test_put_resource_create_update_and_singleton(server: AuthServer, admin: Caller) -> None:
    role = {"kind": "role", "version": "v7", "metadata": {"name": "r"}, "spec": {"allow": {"logins": ["x"]}}}
    assert server.put_resource(admin, role, force=False)[1] == "created"
    assert server.put_resource(admin, role, force=False)[1] == "unchanged"
    role["spec"]["allow"]["logins"] = ["y"]
    with pytest.raises(AlreadyExistsError, match=r'^role "r" already exists$'):
        server.put_resource(admin, role, force=False)
    assert server.put_resource(admin, role, force=True)[1] == "updated"
    cap = server.get_resource(admin, "cap", "ignored")
    cap["spec"]["device_trust"] = {"mode": "required", "auto_enroll": True}
    server.put_resource(admin, cap, force=False)
    assert server.ping()["auth"]["device_trust"] == {
        "mode": "required",
        "auto_enroll": True,
        "session_proof": "per_session",
        "session_proof_ttl": "1m",
    }
    with pytest.raises(ValidationError):
        server.delete_resource(admin, "cap", "cluster-auth-preference")
    with pytest.raises(NotFoundError):
        server.delete_resource(admin, "role", "absent")


def test_users_need_existing_roles(server: AuthServer, admin: Caller) -> None:
    with pytest.raises(NotFoundError, match='role "nope" not found'):
        server.create_user(admin, "x", ("nope",), {})
    with pytest.raises(ValidationError, match="at least one role"):
        server.create_user(admin, "x", (), {})


def test_join_tokens_are_stored_hashed(server: AuthServer, admin: Caller, backend: Backend) -> None:
    token, _ = server.create_join_token(admin, "node", None)
    with backend.begin() as store:
        stored = store.tokens.list(server.clock())
    assert stored and all(token not in repr(record) for record in stored)
    listed = server.list_tokens(admin)
    server.delete_token(admin, listed[0]["id"])
    assert server.list_tokens(admin) == []
    with pytest.raises(ValidationError, match=r"^join token type: expected one of node, db, kube, mdm"):
        server.create_join_token(admin, "spaceship", None)


def test_domain_errors_name_no_cli_flags(server: AuthServer, admin: Caller) -> None:
    """The CLIs add the flag the user typed; the API and the auth server speak of values, not flags."""
    signed_up(server, admin, "bob")
    role = {"kind": "role", "version": "v7", "metadata": {"name": "r"}, "spec": {"allow": {"logins": ["x"]}}}
    server.put_resource(admin, role, force=False)
    device = resource_to_dict(server.devices.add(admin, "linux", "FLAGLESS-1")[0])
    refusals: list[Callable[[], object]] = [
        lambda: server.login("bob", PASSWORD, public_key(), timedelta(seconds=5)),
        lambda: server.create_user(admin, "x", (), {}),
        lambda: server.update_user(admin, "bob", set_roles=()),
        lambda: server.create_join_token(admin, "spaceship", None),
        lambda: server.create_join_token(admin, "node", timedelta(days=8)),
        lambda: server.create_join_token(admin, "node", timedelta(seconds=-1)),
        lambda: server.create_bot(admin, "b", ("access",), {}, timedelta(days=8)),
        lambda: server.put_resource(admin, {**role, "spec": {"allow": {"logins": ["y"]}}}, force=False),
        lambda: server.put_resource(admin, device, force=False),
    ]
    for refuse in refusals:
        with pytest.raises((ValidationError, AlreadyExistsError)) as caught:
            refuse()
        assert "--" not in str(caught.value), caught.value
