"""decide() for Kubernetes requests: the same locks, modes and device proof as SSH and databases, with
kubernetes_labels selecting the roles and kubernetes_users / kubernetes_groups what the request may act as."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from devicetrust.access import KUBE_ACCESS_DENIED, TRUSTED_DEVICE_REQUIRED, Decision, KubeClusterTarget, decide
from devicetrust.access.decision import NO_SESSION_PROOF, NO_TRUSTED_DEVICE, PROOF_FOR_ANOTHER_TARGET
from devicetrust.crypto.identity import DeviceExtensions, Identity, SessionProof
from devicetrust.types import Lock, LockTarget, Metadata, Role, RoleConditions, RoleOptions, preset_roles

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
DEVICE = DeviceExtensions(device_id="6f9a3c2e-1d2b-4c5d-8e9f-0a1b2c3d4e5f", asset_tag="SN-1", credential_id="cred-1")
PROD = KubeClusterTarget(name="prod", labels={"env": "prod"}, service_id="svc-1", service_hostname="kube-host")
STAGING = KubeClusterTarget(name="staging", labels={"env": "staging"}, service_id="svc-1", service_hostname="kube-host")
PRESETS = {role.name: role for role in preset_roles()}
PROOF = SessionProof(
    kind="kube", target="prod", time=NOW - timedelta(seconds=5), expires=NOW + timedelta(seconds=55), id="c-1"
)
CLUSTER_MODES = ("off", "optional", "required", "required-for-humans")
ROLE_MODES = ("", "off", "optional", "required", "required-for-humans")
STRICTNESS = ("off", "optional", "required-for-humans", "required")


def role(name: str, *, mode: str = "", allow: Mapping[str, Any], deny: Mapping[str, Any] | None = None) -> Role:
    return Role(
        metadata=Metadata(name=name),
        options=RoleOptions(device_trust_mode=mode),
        allow=RoleConditions(**allow),
        deny=RoleConditions(**(deny or {})),
    )


DEV = role(
    "dev",
    allow={
        "kubernetes_labels": {"*": "*"},
        "kubernetes_groups": ("{{internal.kubernetes_groups}}", "developers"),
        "kubernetes_users": ("{{internal.kubernetes_users}}",),
    },
)


def identity(
    roles: Sequence[str] = ("dev",),
    *,
    device: DeviceExtensions | None = None,
    proof: SessionProof | None = None,
    bot: bool = False,
    groups: Sequence[str] = ("viewers",),
    users: Sequence[str] = ("alice@example.com",),
) -> Identity:
    return Identity(
        username="bot-ci" if bot else "alice",
        roles=tuple(roles),
        logins=(),
        traits={"kubernetes_groups": tuple(groups), "kubernetes_users": tuple(users)},
        not_before=NOW - timedelta(hours=1),
        not_after=NOW + timedelta(hours=11),
        bot_name="ci" if bot else None,
        device=device,
        session_proof=proof,
    )


def run(
    who: Identity,
    roles: Sequence[Role],
    *,
    target: KubeClusterTarget = PROD,
    cluster_mode: str = "optional",
    locks: Sequence[Lock] = (),
    session_proof: str = "per_session",
) -> Decision:
    return decide(
        who,
        kube=target,
        roles={r.name: r for r in roles},
        cluster_mode=cluster_mode,
        locks=locks,
        now=NOW,
        session_proof=session_proof,
    )


IDENTITIES = {
    "human-with-device": identity(("dev", "moded"), device=DEVICE, proof=PROOF),
    "human-login-device": identity(("dev", "moded"), device=DEVICE),
    "human-without-device": identity(("dev", "moded")),
    "bot": identity(("dev", "moded"), bot=True),
}


@pytest.mark.parametrize("session_proof", ["per_session", "login"])
@pytest.mark.parametrize("who", list(IDENTITIES))
@pytest.mark.parametrize(("cluster_mode", "role_mode"), list(itertools.product(CLUSTER_MODES, ROLE_MODES)))
def test_mode_matrix(cluster_mode: str, role_mode: str, who: str, session_proof: str) -> None:
    moded = role("moded", mode=role_mode, allow={"kubernetes_labels": {"env": "prod"}})
    effective = max((m for m in (cluster_mode, role_mode) if m), key=STRICTNESS.index)
    proven = who == "human-with-device" or (who == "human-login-device" and session_proof == "login")
    needs_device = effective == "required" or (effective == "required-for-humans" and who != "bot")
    decision = run(IDENTITIES[who], (DEV, moded), cluster_mode=cluster_mode, session_proof=session_proof)
    assert decision.mode == effective
    assert decision.device_verified is proven
    assert decision.allowed is (proven or not needs_device)
    if decision.allowed:
        assert decision.kubernetes_groups == ("developers", "viewers")
        assert decision.kubernetes_users == ("alice@example.com",)
    else:
        assert decision.reason == TRUSTED_DEVICE_REQUIRED
        assert decision.audit_reason == (NO_TRUSTED_DEVICE if session_proof == "login" else NO_SESSION_PROOF)
        assert decision.kubernetes_groups == decision.kubernetes_users == ()


def test_users_and_groups_come_from_the_roles_matching_the_cluster_and_the_traits() -> None:
    prod_viewer = role("prod", allow={"kubernetes_labels": {"env": "prod"}, "kubernetes_groups": ("prod-viewers",)})
    everywhere = role(
        "all", allow={"kubernetes_labels": {"*": "*"}, "kubernetes_groups": ("{{internal.kubernetes_groups}}",)}
    )
    who = identity(("prod", "all"), groups=("team-a", "*"))
    prod = run(who, (prod_viewer, everywhere))
    assert prod.allowed and prod.kubernetes_groups == ("prod-viewers", "team-a")  # "*" never becomes a group
    assert prod.kubernetes_users == ()
    staging = run(who, (prod_viewer, everywhere), target=STAGING)
    assert staging.allowed and staging.kubernetes_groups == ("team-a",)


def test_a_role_matching_the_cluster_without_users_or_groups_grants_nothing() -> None:
    bare = role(
        "bare", allow={"kubernetes_labels": {"*": "*"}, "kubernetes_groups": ("{{internal.kubernetes_groups}}",)}
    )
    decision = run(identity(("bare",), groups=()), (bare,))
    assert (decision.allowed, decision.reason) == (False, KUBE_ACCESS_DENIED)


def test_labels_select_the_granting_roles_and_their_modes() -> None:
    prod_only = role(
        "prod", mode="required", allow={"kubernetes_labels": {"env": "prod"}, "kubernetes_groups": ("developers",)}
    )
    who = identity(("prod",))
    assert run(who, (prod_only,), target=STAGING).reason == KUBE_ACCESS_DENIED
    prod = run(who, (prod_only,))
    assert (prod.allowed, prod.reason, prod.mode) == (False, TRUSTED_DEVICE_REQUIRED, "required")


@pytest.mark.parametrize(
    ("deny", "allowed", "groups"),
    [
        ({"kubernetes_labels": {"env": "prod"}}, False, ()),
        ({"kubernetes_groups": ("developers",)}, True, ("viewers",)),
        ({"kubernetes_groups": ("*",)}, True, ()),  # users remain
        ({"kubernetes_groups": ("*",), "kubernetes_users": ("*",)}, False, ()),
    ],
)
def test_deny_beats_allow(deny: Mapping[str, Any], allowed: bool, groups: tuple[str, ...]) -> None:
    denier = role("denier", allow={}, deny=deny)
    decision = run(identity(("dev", "denier")), (DEV, denier))
    assert decision.allowed is allowed
    if allowed:
        assert decision.kubernetes_groups == groups
    else:
        assert decision.reason == KUBE_ACCESS_DENIED


def test_the_require_trusted_device_preset_needs_a_proof_for_this_cluster() -> None:
    roles = (PRESETS["require-trusted-device"],)
    granted = run(identity(("require-trusted-device",), device=DEVICE, proof=PROOF), roles)
    assert granted.allowed and granted.kubernetes_groups == ("developers", "viewers")
    for kind, target in (("kube", "staging"), ("db", "prod"), ("ssh", "prod")):
        other = SessionProof(kind=kind, target=target, time=PROOF.time, expires=PROOF.expires, id="c-2")
        denied = run(identity(("require-trusted-device",), device=DEVICE, proof=other), roles)
        assert (denied.reason, denied.audit_reason) == (TRUSTED_DEVICE_REQUIRED, PROOF_FOR_ANOTHER_TARGET)


@pytest.mark.parametrize(
    ("target", "stops"),
    [
        (LockTarget("user", "alice"), True),
        (LockTarget("role", "dev"), True),
        (LockTarget("device", DEVICE.device_id), True),
        (LockTarget("node", "svc-1"), True),  # the kube service, by host id
        (LockTarget("node", "kube-host"), True),  # ... or host name
        (LockTarget("node", "another-host"), False),
        (LockTarget("login", "alice"), False),  # logins are SSH's
    ],
)
def test_locks(target: LockTarget, stops: bool) -> None:
    lock = Lock(name="l1", target=target, message="incident 42")
    decision = run(identity(device=DEVICE, proof=PROOF), (DEV,), locks=(lock,))
    assert decision.allowed is not stops
    if stops:
        assert decision.reason == "locked: incident 42"


def test_a_request_names_exactly_one_resource() -> None:
    from devicetrust.access import NodeTarget

    with pytest.raises(ValueError, match="exactly one"):
        node = NodeTarget("h", "h", {})
        decide(identity(), node=node, kube=PROD, roles={}, cluster_mode="off", locks=(), now=NOW)
    with pytest.raises(ValueError, match="exactly one"):
        decide(identity(), roles={}, cluster_mode="off", locks=(), now=NOW)
