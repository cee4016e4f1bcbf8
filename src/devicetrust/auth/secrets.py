"""Random secrets and how they are stored: only as SHA-256 digests, looked up by digest."""

from __future__ import annotations

import hashlib
import hmac
import secrets

#: 32 random bytes (docs/architecture.md, Tokens); urlsafe base64 makes them 43 characters.
TOKEN_BYTES = 32


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def hash_token(token: str) -> str:
    """The stored form of a bearer secret. A 256-bit random secret needs no salt or slow hash."""
    return hashlib.sha256(token.encode()).hexdigest()


def token_id(token_hash: str) -> str:
    """A short, non-secret name for a stored token (what `tctl tokens ls` shows and `rm` takes)."""
    return token_hash[:16]


def constant_time_equal(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)
