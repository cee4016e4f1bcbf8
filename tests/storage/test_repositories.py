"""Each repository's reads, writes and errors, on both dialects."""

from __future__ import annotations

from datetime import timedelta

import pytest
from tests.storage.conftest import START, FakeClock

from devicetrust.errors import AlreadyExistsError, ConflictError, NotFoundError
from devicetrust.storage.backend import Backend
from devicetrust.storage.records import ResourceRecord
from devicetrust.storage.repositories import INVALID_PENDING_MESSAGE, INVALID_SESSION_MESSAGE

HOUR = timedelta(hours=1)

# ------------------------------------------------------------------------------------ cluster and CAs


def test_cluster_values(backend: Backend) -> None:
    with backend.begin() as store:
        assert store.cluster.get("name") is None
        assert store.cluster.insert_if_absent("name", "first") == "first"
        assert store.cluster.insert_if_absent("name", "second") == "first"
        store.cluster.set("name", "changed")
        assert store.cluster.get("name") == "changed"


def test_ca_insert_if_absent_returns_the_first_record(backend: Backend) -> None:
    with backend.begin() as store:
        assert store.cas.get("user") is None
        first = store.cas.insert_if_absent("user", {"private_key": "A", "cert": "a"})
        second = store.cas.insert_if_absent("user", {"private_key": "B", "cert": "b"})
        assert first == second == {"private_key": "A", "cert": "a"}
        store.cas.insert_if_absent("host", {"private_key": "H"})
    with backend.begin() as store:
        assert store.cas.get("user") == {"private_key": "A", "cert": "a"}
        assert store.cas.get("host") == {"private_key": "H"}


# ------------------------------------------------------------------------------------------ resources


def test_resource_create_get_list(backend: Backend) -> None:
    with backend.begin() as store:
        created = store.resources.create("role", "editor", {"spec": {"allow": {"logins": ["root"]}}})
        store.resources.create("role", "access", {"spec": {}})
        store.resources.create("lock", "access", {"other": "kind"})
    assert created == ResourceRecord("role", "editor", {"spec": {"allow": {"logins": ["root"]}}}, 1, START, START)
    with backend.begin() as store:
        assert store.resources.get("role", "editor") == created
        assert store.resources.find("role", "nobody") is None
        assert [r.name for r in store.resources.list("role")] == ["access", "editor"]
        assert [r.name for r in store.resources.list("lock")] == ["access"]
        assert store.resources.list("device") == []


def test_resource_errors_name_kind_and_name(backend: Backend) -> None:
    with backend.begin() as store:
        store.resources.create("role", "x", {})
        with pytest.raises(AlreadyExistsError, match=r'^role "x" already exists$'):
            store.resources.create("role", "x", {})
        with pytest.raises(NotFoundError, match=r'^role "y" not found$'):
            store.resources.get("role", "y")
        with pytest.raises(NotFoundError, match=r'^role "y" not found$'):
            store.resources.update("role", "y", {})
        with pytest.raises(NotFoundError, match=r'^role "y" not found$'):
            store.resources.delete("role", "y")
        # the transaction is still usable after refused writes (no aborted PostgreSQL transaction)
        assert store.resources.get("role", "x").revision == 1


def test_resource_update_bumps_revision_and_checks_the_expected_one(backend: Backend, clock: FakeClock) -> None:
    with backend.begin() as store:
        store.resources.create("role", "r", {"v": 1})
    clock.advance(HOUR)
    with backend.begin() as store:
        updated = store.resources.update("role", "r", {"v": 2}, expected_revision=1)
        assert (updated.body, updated.revision, updated.created, updated.updated) == ({"v": 2}, 2, START, START + HOUR)
        with pytest.raises(ConflictError, match=r'role "r" was changed by someone else \(revision 2, expected 1\)'):
            store.resources.update("role", "r", {"v": 3}, expected_revision=1)
        assert store.resources.update("role", "r", {"v": 3}).revision == 3
        assert store.resources.get("role", "r").body == {"v": 3}


