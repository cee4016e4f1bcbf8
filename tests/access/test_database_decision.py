"""decide() for database sessions: the same locks, modes and device proof as SSH, with db_labels, db_users and
db_names in place of node labels and logins."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any, Unpack

import pytest
from tests.access import harness
from tests.access.harness import DEVICE, NOW, PRESETS, role

from devicetrust.access import (
    DB_ACCESS_DENIED,
    TRUSTED_DEVICE_REQUIRED,
    DatabaseSession,
    DatabaseTarget,
    Decision,
    decide,
)
from devicetrust.access.decision import PROOF_FOR_ANOTHER_TARGET
from devicetrust.crypto.identity import DeviceExtensions, Identity, SessionProof
from devicetrust.types import Lock, LockTarget, Role

PG_PROD = DatabaseTarget(
    name="pg-prod", protocol="postgres", labels={"env": "prod"}, service_id="svc-1", service_hostname="db-host"
)
PG_DEV = DatabaseTarget(
    name="pg-dev", protocol="postgres", labels={"env": "dev"}, service_id="svc-1", service_hostname="db-host"
)
PROOF = harness.proof_for("db", "pg-prod")

DBA = role("dba", allow={"db_labels": {"*": "*"}, "db_users": ("{{internal.db_users}}",), "db_names": ("app",)})


def identity(
    roles: Sequence[str] = ("dba",),
    *,
    device: DeviceExtensions | None = None,
    proof: SessionProof | None = None,
    bot: bool = False,
    db_users: Sequence[str] = ("alice",),
) -> Identity:
    return harness.user_identity(roles, {"db_users": db_users}, device=device, proof=proof, bot=bot)


def run(
    who: Identity,
    roles: Sequence[Role],
    *,
    target: DatabaseTarget = PG_PROD,
    db_user: str = "alice",
    db_name: str = "app",
    **settings: Unpack[harness.Settings],
) -> Decision:
    return harness.decide_at_now(who, roles, database=DatabaseSession(target, db_user, db_name), **settings)


IDENTITIES = harness.mode_matrix_identities(functools.partial(identity, ("dba", "moded")), PROOF)


@harness.mode_matrix
def test_mode_matrix(cluster_mode: str, role_mode: str, who: str, session_proof: str) -> None:
    moded = role("moded", mode=role_mode, allow={"db_labels": {"env": "prod"}})
    decision = run(IDENTITIES[who], (DBA, moded), cluster_mode=cluster_mode, session_proof=session_proof)
    harness.check_mode(decision, cluster_mode, role_mode, who, session_proof)


@pytest.mark.parametrize(
    ("db_user", "db_name", "allowed"),
    [
        ("alice", "app", True),
        ("postgres", "app", False),  # a user the traits do not name
        ("alice", "postgres", False),  # a database name the role does not list
        ("", "app", False),
        ("alice", "", False),
    ],
)
def test_db_users_and_db_names_come_from_the_roles(db_user: str, db_name: str, allowed: bool) -> None:
    decision = run(identity(), (DBA,), db_user=db_user, db_name=db_name)
    assert decision.allowed is allowed
    if not allowed:
        assert decision.reason == DB_ACCESS_DENIED


def test_one_role_must_grant_both_the_user_and_the_name() -> None:
    users_only = role("users", allow={"db_labels": {"*": "*"}, "db_users": ("alice",)})
    names_only = role("names", allow={"db_labels": {"*": "*"}, "db_names": ("app",)})
    who = identity(("users", "names"))
    assert run(who, (users_only, names_only)).reason == DB_ACCESS_DENIED


def test_labels_select_the_granting_roles_and_their_modes() -> None:
    prod_only = role(
        "prod", mode="required", allow={"db_labels": {"env": "prod"}, "db_users": ("*",), "db_names": ("*",)}
    )
    who = identity(("prod",))
    assert run(who, (prod_only,), target=PG_DEV).reason == DB_ACCESS_DENIED
    prod = run(who, (prod_only,))
    assert (prod.allowed, prod.reason, prod.mode) == (False, TRUSTED_DEVICE_REQUIRED, "required")


@pytest.mark.parametrize(
    "deny",
    [{"db_users": ("alice",)}, {"db_names": ("app",)}, {"db_labels": {"env": "prod"}}, {"db_users": ("*",)}],
)
def test_deny_beats_allow(deny: Mapping[str, Any]) -> None:
    denier = role("denier", allow={}, deny=deny)
    assert run(identity(("dba", "denier")), (DBA, denier)).reason == DB_ACCESS_DENIED


def test_the_require_trusted_device_preset_grants_any_user_and_name_with_a_proof_for_this_database() -> None:
    roles = (PRESETS["require-trusted-device"],)
    who = identity(("require-trusted-device",), device=DEVICE, proof=PROOF)
    assert run(who, roles, db_user="postgres", db_name="anything").allowed
    other = SessionProof(kind="db", target="pg-dev", time=PROOF.time, expires=PROOF.expires, id="c-2")
    denied = run(identity(("require-trusted-device",), device=DEVICE, proof=other), roles)
    assert (denied.reason, denied.audit_reason) == (TRUSTED_DEVICE_REQUIRED, PROOF_FOR_ANOTHER_TARGET)
    # a proof for an SSH node of the same name is for another target too
    ssh = SessionProof(kind="ssh", target="pg-prod", time=PROOF.time, expires=PROOF.expires, id="c-3")
    assert run(identity(("require-trusted-device",), device=DEVICE, proof=ssh), roles).audit_reason == (
        PROOF_FOR_ANOTHER_TARGET
    )


@pytest.mark.parametrize(("target", "stops"), harness.lock_targets("dba", "db-host"))
def test_locks(target: LockTarget, stops: bool) -> None:
    lock = Lock(name="l1", target=target, message="incident 42")
    decision = run(identity(device=DEVICE, proof=PROOF), (DBA,), locks=(lock,))
    assert decision.allowed is not stops
    if stops:
        assert decision.reason == "locked: incident 42"


def test_a_request_names_exactly_one_resource() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        decide(identity(), roles={}, cluster_mode="off", locks=(), now=NOW)
