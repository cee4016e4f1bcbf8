"""decide() for Kubernetes requests: the same locks, modes and device proof as SSH and databases, with
kubernetes_labels selecting the roles and kubernetes_users / kubernetes_groups what the request may act as."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Unpack

import pytest
from tests.access import harness
from tests.access.harness import DEVICE, NOW, PRESETS, role

from devicetrust.access import (
    KUBE_ACCESS_DENIED,
    TRUSTED_DEVICE_REQUIRED,
    Decision,
    KubeClusterTarget,
    allowed_until,
    decide,
)
from devicetrust.access.decision import PROOF_FOR_ANOTHER_TARGET
from devicetrust.crypto.identity import DeviceExtensions, Identity, SessionProof
from devicetrust.types import Lock, LockTarget, Role

PROD = KubeClusterTarget(name="prod", labels={"env": "prod"}, service_id="svc-1", service_hostname="kube-host")
STAGING = KubeClusterTarget(name="staging", labels={"env": "staging"}, service_id="svc-1", service_hostname="kube-host")
PROOF = harness.proof_for("kube", "prod")


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
    traits = {"kubernetes_groups": groups, "kubernetes_users": users}
    return harness.user_identity(roles, traits, device=device, proof=proof, bot=bot)


def run(
    who: Identity,
    roles: Sequence[Role],
    *,
    target: KubeClusterTarget = PROD,
    **settings: Unpack[harness.Settings],
) -> Decision:
    return harness.decide_at_now(who, roles, kube=target, **settings)


IDENTITIES = harness.mode_matrix_identities(functools.partial(identity, ("dev", "moded")), PROOF)


@harness.mode_matrix
def test_mode_matrix(cluster_mode: str, role_mode: str, who: str, session_proof: str) -> None:
    moded = role("moded", mode=role_mode, allow={"kubernetes_labels": {"env": "prod"}})
    decision = run(IDENTITIES[who], (DEV, moded), cluster_mode=cluster_mode, session_proof=session_proof)
    harness.check_mode(decision, cluster_mode, role_mode, who, session_proof)
    if decision.allowed:
        assert decision.kubernetes_groups == ("developers", "viewers")
        assert decision.kubernetes_users == ("alice@example.com",)
    else:
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


@pytest.mark.parametrize(("target", "stops"), harness.lock_targets("dev", "kube-host"))
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


@pytest.mark.parametrize("proof_minutes", [1, 60 * 24], ids=["as-minted", "minted-too-long"])
def test_an_allow_stands_until_allowed_until_and_no_longer(proof_minutes: int) -> None:
    proof = SessionProof(kind="kube", target="prod", time=NOW, expires=NOW + timedelta(minutes=proof_minutes), id="c-1")
    who = identity(device=DEVICE, proof=proof)
    until = allowed_until(who)
    assert NOW < until <= proof.expires

    def at(now: datetime) -> Decision:
        return decide(
            who, kube=PROD, roles={"dev": DEV}, cluster_mode="required", locks=(), now=now, session_proof="per_session"
        )

    assert at(NOW).allowed and at(until - timedelta(seconds=1)).allowed
    assert not at(until).allowed
    # without a proof (device trust not asked for), only the certificate's validity bounds it
    assert allowed_until(identity()) == identity().not_after