def test_resource_upsert_creates_then_replaces(backend: Backend, clock: FakeClock) -> None:
    with backend.begin() as store:
        first = store.resources.upsert("cluster_auth_preference", "cluster-auth-preference", {"mode": "optional"})
    clock.advance(HOUR)
    with backend.begin() as store:
        second = store.resources.upsert("cluster_auth_preference", "cluster-auth-preference", {"mode": "required"})
    assert (first.revision, first.created, first.updated) == (1, START, START)
    assert (second.revision, second.body, second.created, second.updated) == (
        2,
        {"mode": "required"},
        START,
        START + HOUR,
    )


def test_resource_delete(backend: Backend) -> None:
    with backend.begin() as store:
        store.resources.create("role", "r", {})
        store.resources.create("lock", "r", {})
        store.resources.delete("role", "r")
        assert store.resources.find("role", "r") is None
        assert store.resources.find("lock", "r") is not None


def test_resource_bodies_keep_nested_json(backend: Backend) -> None:
    body = {"s": "ü ✓", "n": 1.5, "b": False, "none": None, "list": [1, {"deep": ["x"]}], "empty": {}}
    with backend.begin() as store:
        store.resources.create("device", "d", body)
    with backend.begin() as store:
        assert store.resources.get("device", "d").body == body


# ---------------------------------------------------------------------------------------------- users


def test_user_crud(backend: Backend, clock: FakeClock) -> None:
    with backend.begin() as store:
        created = store.users.create("bob", {"roles": ["access"]}, "$argon2id$hash")
        store.users.create("alice", {"roles": []})
        assert created.password_hash == "$argon2id$hash"
        assert [u.name for u in store.users.list()] == ["alice", "bob"]
        assert store.users.find("carol") is None
        with pytest.raises(AlreadyExistsError, match=r'^user "bob" already exists$'):
            store.users.create("bob", {}, None)
    clock.advance(HOUR)
    with backend.begin() as store:
        updated = store.users.update("bob", {"roles": ["editor"]})
        assert (updated.body, updated.password_hash, updated.updated) == (
            {"roles": ["editor"]},
            "$argon2id$hash",
            START + HOUR,
        )
        assert store.users.set_password_hash("bob", None).password_hash is None
        assert store.users.set_password_hash("bob", "new").password_hash == "new"
        assert store.users.get("bob").body == {"roles": ["editor"]}
        store.users.delete("alice")
        assert [u.name for u in store.users.list()] == ["bob"]


@pytest.mark.parametrize("operation", ["get", "update", "set_password_hash", "delete"])
def test_user_not_found(backend: Backend, operation: str) -> None:
    with backend.begin() as store, pytest.raises(NotFoundError, match=r'^user "ghost" not found$'):
        if operation == "get":
            store.users.get("ghost")
        elif operation == "update":
            store.users.update("ghost", {})
        elif operation == "set_password_hash":
            store.users.set_password_hash("ghost", "h")
        else:
            store.users.delete("ghost")


def test_deleting_a_user_deletes_their_sessions_only(backend: Backend) -> None:
    expires = START + HOUR
    with backend.begin() as store:
        store.users.create("alice", {})
        store.users.create("bob", {})
        store.sessions.create("a1", "alice", "user", {}, expires)
        store.sessions.create("a2", "alice", "user", {}, expires)
        store.sessions.create("b1", "bob", "user", {}, expires)
    with backend.begin() as store:
        store.users.delete("alice")
    with backend.begin() as store:
        for token_hash in ("a1", "a2"):
            with pytest.raises(NotFoundError):
                store.sessions.get_valid(token_hash, START)
        assert store.sessions.get_valid("b1", START).user == "bob"


# ------------------------------------------------------------------------------------------- sessions


def test_sessions_of_each_kind(backend: Backend) -> None:
    expires = START + HOUR
    with backend.begin() as store:
        store.users.create("alice", {})
        user = store.sessions.create("u", "alice", "user", {"k": "v"}, expires)
        bot = store.sessions.create("b", "bot-ci", "bot", {"bot": "ci"}, expires)
        admin = store.sessions.create("a", "admin@host", "admin", {"roles": ["editor"]}, expires)
    with backend.begin() as store:
        assert store.sessions.get_valid("u", START) == user
        assert store.sessions.get_valid("b", START) == bot
        assert store.sessions.get_valid("a", START) == admin
    assert (user.user, user.kind, user.body, user.expires, user.created) == (
        "alice",
        "user",
        {"k": "v"},
        expires,
        START,
    )


