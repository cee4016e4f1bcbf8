"""The lock resource: targets, expiry, which locks are in force, parsing and round trips."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from devicetrust.errors import ValidationError
from devicetrust.types import (
    LOCK_TARGET_KINDS,
    FieldError,
    Lock,
    LockTarget,
    Metadata,
    dump_yaml,
    load_resources,
    locks_in_force,
    normalize_kind,
    parse_resource,
    resource_to_dict,
)
from devicetrust.types.lock import MAX_LOCK_MESSAGE_CHARS

DEVICE_ID = "5a2b3c4d-1111-2222-3333-444455556666"
T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def lock_doc(target: Any = None, **spec: Any) -> dict[str, Any]:
    return {
        "kind": "lock",
        "version": "v2",
        "metadata": {"name": "l1"},
        "spec": {"target": {"user": "alice"} if target is None else target, **spec},
    }


def field_error(factory: Any, /, *args: Any, **kwargs: Any) -> FieldError:
    with pytest.raises(FieldError) as info:
        factory(*args, **kwargs)
    return info.value


def parse_error(doc: Any) -> str:
    with pytest.raises(ValidationError) as info:
        parse_resource(doc)
    return str(info.value)


def lock(name: str, kind: str, value: str, expires: datetime | None = None) -> Lock:
    return Lock(name=name, target=LockTarget(kind, value), expires=expires)


# Targets.


def test_target_kinds() -> None:
    assert LOCK_TARGET_KINDS == ("user", "role", "device", "login", "node")


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        ("user", "alice"),
        ("user", "alice@example.com"),
        ("role", "access"),
        ("device", DEVICE_ID),
        ("login", "root"),
        ("login", "adm-alice$"),
        ("node", "node-1.example.com"),
    ],
)
def test_good_targets(kind: str, value: str) -> None:
    target = LockTarget(kind, value)

    assert (target.kind, target.value) == (kind, value)
    assert str(target) == f"{kind} {value}"


def test_device_target_is_stored_lower_case() -> None:
    assert LockTarget("device", DEVICE_ID.upper()).value == DEVICE_ID


@pytest.mark.parametrize(
    ("kind", "value", "field"),
    [
        ("bot", "ci", "kind"),
        ("User", "alice", "kind"),
        ("", "alice", "kind"),
        ("user", "", "user"),
        ("user", "al ice", "user"),
        ("user", None, "user"),
        ("role", "a/b", "role"),
        ("device", "C02XJ0ABHX87", "device"),
        ("login", "ro ot", "login"),
        ("login", "root\n", "login"),
        ("login", "x" * 254, "login"),
        ("node", "..", "node"),
    ],
)
def test_bad_targets(kind: Any, value: Any, field: str) -> None:
    assert field_error(LockTarget, kind, value).field == field


# Locks.


def test_lock_defaults_and_metadata() -> None:
    value = Lock(name="l1", target=LockTarget("user", "alice"))

    assert value.kind == "lock"
    assert value.version == "v2"
    assert (value.message, value.expires, value.created_by, value.created) == ("", None, "", None)
    assert value.metadata == Metadata(name="l1")


def test_times_are_normalized_to_utc() -> None:
    value = Lock(
        name="l1",
        target=LockTarget("user", "alice"),
        expires="2026-11-26T13:00:00+01:00",  # type: ignore[arg-type]
        created=T0.astimezone(timezone(timedelta(hours=-4))),
    )

    assert value.expires == value.created == T0
    assert value.expires is not None and value.expires.tzinfo is UTC


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"name": "a b"}, "metadata.name"),
        ({"name": ""}, "metadata.name"),
        ({"target": {"user": "alice"}}, "spec.target"),
        ({"message": "two\nlines"}, "spec.message"),
        ({"message": "x" * (MAX_LOCK_MESSAGE_CHARS + 1)}, "spec.message"),
        ({"message": 3}, "spec.message"),
        ({"expires": "2026-11-26T12:00:00"}, "spec.expires"),
        ({"expires": "tomorrow"}, "spec.expires"),
        ({"created_by": "a b"}, "spec.created_by"),
        ({"created": 0}, "spec.created"),
    ],
)
def test_bad_locks(changes: dict[str, Any], field: str) -> None:
    base = Lock(name="l1", target=LockTarget("user", "alice"))

    assert field_error(dataclasses.replace, base, **changes).field == field


def test_longest_message_is_accepted() -> None:
    message = "x" * MAX_LOCK_MESSAGE_CHARS

    assert Lock(name="l1", target=LockTarget("user", "alice"), message=message).message == message


# Activity.


def test_lock_without_expiry_is_always_active() -> None:
    value = lock("l", "user", "alice")

    assert value.is_active(T0)
    assert value.is_active(datetime.max.replace(tzinfo=UTC))


def test_lock_expires_at_its_expiry_time() -> None:
    value = lock("l", "user", "alice", expires=T0)

    assert value.is_active(T0 - timedelta(microseconds=1))
    assert not value.is_active(T0)
    assert not value.is_active(T0 + timedelta(days=1))


def test_activity_compares_instants_across_zones() -> None:
    value = lock("l", "user", "alice", expires=T0)

    assert value.is_active(T0.astimezone(timezone(timedelta(hours=9))) - timedelta(seconds=1))
    assert not value.is_active(T0.astimezone(timezone(timedelta(hours=9))))


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        lock("l", "user", "alice").is_active(datetime(2026, 1, 1))


# locks_in_force.


LOCKS = (
    lock("user-alice", "user", "alice"),
    lock("user-bob", "user", "bob"),
    lock("role-access", "role", "access"),
    lock("role-editor", "role", "editor"),
    lock("device", "device", DEVICE_ID),
    lock("login-root", "login", "root"),
    lock("node-1", "node", "node-1"),
    lock("expired-alice", "user", "alice", expires=T0),
    lock("future-alice", "user", "alice", expires=T0 + timedelta(hours=1)),
)


def names(locks: tuple[Lock, ...]) -> list[str]:
    return [value.name for value in locks]


def test_locks_on_the_user_and_roles_only() -> None:
    found = locks_in_force(LOCKS, T0, user="alice", roles=["access", "auditor"])

    assert names(found) == ["user-alice", "role-access", "future-alice"]


def test_every_target_kind_matches() -> None:
    found = locks_in_force(
        LOCKS, T0, user="bob", roles=("editor",), device_id=DEVICE_ID.upper(), login="root", node="node-1"
    )

    assert names(found) == ["user-bob", "role-editor", "device", "login-root", "node-1"]


def test_expired_lock_is_not_in_force() -> None:
    before = locks_in_force(LOCKS, T0 - timedelta(seconds=1), user="alice", roles=())
    after = locks_in_force(LOCKS, T0 + timedelta(hours=2), user="alice", roles=())

    assert names(before) == ["user-alice", "expired-alice", "future-alice"]
    assert names(after) == ["user-alice"]


def test_nothing_in_force_for_an_unlocked_identity() -> None:
    assert locks_in_force(LOCKS, T0, user="carol", roles=("auditor",), device_id=None, login="ubuntu") == ()


def test_names_are_matched_exactly() -> None:
    assert locks_in_force(LOCKS, T0, user="Alice", roles=("Access", "access-2"), node="node-10") == ()


def test_device_lock_needs_a_device() -> None:
    assert names(locks_in_force(LOCKS, T0, user="carol", roles=(), device_id=DEVICE_ID)) == ["device"]
    assert locks_in_force(LOCKS, T0, user="carol", roles=()) == ()


def test_locks_in_force_accepts_any_iterable() -> None:
    found = locks_in_force(iter(LOCKS), T0, user="alice", roles=[])

    assert names(found) == ["user-alice", "future-alice"]


# Parsing.


def test_parse_full_document() -> None:
    doc = lock_doc(
        {"device": DEVICE_ID},
        message="stolen laptop",
        expires="2026-11-26T12:00:00Z",
        created_by="admin",
        created="2026-11-25T12:00:00Z",
    )

    assert parse_resource(doc) == Lock(
        name="l1",
        target=LockTarget("device", DEVICE_ID),
        message="stolen laptop",
        expires=T0,
        created_by="admin",
        created=T0 - timedelta(days=1),
    )


def test_parse_yaml_with_unquoted_timestamp() -> None:
    text = (
        "kind: lock\nversion: v2\nmetadata: {name: l1}\n"
        "spec:\n  target: {login: root}\n  expires: 2026-11-26T12:00:00Z\n"
    )

    assert load_resources(text) == (Lock(name="l1", target=LockTarget("login", "root"), expires=T0),)


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ({}, "spec.target: a lock needs exactly one target, one of: user, role, device, login, node"),
        ({"user": "alice", "role": "access"}, "spec.target: a lock has exactly one target, got user and role"),
        (
            {"node": "n", "device": DEVICE_ID, "login": "root"},
            "spec.target: a lock has exactly one target, got device and login and node",
        ),
        ({"bot": "ci"}, 'unknown field "spec.target.bot"'),
        ({"users": "alice"}, 'unknown field "spec.target.users" (did you mean "user"?)'),
        ("alice", "spec.target: expected a mapping, got a string"),
        ({"user": None}, "spec.target.user: expected a string, got null"),
        ({"user": ["alice"]}, "spec.target.user: expected a string, got a list"),
        ({"device": "laptop"}, 'spec.target.device: invalid device id "laptop": expected a UUID'),
    ],
)
def test_bad_targets_in_documents(target: Any, message: str) -> None:
    assert parse_error(lock_doc(target)) == f'lock "l1": {message}'


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"spec": {}}, "spec.target: required field is missing"),
        ({"spec": None}, "spec.target: required field is missing"),
        ({"spec": {"target": {"user": "a"}, "reason": "x"}}, 'unknown field "spec.reason"'),
        ({"spec": {"target": {"user": "a"}, "expiry": "x"}}, 'unknown field "spec.expiry" (did you mean "expires"?)'),
        ({"metadata": {"name": "l1", "labels": {}}}, 'unknown field "metadata.labels"'),
        ({"version": "v1"}, 'version: unsupported version "v1" (supported: v2)'),
        ({"spec": {"target": {"user": "a"}, "expires": "soon"}}, "spec.expires: expected an RFC 3339 timestamp"),
        ({"spec": {"target": {"user": "a"}, "message": "a\nb"}}, "spec.message: must be one line"),
    ],
)
def test_bad_lock_documents(doc: dict[str, Any], message: str) -> None:
    full = lock_doc()
    full.update(doc)

    assert parse_error(full).startswith(f'lock "l1": {message}')


def test_missing_name() -> None:
    doc = lock_doc()
    doc["metadata"] = {}

    assert parse_error(doc) == "lock: metadata.name: required field is missing"


@pytest.mark.parametrize("name", ["lock", "locks", "LOCKS"])
def test_normalize_kind(name: str) -> None:
    assert normalize_kind(name) == "lock"


# Documents and round trips.


SAMPLES: tuple[Lock, ...] = (
    lock("minimal", "user", "alice"),
    lock("role", "role", "access", expires=T0),
    lock("device", "device", DEVICE_ID),
    lock("login", "login", "root"),
    lock("node", "node", "node-1"),
    Lock(
        name="full",
        target=LockTarget("device", DEVICE_ID),
        message="stolen laptop: call security",
        expires=T0 + timedelta(microseconds=1),
        created_by="admin@example.com",
        created=T0 - timedelta(days=3),
    ),
)


@pytest.mark.parametrize("value", SAMPLES, ids=lambda value: value.name)
def test_parse_of_to_dict_is_identity(value: Lock) -> None:
    assert parse_resource(resource_to_dict(value)) == value


@pytest.mark.parametrize("value", SAMPLES, ids=lambda value: value.name)
def test_yaml_and_json_round_trips(value: Lock) -> None:
    document = resource_to_dict(value)

    assert load_resources(dump_yaml([document])) == (value,)
    assert parse_resource(json.loads(json.dumps(document))) == value


def test_minimal_lock_document() -> None:
    assert resource_to_dict(SAMPLES[0]) == {
        "kind": "lock",
        "version": "v2",
        "metadata": {"name": "minimal"},
        "spec": {"target": {"user": "alice"}},
    }


def test_full_lock_document() -> None:
    assert resource_to_dict(SAMPLES[-1])["spec"] == {
        "target": {"device": DEVICE_ID},
        "message": "stolen laptop: call security",
        "expires": "2026-11-26T12:00:00.000001Z",
        "created_by": "admin@example.com",
        "created": "2026-11-23T12:00:00Z",
    }
