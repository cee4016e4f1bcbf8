"""The fingerprint of the parts of a device document an MDM owns (``spec.source`` and ``spec.profile``).

A sync compares the stored device's fingerprint with the observation's to tell an unchanged device from one to
write. Storage keeps each device's fingerprint beside its document (computed here from the document it writes),
so a sync's lookup reads an integer instead of decoding the parts.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

from pydantic import JsonValue

__all__ = ["MDM_PART_PATHS", "credential_id", "fingerprint", "spec_fingerprint", "with_mdm_parts"]

#: 64 bits: two different registrations collide with probability 2**-64 per comparison; a collision only means
#: one device's profile update waits for its next change
_FINGERPRINT_BYTES = 8
#: the paths of a device document the MDM owns, in the order :func:`fingerprint` takes them
MDM_PART_PATHS = (("spec", "source"), ("spec", "profile"))


def fingerprint(source: Mapping[str, object] | None, profile: Mapping[str, object] | None) -> int:
    """A 64-bit digest (unsigned) of the MDM-owned parts; the profile's update_time is left out (it is ours, not
    the MDM's)."""
    parts = [source, None if profile is None else {k: v for k, v in profile.items() if k != "update_time"}]
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"))
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=_FINGERPRINT_BYTES).digest(), "big")


def spec_fingerprint(body: Mapping[str, object]) -> int:
    """:func:`fingerprint` of a device document."""
    spec = body.get("spec")
    if not isinstance(spec, Mapping):
        return fingerprint(None, None)
    return fingerprint(spec.get("source"), spec.get("profile"))


def with_mdm_parts(
    body: Mapping[str, JsonValue],
    source: dict[str, JsonValue],
    profile: dict[str, JsonValue],
    update_time: str,
) -> dict[str, JsonValue]:
    """``body`` with the MDM-owned parts replaced (``spec.source``, ``spec.profile``) and ``spec.update_time``
    stamped; everything else (credential, owner, enroll status…) kept. ``body`` itself is left alone."""
    stored_spec = body.get("spec")
    spec: dict[str, JsonValue] = dict(stored_spec) if isinstance(stored_spec, dict) else {}
    spec["source"] = source
    spec["profile"] = profile
    spec["update_time"] = update_time
    return {**body, "spec": spec}


def credential_id(body: Mapping[str, object]) -> str:
    """The id of the credential a device document holds ("" without one)."""
    spec = body.get("spec")
    credential = spec.get("credential") if isinstance(spec, Mapping) else None
    value = credential.get("id", "") if isinstance(credential, Mapping) else ""
    return value if isinstance(value, str) else ""