def test_session_expiry_and_deletion(backend: Backend) -> None:
    expires = START + HOUR
    with backend.begin() as store:
        store.sessions.create("a1", "admin@h", "admin", {}, expires)
        store.sessions.create("a2", "admin@h", "admin", {}, START + 2 * HOUR)
        store.sessions.create("other", "admin@other", "admin", {}, expires)
    with backend.begin() as store:
        assert store.sessions.get_valid("a1", expires - timedelta(microseconds=1)).token_hash == "a1"
        with pytest.raises(NotFoundError, match=f"^{INVALID_SESSION_MESSAGE}$"):
            store.sessions.get_valid("a1", expires)
        with pytest.raises(NotFoundError, match=f"^{INVALID_SESSION_MESSAGE}$"):
            store.sessions.get_valid("missing", START)
        assert store.sessions.delete("other") is True
        assert store.sessions.delete("other") is False
        assert store.sessions.purge_expired(expires) == 1
        assert store.sessions.delete_for_user("admin@h") == 1
        assert store.sessions.delete_for_user("admin@h") == 0


def test_session_duplicates_and_bad_kinds_are_refused(backend: Backend) -> None:
    with backend.begin() as store:
        store.sessions.create("s", "admin@h", "admin", {}, START + HOUR)
        with pytest.raises(AlreadyExistsError):
            store.sessions.create("s", "admin@h", "admin", {}, START + HOUR)
        with pytest.raises(ValueError, match="session kind"):
            store.sessions.create("t", "x", "root", {}, START + HOUR)


# --------------------------------------------------------------------------------------------- tokens


def test_token_create_list_and_delete(backend: Backend) -> None:
    with backend.begin() as store:
        token = store.tokens.create("h1", "node", "", {"roles": ["node"]}, START + HOUR, single_use=False)
        store.tokens.create("h2", "device_enroll", "dev-1", {}, START + 2 * HOUR, single_use=True)
        store.tokens.create("h3", "device_enroll", "dev-1", {}, START + 2 * HOUR, single_use=True)
        store.tokens.create("old", "signup", "bob", {}, START - HOUR, single_use=True)
        with pytest.raises(AlreadyExistsError):
            store.tokens.create("h1", "node", "", {}, START + HOUR, single_use=False)
    assert (token.kind, token.subject, token.body, token.expires, token.single_use, token.created) == (
        "node",
        "",
        {"roles": ["node"]},
        START + HOUR,
        False,
        START,
    )
    with backend.begin() as store:
        assert {t.token_hash for t in store.tokens.list(START)} == {"h1", "h2", "h3"}
        assert [t.token_hash for t in store.tokens.list(START + HOUR)] == ["h2", "h3"]
        assert store.tokens.delete_by_subject("device_enroll", "dev-1") == 2
        assert store.tokens.delete_by_subject("device_enroll", "dev-1") == 0
        store.tokens.delete("h1")
        with pytest.raises(NotFoundError, match=r"^token not found$"):
            store.tokens.delete("h1")
        assert store.tokens.list(START) == []
        assert store.tokens.purge_expired(START) == 1


def test_single_use_token_is_spent_by_consume(backend: Backend) -> None:
    with backend.begin() as store:
        store.tokens.create("h", "signup", "bob", {"x": 1}, START + HOUR, single_use=True)
    with backend.begin() as store:
        spent = store.tokens.consume("h", "signup", START)
        assert (spent.subject, spent.body, spent.single_use) == ("bob", {"x": 1}, True)
    with backend.begin() as store, pytest.raises(NotFoundError, match=r"^invalid token$"):
        store.tokens.consume("h", "signup", START)


def test_multi_use_token_survives_consume(backend: Backend) -> None:
    with backend.begin() as store:
        store.tokens.create("h", "node", "", {}, START + HOUR, single_use=False)
    for _ in range(3):
        with backend.begin() as store:
            assert store.tokens.consume("h", "node", START).token_hash == "h"


