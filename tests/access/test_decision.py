"""decide(): the session-time access decision, exhaustively."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from devicetrust.access import UNAUTHORIZED_DEVICE, Decision, NodeTarget, decide, lock_reason
from devicetrust.access.decision import (
    NO_SESSION_PROOF,
    NO_TRUSTED_DEVICE,
    PROOF_EXPIRED,
    PROOF_FOR_ANOTHER_TARGET,
    PROOF_NOT_YET_VALID,
)
from devicetrust.crypto.identity import DeviceExtensions, Identity, SessionProof
from devicetrust.types import Lock, LockTarget, Metadata, Role, RoleConditions, RoleOptions, preset_roles

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
DEVICE = DeviceExtensions(
    device_id="6f9a3c2e-1d2b-4c5d-8e9f-0a1b2c3d4e5f", asset_tag="C02XK1ZJJGH5", credential_id="cred-1"
)
PROD = NodeTarget(host_id="0b6c3f1e-7d0e-4a57-9a43-2d0c3e9b8f11", hostname="prod-server", labels={"env": "prod"})
DEV = NodeTarget(host_id="9d1f2c7a-5e3b-4f8a-a1c2-3b4d5e6f7a8b", hostname="dev-server", labels={"env": "dev"})
PRESETS = {role.name: role for role in preset_roles()}
#: A proof taken for PROD 10 s before NOW, admitting sessions for a minute.
PROOF = SessionProof(
    kind="ssh", target=PROD.host_id, time=NOW - timedelta(seconds=10), expires=NOW + timedelta(seconds=50), id="c-1"
)
SESSION_PROOF_SETTINGS = ("per_session", "login")

CLUSTER_MODES = ("off", "optional", "required", "required-for-humans")
ROLE_MODES = ("", "off", "optional", "required", "required-for-humans")
#: Least to most strict, written out independently of the code under test.
STRICTNESS = ("off", "optional", "required-for-humans", "required")


def role(
    name: str,
    *,
    mode: str = "",
    allow: Mapping[str, Any] | None = None,
    deny: Mapping[str, Any] | None = None,
    **options: Any,
) -> Role:
    allow = {"logins": ("{{internal.logins}}",), "node_labels": {"*": "*"}} if allow is None else allow
    return Role(
        metadata=Metadata(name=name),
        options=RoleOptions(device_trust_mode=mode, **options),
        allow=RoleConditions(**allow),
        deny=RoleConditions(**(deny or {})),
    )


def identity(
    roles: Sequence[str] = ("access",),
    *,
    logins: Sequence[str] = ("alice",),
    traits: Mapping[str, Sequence[str]] | None = None,
    device: DeviceExtensions | None = None,
    bot: bool = False,
    proof: SessionProof | None = None,
) -> Identity:
    return Identity(
        username="bot-ci" if bot else "alice",
        roles=tuple(roles),
        logins=tuple(logins),
        traits={"logins": tuple(logins)} if traits is None else {k: tuple(v) for k, v in traits.items()},
        not_before=NOW - timedelta(hours=1),
        not_after=NOW + timedelta(hours=11),
        bot_name="ci" if bot else None,
        device=device,
        session_proof=proof,
    )


def cache(*roles: Role) -> dict[str, Role]:
    return {r.name: r for r in roles}


def run(
    who: Identity,
    roles: Mapping[str, Role],
    *,
    login: str = "alice",
    node: NodeTarget = PROD,
    cluster_mode: str = "optional",
    locks: Sequence[Lock] = (),
    now: datetime = NOW,
    session_proof: str = "per_session",
    authenticated_at: datetime | None = None,
) -> Decision:
    return decide(
        who,
        login=login,
        node=node,
        roles=roles,
        cluster_mode=cluster_mode,
        locks=locks,
        now=now,
        session_proof=session_proof,
        authenticated_at=authenticated_at,
    )


# ------------------------------------------------------------------------------------------------ mode matrix

IDENTITIES = {
    # a fresh session proof for PROD
    "human-with-device": identity(["access", "moded"], device=DEVICE, proof=PROOF),
    # device values from login only: a copied profile looks exactly like this
    "human-login-device": identity(["access", "moded"], device=DEVICE),
    "human-without-device": identity(["access", "moded"]),
    "bot": identity(["access", "moded"], bot=True),
}


@pytest.mark.parametrize("session_proof", SESSION_PROOF_SETTINGS)
@pytest.mark.parametrize("who", list(IDENTITIES))
@pytest.mark.parametrize(("cluster_mode", "role_mode"), list(itertools.product(CLUSTER_MODES, ROLE_MODES)))
def test_mode_matrix(cluster_mode: str, role_mode: str, who: str, session_proof: str) -> None:
    roles = cache(PRESETS["access"], role("moded", mode=role_mode))
    effective = max((m for m in (cluster_mode, role_mode) if m), key=STRICTNESS.index)
    proven = who == "human-with-device" or (who == "human-login-device" and session_proof == "login")
    carries_device = who in ("human-with-device", "human-login-device")
    needs_device = effective == "required" or (effective == "required-for-humans" and who != "bot")

    decision = run(IDENTITIES[who], roles, cluster_mode=cluster_mode, session_proof=session_proof)

    assert decision.mode == effective
    assert decision.device_verified is proven
    assert decision.allowed is (proven or not needs_device)
    assert decision.reason == ("" if decision.allowed else UNAUTHORIZED_DEVICE)
    # Device data goes to audit only when device trust is not off, and where a device is required only when
    # it was proven as the cluster requires (optional mode still names a login-time device).
    assert decision.audit_device is (carries_device and effective != "off" and (proven or effective == "optional"))
    if not decision.allowed:
        expected = NO_TRUSTED_DEVICE if session_proof == "login" else NO_SESSION_PROOF
        assert decision.audit_reason == expected


@pytest.mark.parametrize(
    ("proof", "now", "authenticated_at", "problem"),
    [
        pytest.param(PROOF, NOW, None, None, id="fresh"),
        pytest.param(PROOF, PROOF.expires - timedelta(seconds=1), None, None, id="last-second"),
        pytest.param(PROOF, PROOF.expires, None, PROOF_EXPIRED, id="at-expiry"),
        pytest.param(PROOF, NOW + timedelta(hours=1), None, PROOF_EXPIRED, id="replayed-an-hour-later"),
        # a connection authenticated while the proof was fresh may open channels later (port forwards)
        pytest.param(PROOF, NOW + timedelta(hours=1), NOW, None, id="later-channel-on-a-proven-connection"),
        pytest.param(PROOF, NOW + timedelta(hours=1), NOW + timedelta(minutes=2), PROOF_EXPIRED, id="late-connection"),
        pytest.param(PROOF, PROOF.time - timedelta(minutes=5), None, PROOF_NOT_YET_VALID, id="from-the-future"),
        pytest.param(PROOF, PROOF.time - timedelta(seconds=20), None, None, id="within-clock-skew"),
        pytest.param(
            SessionProof(kind="ssh", target=DEV.host_id, time=PROOF.time, expires=PROOF.expires, id="c-2"),
            NOW,
            None,
            PROOF_FOR_ANOTHER_TARGET,
            id="another-node",
        ),
        pytest.param(
            SessionProof(kind="db", target=PROD.host_id, time=PROOF.time, expires=PROOF.expires, id="c-3"),
            NOW,
            None,
            PROOF_FOR_ANOTHER_TARGET,
            id="same-id-another-kind",
        ),
        pytest.param(
            SessionProof(kind="ssh", target=PROD.host_id, time=PROOF.time, expires=NOW + timedelta(days=1), id="c-4"),
            NOW + timedelta(hours=1),
            None,
            PROOF_EXPIRED,
            id="window-longer-than-the-maximum-is-capped",
        ),
    ],
)
def test_session_proof_freshness_and_binding(
    proof: SessionProof, now: datetime, authenticated_at: datetime | None, problem: str | None
) -> None:
    roles = cache(PRESETS["access"], PRESETS["require-trusted-device"])
    who = identity(["access", "require-trusted-device"], device=DEVICE, proof=proof)
    decision = run(who, roles, now=now, authenticated_at=authenticated_at)
    assert decision.allowed is (problem is None)
    assert decision.device_verified is (problem is None)
    if problem is not None:
        assert (decision.reason, decision.audit_reason) == (UNAUTHORIZED_DEVICE, problem)


def test_an_unknown_session_proof_setting_denies() -> None:
    roles = cache(PRESETS["access"], PRESETS["require-trusted-device"])
    who = identity(["access", "require-trusted-device"], device=DEVICE, proof=PROOF)
    decision = run(who, roles, session_proof="sometimes")
    assert not decision.allowed and decision.reason == UNAUTHORIZED_DEVICE


def test_cluster_mode_unset_means_the_default_optional() -> None:
    decision = run(identity(device=DEVICE, proof=PROOF), cache(PRESETS["access"]), cluster_mode="")
    assert decision.allowed and decision.mode == "optional" and decision.audit_device


def test_a_required_role_that_does_not_match_the_node_requires_nothing_there() -> None:
    roles = cache(PRESETS["access"], role("prod-only", mode="required", allow={"node_labels": {"env": "prod"}}))
    alice = identity(["access", "prod-only"])

    on_dev = run(alice, roles, node=DEV)
    on_prod = run(alice, roles, node=PROD)

    assert on_dev.allowed and on_dev.mode == "optional"
    assert not on_prod.allowed and on_prod.reason == UNAUTHORIZED_DEVICE and on_prod.mode == "required"


def test_required_role_granting_only_labels_still_requires_for_its_node() -> None:
    # The preset require-trusted-device grants every node: with it, every node needs a device.
    roles = cache(PRESETS["access"], PRESETS["require-trusted-device"])
    alice = identity(["access", "require-trusted-device"])
    assert run(alice, roles, node=DEV).reason == UNAUTHORIZED_DEVICE
    proof = SessionProof(kind="ssh", target=DEV.host_id, time=PROOF.time, expires=PROOF.expires, id="c-dev")
    assert run(identity(["access", "require-trusted-device"], device=DEVICE, proof=proof), roles, node=DEV).allowed


@pytest.mark.parametrize("cluster_mode", ["strict", "REQUIRED", "on", " off"])
def test_unknown_cluster_mode_denies(cluster_mode: str) -> None:
    decision = run(identity(device=DEVICE), cache(PRESETS["access"]), cluster_mode=cluster_mode)
    assert not decision.allowed
    assert decision.reason == UNAUTHORIZED_DEVICE
    assert decision.mode == ""
    assert not decision.audit_device


def test_unknown_role_mode_denies() -> None:
    odd = role("odd")
    # Roles validate their mode; a newer auth server could still send one this node does not know.
    object.__setattr__(odd.options, "device_trust_mode", "paranoid")
    decision = run(identity(["odd"], device=DEVICE), cache(odd))
    assert not decision.allowed and decision.reason == UNAUTHORIZED_DEVICE


def test_unknown_mode_on_a_role_not_granting_this_node_is_not_consulted() -> None:
    odd = role("odd", allow={"node_labels": {"env": "other"}, "logins": ("alice",)})
    object.__setattr__(odd.options, "device_trust_mode", "paranoid")
    assert run(identity(["access", "odd"]), cache(PRESETS["access"], odd)).allowed


# ------------------------------------------------------------------------------------------------ logins and RBAC

ACCESS_DENIED = "access denied to alice connecting to prod-server"


def test_login_from_traits_is_allowed() -> None:
    decision = run(identity(logins=["alice", "ubuntu"]), cache(PRESETS["access"]), login="ubuntu")
    assert decision.allowed and decision.reason == ""
    assert [r.name for r in decision.roles] == ["access"]


def test_login_not_among_the_certificate_principals_is_denied() -> None:
    # The role would allow root through the trait, but the certificate was not issued for it.
    who = identity(logins=["alice"], traits={"logins": ["alice", "root"]})
    assert run(who, cache(PRESETS["access"]), login="root").reason == ACCESS_DENIED


def test_login_no_role_allows_is_denied() -> None:
    # A certificate principal the roles no longer grant (traits changed since issue).
    who = identity(logins=["alice", "root"], traits={"logins": ["alice"]})
    decision = run(who, cache(PRESETS["access"]), login="root")
    assert not decision.allowed and decision.reason == ACCESS_DENIED


def test_deny_login_beats_allow() -> None:
    roles = cache(PRESETS["access"], role("no-root", allow={}, deny={"logins": ("root",)}))
    who = identity(["access", "no-root"], logins=["alice", "root"])
    assert run(who, roles, login="root").reason == ACCESS_DENIED
    assert run(who, roles, login="alice").allowed


def test_deny_node_labels_beats_allow() -> None:
    roles = cache(PRESETS["access"], role("no-prod", allow={}, deny={"node_labels": {"env": "prod"}}))
    who = identity(["access", "no-prod"])
    assert run(who, roles, node=PROD).reason == ACCESS_DENIED
    assert run(who, roles, node=DEV).allowed


def test_node_labels_must_match() -> None:
    roles = cache(role("dev-only", allow={"logins": ("alice",), "node_labels": {"env": "dev"}}))
    who = identity(["dev-only"])
    assert run(who, roles, node=PROD).reason == ACCESS_DENIED
    assert run(who, roles, node=DEV).allowed


def test_trait_templates_in_labels_expand_from_the_identity() -> None:
    roles = cache(role("by-team", allow={"logins": ("alice",), "node_labels": {"env": "{{internal.envs}}"}}))
    who = identity(["by-team"], traits={"logins": ["alice"], "envs": ["dev"]})
    assert run(who, roles, node=DEV).allowed
    assert not run(who, roles, node=PROD).allowed


def test_roles_missing_from_the_cache_grant_nothing() -> None:
    assert run(identity(["ghost"]), cache(PRESETS["access"])).reason == ACCESS_DENIED
    # ...and their device requirement does not apply either: they are not there to be read.
    decision = run(identity(["access", "require-trusted-device"]), cache(PRESETS["access"]))
    assert decision.allowed and decision.mode == "optional"


def test_no_roles_at_all() -> None:
    decision = run(identity([]), {})
    assert not decision.allowed and decision.reason == ACCESS_DENIED and decision.roles == ()


def test_a_bot_without_logins_is_denied() -> None:
    assert not run(identity(logins=[], bot=True), cache(PRESETS["access"]), login="alice").allowed


# ------------------------------------------------------------------------------------------------ locks


def lock(kind: str, value: str, message: str = "", expires: datetime | None = None) -> Lock:
    return Lock(name=f"lock-{kind}", target=LockTarget(kind, value), message=message, expires=expires)


@pytest.mark.parametrize(
    "target",
    [
        ("user", "alice"),
        ("role", "access"),
        ("role", "ghost"),  # a role named in the certificate, even if this node does not know it
        ("device", DEVICE.device_id),
        ("login", "alice"),
        ("node", PROD.host_id),
        ("node", PROD.hostname),
    ],
)
def test_locks_of_each_kind_deny(target: tuple[str, str]) -> None:
    who = identity(["access", "ghost"], device=DEVICE)
    decision = run(who, cache(PRESETS["access"]), locks=[lock(*target, message="compromised laptop")])
    assert not decision.allowed
    assert decision.reason == "locked: compromised laptop"


@pytest.mark.parametrize(
    "target",
    [
        ("user", "bob"),
        ("role", "editor"),
        ("device", DEVICE.device_id),  # the session has no verified device: a device lock cannot match it
        ("login", "root"),
        ("node", DEV.host_id),
        ("node", DEV.hostname),
    ],
)
def test_locks_on_something_else_do_not_deny(target: tuple[str, str]) -> None:
    assert run(identity(), cache(PRESETS["access"]), locks=[lock(*target)]).allowed


def test_expired_lock_does_not_deny() -> None:
    expired = lock("user", "alice", expires=NOW - timedelta(seconds=1))
    live = lock("user", "alice", expires=NOW + timedelta(seconds=1))
    assert run(identity(), cache(PRESETS["access"]), locks=[expired]).allowed
    assert not run(identity(), cache(PRESETS["access"]), locks=[live]).allowed


def test_lock_beats_everything_else_and_has_a_default_message() -> None:
    decision = run(identity(["ghost"]), {}, cluster_mode="strict", locks=[lock("user", "alice")])
    assert decision.reason == "locked: user alice is locked"
    assert lock_reason(lock("login", "root", "no root")) == "locked: no root"


def test_bot_lock_by_its_user_name() -> None:
    assert not run(identity(bot=True), cache(PRESETS["access"]), locks=[lock("user", "bot-ci")]).allowed


# ------------------------------------------------------------------------------------------------ options


def test_forwarding_follows_the_granting_roles() -> None:
    fwd = role("fwd", port_forwarding=True, forward_agent=True, allow={"node_labels": {"env": "dev"}})
    roles = cache(PRESETS["access"], fwd)
    who = identity(["access", "fwd"])

    on_dev = run(who, roles, node=DEV)
    on_prod = run(who, roles, node=PROD)

    assert on_dev.port_forwarding and on_dev.forward_agent
    # The forwarding role does not grant prod, so its options do not apply there.
    assert on_prod.allowed and not on_prod.port_forwarding and not on_prod.forward_agent


def test_a_denied_decision_allows_no_forwarding() -> None:
    fwd = role("fwd", port_forwarding=True, forward_agent=True)
    decision = run(identity(["fwd"]), cache(fwd), locks=[lock("user", "alice")])
    assert not decision.port_forwarding and not decision.forward_agent
