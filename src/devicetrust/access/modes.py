"""Whether a session needs a trusted device: the strictest of the cluster's and the matching roles' modes."""

from __future__ import annotations

from collections.abc import Iterable

from devicetrust.errors import AccessDeniedError, ValidationError
from devicetrust.types.role import MODE_UNSET

# Least to most strict. required-for-humans sits below required: it exempts bots, required exempts nobody.
_MODE_STRICTNESS = {"off": 0, "optional": 1, "required-for-humans": 2, "required": 3}

#: What SSH users are told when a session needs a trusted device (OpenSSH shows it after the channel rejection).
UNAUTHORIZED_DEVICE = "unauthorized device"
#: The same refusal for databases and Kubernetes clusters, in Teleport's words for them.
TRUSTED_DEVICE_REQUIRED = "access to resource requires a trusted device"


def strictest_mode(modes: Iterable[str]) -> str:
    """The strictest of ``modes``, ignoring unset ("") ones; "" if none is set.

    An unknown mode raises ValidationError: callers deny rather than guess.
    """
    strictest = MODE_UNSET
    for mode in modes:
        if mode == MODE_UNSET:
            continue
        if not isinstance(mode, str) or mode not in _MODE_STRICTNESS:
            raise ValidationError(f"unknown device trust mode {mode!r}")
        if not strictest or _MODE_STRICTNESS[mode] > _MODE_STRICTNESS[strictest]:
            strictest = mode
    return strictest


def device_required(cluster_mode: str, role_modes: Iterable[str], *, is_bot: bool) -> bool:
    """Whether the session must come from a trusted device. An unknown mode raises AccessDeniedError."""
    try:
        mode = strictest_mode((cluster_mode, *role_modes))
    except ValidationError:
        raise AccessDeniedError(UNAUTHORIZED_DEVICE) from None  # fail closed: a mode we cannot read denies
    if mode == "required":
        return True
    if mode == "required-for-humans":
        return not is_bot
    return False
