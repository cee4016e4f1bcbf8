"""The fingerprint of the parts of a device document an MDM owns (``spec.source`` and ``spec.profile``).

A sync compares the stored device's fingerprint with the observation's to tell an unchanged device from one to
write. Storage keeps each device's fingerprint beside its document (computed here from the document it writes),
so a sync's lookup reads an integer instead of decoding the parts.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

__all__ = ["MDM_PART_PATHS", "fingerprint", "spec_fingerprint"]

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
