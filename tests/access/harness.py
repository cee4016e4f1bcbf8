"""What the database and Kubernetes decision tests share: the frozen clock, one device, roles and identities built
the same way, decide() at that clock, the mode matrix and the locks both services honour."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypedDict, TypeVar

import pytest

from devicetrust.access import TRUSTED_DEVICE_REQUIRED, DatabaseSession, Decision, KubeClusterTarget, decide
from devicetrust.access.decision import NO_SESSION_PROOF, NO_TRUSTED_DEVICE
from devicetrust.crypto.identity import DeviceExtensions, Identity, SessionProof
from devicetrust.types import Lock, LockTarget, Metadata, Role, RoleConditions, RoleOptions, preset_roles

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
DEVICE = DeviceExtensions(device_id="6f9a3c2e-1d2b-4c5d-8e9f-0a1b2c3d4e5f", asset_tag="SN-1", credential_id="cred-1")
PRESETS = {role.name: role for role in preset_roles()}
CLUSTER_MODES = ("off", "optional", "required", "required-for-humans")
ROLE_MODES = ("", "off", "optional", "required", "required-for-humans")
#: Least to most strict, written out independently of the code under test.
STRICTNESS = ("off", "optional", "required-for-humans", "required")
#: The callers of the mode matrix (mode_matrix_identities).
CALLERS = ["human-with-device", "human-login-device", "human-without-device", "bot"]

Test = TypeVar("Test", bound=Callable[..., None])


def proof_for(kind: str, target: str) -> SessionProof:
    """A session proof for ``target`` taken 5 s before NOW, admitting sessions for a minute."""
    return SessionProof(
        kind=kind, target=target, time=NOW - timedelta(seconds=5), expires=NOW + timedelta(seconds=55), id="c-1"
    )


def role(name: str, *, mode: str = "", allow: Mapping[str, Any], deny: Mapping[str, Any] | None = None) -> Role:
    return Role(
        metadata=Metadata(name=name),
        options=RoleOptions(device_trust_mode=mode),
        allow=RoleConditions(**allow),
        deny=RoleConditions(**(deny or {})),
    )


def user_identity(
    roles: Sequence[str],
    traits: Mapping[str, Sequence[str]],
    *,
    device: DeviceExtensions | None = None,
    proof: SessionProof | None = None,
    bot: bool = False,
) -> Identity:
    """Alice (or the bot "ci") without logins, certified from an hour before NOW for twelve hours."""
    return Identity(
        username="bot-ci" if bot else "alice",
        roles=tuple(roles),
        logins=(),
        traits={name: tuple(values) for name, values in traits.items()},
        not_before=NOW - timedelta(hours=1),
        not_after=NOW + timedelta(hours=11),
        bot_name="ci" if bot else None,
        device=device,
        session_proof=proof,
    )


class Settings(TypedDict, total=False):
    """The cluster's settings a decision runs under (decide_at_now's defaults otherwise)."""

    cluster_mode: str
    locks: Sequence[Lock]
    session_proof: str


def decide_at_now(
    who: Identity,
    roles: Sequence[Role],
    *,
    database: DatabaseSession | None = None,
    kube: KubeClusterTarget | None = None,
    cluster_mode: str = "optional",
    locks: Sequence[Lock] = (),
    session_proof: str = "per_session",
) -> Decision:
    """decide() at NOW with ``roles`` as the service's role cache."""
    return decide(
        who,
        database=database,
        kube=kube,
        roles={r.name: r for r in roles},
        cluster_mode=cluster_mode,
        locks=locks,
        now=NOW,
        session_proof=session_proof,
    )


# ------------------------------------------------------------------------------------------------ mode matrix


def mode_matrix_identities(make: Callable[..., Identity], proof: SessionProof) -> dict[str, Identity]:
    """The CALLERS, made by ``make`` (whose roles are the granting role and "moded")."""
    return {
        "human-with-device": make(device=DEVICE, proof=proof),
        # device values from login only: a copied profile looks exactly like this
        "human-login-device": make(device=DEVICE),
        "human-without-device": make(),
        "bot": make(bot=True),
    }


def mode_matrix(test: Test) -> Test:
    """Run ``test`` for every cluster mode, role mode, caller (of mode_matrix_identities) and proof setting."""
    modes = list(itertools.product(CLUSTER_MODES, ROLE_MODES))
    test = pytest.mark.parametrize(("cluster_mode", "role_mode"), modes)(test)
    test = pytest.mark.parametrize("who", CALLERS)(test)
    return pytest.mark.parametrize("session_proof", ["per_session", "login"])(test)


def check_mode(decision: Decision, cluster_mode: str, role_mode: str, who: str, session_proof: str) -> None:
    """The strictest mode applies; only a proven device (or a bot where humans alone need one) gets through."""
    effective = max((m for m in (cluster_mode, role_mode) if m), key=STRICTNESS.index)
    proven = who == "human-with-device" or (who == "human-login-device" and session_proof == "login")
    needs_device = effective == "required" or (effective == "required-for-humans" and who != "bot")
    assert decision.mode == effective
    assert decision.device_verified is proven
    assert decision.allowed is (proven or not needs_device)
    if not decision.allowed:
        assert decision.reason == TRUSTED_DEVICE_REQUIRED
        assert decision.audit_reason == (NO_TRUSTED_DEVICE if session_proof == "login" else NO_SESSION_PROOF)


# ------------------------------------------------------------------------------------------------------ locks


def lock_targets(role_name: str, hostname: str) -> list[tuple[LockTarget, bool]]:
    """Each lock target and whether it stops the granting role's user at a service "svc-1" on ``hostname``."""
    return [
        (LockTarget("user", "alice"), True),
        (LockTarget("role", role_name), True),
        (LockTarget("device", DEVICE.device_id), True),
        (LockTarget("node", "svc-1"), True),  # the service, by host id
        (LockTarget("node", hostname), True),  # ... or host name
        (LockTarget("node", "another-host"), False),
        (LockTarget("login", "alice"), False),  # logins are SSH's
    ]