@pytest.mark.parametrize("single_use", [True, False])
@pytest.mark.parametrize(
    ("token_hash", "kind", "offset"),
    [
        ("h", "bot", HOUR),  # expired exactly at `expires`
        ("h", "bot", 2 * HOUR),  # expired
        ("h", "node", timedelta(0)),  # wrong kind
        ("other", "bot", timedelta(0)),  # unknown
    ],
)
def test_invalid_tokens_all_read_the_same(
    backend: Backend, single_use: bool, token_hash: str, kind: str, offset: timedelta
) -> None:
    with backend.begin() as store:
        store.tokens.create("h", "bot", "ci", {}, START + HOUR, single_use=single_use)
    with backend.begin() as store, pytest.raises(NotFoundError, match=r"^invalid token$"):
        store.tokens.consume(token_hash, kind, START + offset)
    # a refused single-use token is not spent by the attempt
    with backend.begin() as store:
        assert store.tokens.consume("h", "bot", START).token_hash == "h"


# ----------------------------------------------------------------------------------- pending ceremonies


def test_pending_ceremony_is_consumed_once(backend: Backend) -> None:
    with backend.begin() as store:
        created = store.pending.create("c1", "enroll", "dev-1", {"nonce": "AAAA"}, START + timedelta(seconds=60))
        with pytest.raises(AlreadyExistsError):
            store.pending.create("c1", "enroll", "dev-1", {}, START + timedelta(seconds=60))
    with backend.begin() as store:
        assert store.pending.consume("c1", "enroll", START) == created
    with backend.begin() as store, pytest.raises(NotFoundError, match=f"^{INVALID_PENDING_MESSAGE}$"):
        store.pending.consume("c1", "enroll", START)


@pytest.mark.parametrize(
    ("kind", "offset"),
    [("enroll", timedelta(seconds=60)), ("enroll", timedelta(hours=1)), ("authenticate", timedelta(0))],
)
def test_expired_or_wrong_kind_ceremonies_are_refused(backend: Backend, kind: str, offset: timedelta) -> None:
    with backend.begin() as store:
        store.pending.create("c1", "enroll", "dev-1", {}, START + timedelta(seconds=60))
    with backend.begin() as store, pytest.raises(NotFoundError, match=f"^{INVALID_PENDING_MESSAGE}$"):
        store.pending.consume("c1", kind, START + offset)


def test_pending_purge(backend: Backend) -> None:
    with backend.begin() as store:
        store.pending.create("old", "enroll", "d", {}, START)
        store.pending.create("new", "enroll", "d", {}, START + HOUR)
        assert store.pending.purge_expired(START) == 1
        assert store.pending.consume("new", "enroll", START).id == "new"


# ---------------------------------------------------------------------------------------- rate limits


def test_rate_limit_fixed_window(backend: Backend) -> None:
    window = timedelta(minutes=1)
    start = START.replace(second=0, microsecond=0)
    with backend.begin() as store:
        assert store.rate_limits.count("login:alice", start, window) == 0
        assert [store.rate_limits.hit("login:alice", start + timedelta(seconds=s), window) for s in (0, 30, 59)] == [
            1,
            2,
            3,
        ]
        assert store.rate_limits.hit("login:bob", start, window) == 1
        assert store.rate_limits.count("login:alice", start + timedelta(seconds=59), window) == 3
        # the next window starts from zero
        assert store.rate_limits.count("login:alice", start + window, window) == 0
        assert store.rate_limits.hit("login:alice", start + window, window) == 1
        # a server whose clock lags into the previous window still counts toward the newer one
        assert store.rate_limits.hit("login:alice", start + timedelta(seconds=59), window) == 2
        store.rate_limits.reset("login:alice")
        assert store.rate_limits.count("login:alice", start + window, window) == 0
        assert store.rate_limits.count("login:bob", start, window) == 1
        assert store.rate_limits.purge_expired(start + window) == 1
        assert store.rate_limits.count("login:bob", start, window) == 0


def test_rate_limit_window_must_be_positive(backend: Backend) -> None:
    with backend.begin() as store, pytest.raises(ValueError, match="window must be positive"):
        store.rate_limits.hit("k", START, timedelta(0))
