"""Pending ceremony state that travels with the client instead of being stored (docs/architecture.md,
Ceremonies).

Device authentication runs before every session, so its ``begin`` must not write: the server seals what
``finish`` needs (a JSON object) with HMAC-SHA256 under a key every auth server of the cluster shares, and hands
the result to the device as the ceremony id. ``finish`` opens it; any change to a single byte makes it
unusable. Sealing is integrity, not secrecy: the state holds nothing the device does not already know (its
challenge, its data, its own certificate). Single use is the finishing server's job (it records the ceremony's
inner id, atomically).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Mapping

from devicetrust.ceremony.messages import MAX_CEREMONY_ID_CHARS, CeremonyError

__all__ = ["SEALED_PREFIX", "SEAL_KEY_BYTES", "open_sealed", "seal"]

SEALED_PREFIX = "s1."
#: Bytes of the sealing key.
SEAL_KEY_BYTES = 32
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")
_UNKNOWN = "unknown or expired device ceremony"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(key: bytes, payload: str) -> bytes:
    return hmac.new(key, (SEALED_PREFIX + payload).encode("ascii"), hashlib.sha256).digest()


def seal(key: bytes, state: Mapping[str, object]) -> str:
    if len(key) < SEAL_KEY_BYTES:
        raise ValueError("the sealing key is too short")
    payload = _b64(json.dumps(state, separators=(",", ":"), sort_keys=True).encode("utf-8"))
    return f"{SEALED_PREFIX}{payload}.{_b64(_mac(key, payload))}"


def open_sealed(key: bytes, sealed: str) -> dict[str, object]:
    """The state sealed under ``key``; CeremonyError (one message for every cause) if it was not, or was
    changed."""
    if len(key) < SEAL_KEY_BYTES:
        raise ValueError("the sealing key is too short")
    if not sealed.startswith(SEALED_PREFIX) or len(sealed) > MAX_CEREMONY_ID_CHARS:
        raise CeremonyError(_UNKNOWN)
    payload, _, tag = sealed[len(SEALED_PREFIX) :].partition(".")
    if not _BASE64URL.fullmatch(payload) or not _BASE64URL.fullmatch(tag):
        raise CeremonyError(_UNKNOWN)
    try:
        given = _unb64(tag)
    except (binascii.Error, ValueError):
        raise CeremonyError(_UNKNOWN) from None
    # Only the canonical spelling of the tag: no other string may open the same state.
    if _b64(given) != tag or not hmac.compare_digest(given, _mac(key, payload)):
        raise CeremonyError(_UNKNOWN)
    try:
        state = json.loads(_unb64(payload))
    except (binascii.Error, ValueError):
        raise CeremonyError(_UNKNOWN) from None
    if not isinstance(state, dict):
        raise CeremonyError(_UNKNOWN)
    return state
