"""The one place that reaches into asyncssh's server internals (asyncssh is pinned to 2.24.x in pyproject).

asyncssh keeps only the OpenSSH-defined extensions of a client certificate and silently drops the rest (the
device values among them), and none of its public server hooks hands over the certificate itself:
``validate_ca_key`` gets only the signing key. So the node wraps, per connection,
``SSHServerConnection.validate_public_key`` (what the public-key user-auth handler calls with the raw key blob the
client sent) to see that blob, then re-parses and verifies it with ``cryptography`` through
:func:`devicetrust.crypto.certs.verify_ssh_user_cert`.

It also wraps ``create_agent_listener`` so agent forwarding is refused unless the session's roles allow it:
asyncssh decides agent forwarding per server, not per user.

tests/agent/test_certs.py fails if an asyncssh upgrade changes either behaviour.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Awaitable, Callable
from typing import Any

from devicetrust.crypto.certs import MAX_SSH_CERT_BYTES
from devicetrust.errors import TrustError

__all__ = ["ClientKeyCapture", "cert_line", "gate_agent_forwarding"]

#: The SSH wire encoding: a big-endian uint32 length before each string.
_LENGTH = struct.Struct(">I")
#: Longest key algorithm name we accept from the wire (OpenSSH's are under 64 characters).
MAX_KEY_ALGORITHM_CHARS = 128


class ClientKeyCapture:
    """Records the raw public key or certificate blobs a client offers on one connection.

    ``pending`` is the blob being validated right now (set before asyncssh calls ``validate_ca_key``);
    ``authenticated`` is the one whose signature was accepted, i.e. what the client logged in with.
    """

    def __init__(self, conn: Any) -> None:
        self.pending: bytes | None = None
        self.authenticated: bytes | None = None
        original: Callable[[str, bytes, bytes, bytes], Awaitable[bool]] = conn.validate_public_key

        async def validate_public_key(username: str, key_data: bytes, msg: bytes, signature: bytes) -> bool:
            self.pending = bytes(key_data)
            accepted = bool(await original(username, key_data, msg, signature))
            if accepted and msg:  # a signed request: the key is now proven, authentication succeeds with it
                self.authenticated = self.pending
            return accepted

        conn.validate_public_key = validate_public_key


def gate_agent_forwarding(conn: Any, allowed: Callable[[], bool]) -> None:
    """Make ``conn`` refuse ``auth-agent-req@openssh.com`` unless ``allowed()`` says yes at request time."""
    original: Callable[[], Awaitable[bool]] = conn.create_agent_listener

    async def create_agent_listener() -> bool:
        if not allowed():
            return False
        return bool(await original())

    conn.create_agent_listener = create_agent_listener


def cert_line(blob: bytes) -> bytes:
    """The OpenSSH one-line form (``<algorithm> <base64>``) of a key blob from the wire.

    Raises TrustError if the blob is too large or does not start with a readable algorithm name.
    """
    if len(blob) > MAX_SSH_CERT_BYTES:
        raise TrustError(f"SSH certificate is larger than {MAX_SSH_CERT_BYTES} bytes")
    if len(blob) < _LENGTH.size:
        raise TrustError("SSH key blob is truncated")
    (length,) = _LENGTH.unpack_from(blob)
    algorithm = blob[_LENGTH.size : _LENGTH.size + length]
    if not 0 < length <= MAX_KEY_ALGORITHM_CHARS or len(algorithm) != length:
        raise TrustError("SSH key blob has no readable algorithm name")
    if not all(0x21 <= char <= 0x7E for char in algorithm):
        raise TrustError("SSH key blob has an invalid algorithm name")
    return algorithm + b" " + base64.b64encode(blob)
