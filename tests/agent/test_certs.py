"""agent/certs.py: how the node gets at the certificate a client authenticated with, and the asyncssh behaviour it
relies on. These tests are the tripwire for an asyncssh upgrade."""

from __future__ import annotations

import asyncio
import inspect
from datetime import UTC, datetime, timedelta

import asyncssh
import asyncssh.auth
import pytest
from asyncssh.public_key import SSHOpenSSHCertificate

from devicetrust.agent.certs import ClientKeyCapture, cert_line, gate_agent_forwarding
from devicetrust.crypto.ca import CertAuthority
from devicetrust.crypto.certs import (
    MAX_SSH_CERT_BYTES,
    SSH_PERMIT_EXTENSIONS,
    issue_ssh_user_cert,
    verify_ssh_user_cert,
)
from devicetrust.crypto.identity import EXT_DEVICE_ID, EXT_ROLES, DeviceExtensions, Identity
from devicetrust.crypto.keys import generate_private_key
from devicetrust.errors import TrustError

NOW = datetime.now(UTC).replace(microsecond=0)
CA = CertAuthority.generate("user", "certs.test", NOW - timedelta(days=1))
DEVICE = DeviceExtensions(device_id="9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d", asset_tag="SERIAL1", credential_id="cred")


def user_cert(device: DeviceExtensions | None = DEVICE) -> bytes:
    identity = Identity(
        username="alice",
        roles=("access", "require-trusted-device"),
        logins=("alice",),
        traits={"logins": ("alice",)},
        not_before=NOW - timedelta(minutes=1),
        not_after=NOW + timedelta(hours=1),
        device=device,
    )
    return issue_ssh_user_cert(CA, generate_private_key().public_key(), identity)


def test_asyncssh_still_drops_our_certificate_extensions() -> None:
    """If this fails, asyncssh keeps unknown extensions now: agent/certs.py may be able to read them directly."""
    cert = asyncssh.import_certificate(user_cert())
    assert isinstance(cert, SSHOpenSSHCertificate)
    assert set(cert.options) == set(SSH_PERMIT_EXTENSIONS)
    assert EXT_DEVICE_ID not in cert.options and EXT_ROLES not in cert.options


def test_the_wire_blob_gives_back_the_whole_certificate() -> None:
    line = user_cert()
    blob = asyncssh.import_certificate(line).public_data  # what a client sends in its user-auth request

    recovered = cert_line(blob)

    assert recovered == b" ".join(line.split()[:2])
    identity = verify_ssh_user_cert(recovered, [CA.ssh_public_key()], NOW)
    assert identity.device == DEVICE
    assert identity.roles == ("access", "require-trusted-device")


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"\x00\x00",
        b"\x00\x00\x00\x00rest",
        b"\x00\x00\x00\x09short",
        b"\x00\x00\x00\x03a b",
        b"\x00\x00\x01\x00" + b"a" * 300,
        b"\x00\x00\x00\x05ecdsa" + b"\x00" * MAX_SSH_CERT_BYTES,
    ],
)
def test_unreadable_blobs_are_refused(blob: bytes) -> None:
    with pytest.raises(TrustError):
        cert_line(blob)


def test_a_forged_blob_does_not_verify() -> None:
    blob = bytearray(asyncssh.import_certificate(user_cert()).public_data)
    blob[-10] ^= 0xFF  # inside the CA signature
    with pytest.raises(TrustError):
        verify_ssh_user_cert(cert_line(bytes(blob)), [CA.ssh_public_key()], NOW)


def test_asyncssh_server_still_calls_the_hooks_we_wrap() -> None:
    """The two connection methods certs.py wraps per connection, and the caller of the first."""
    validate = asyncssh.SSHServerConnection.validate_public_key
    assert inspect.iscoroutinefunction(validate)
    assert list(inspect.signature(validate).parameters) == ["self", "username", "key_data", "msg", "signature"]
    assert "self._conn.validate_public_key(" in inspect.getsource(asyncssh.auth._ServerPublicKeyAuth)
    listener = asyncssh.SSHServerConnection.create_agent_listener
    assert inspect.iscoroutinefunction(listener)
    assert list(inspect.signature(listener).parameters) == ["self"]
    assert "self._conn.create_agent_listener()" in inspect.getsource(asyncssh.SSHServerChannel)


class FakeConnection:
    def __init__(self, accept: bool) -> None:
        self.accept = accept
        self.listeners = 0

    async def validate_public_key(self, username: str, key_data: bytes, msg: bytes, signature: bytes) -> bool:
        return self.accept

    async def create_agent_listener(self) -> bool:
        self.listeners += 1
        return True


def test_capture_records_the_offered_and_the_authenticated_blob() -> None:
    conn = FakeConnection(accept=True)
    capture = ClientKeyCapture(conn)

    async def scenario() -> None:
        assert await conn.validate_public_key("alice", b"query", b"", b"")
        assert (capture.pending, capture.authenticated) == (b"query", None)  # a query proves nothing yet
        assert await conn.validate_public_key("alice", b"signed", b"msg", b"sig")
        assert (capture.pending, capture.authenticated) == (b"signed", b"signed")
        conn.accept = False
        assert not await conn.validate_public_key("alice", b"other", b"msg", b"sig")
        assert (capture.pending, capture.authenticated) == (b"other", b"signed")

    asyncio.run(scenario())


def test_agent_forwarding_gate() -> None:
    conn = FakeConnection(accept=True)
    allowed = False
    gate_agent_forwarding(conn, lambda: allowed)

    async def scenario() -> None:
        nonlocal allowed
        assert not await conn.create_agent_listener()
        assert conn.listeners == 0
        allowed = True
        assert await conn.create_agent_listener()
        assert conn.listeners == 1

    asyncio.run(scenario())
