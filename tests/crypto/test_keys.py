"""Key helpers: P-256 only, PEM and OpenSSH round trips, refusal of anything else."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from devicetrust.crypto.keys import (
    fingerprint_sha256,
    generate_private_key,
    load_private_key_pem,
    load_public_key,
    private_key_to_pem,
    public_key_to_openssh,
    public_key_to_pem,
)
from devicetrust.errors import ValidationError


def test_generated_key_is_p256() -> None:
    key = generate_private_key()
    assert isinstance(key.curve, ec.SECP256R1)


def test_private_key_pem_round_trip() -> None:
    key = generate_private_key()
    pem = private_key_to_pem(key)
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8, unencrypted
    assert load_private_key_pem(pem).private_numbers() == key.private_numbers()


@pytest.mark.parametrize("data", [b"", b"garbage", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"])
def test_load_private_key_rejects_garbage(data: bytes) -> None:
    with pytest.raises(ValidationError, match="private key"):
        load_private_key_pem(data)


def test_load_private_key_rejects_other_curves_and_algorithms() -> None:
    p384 = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(ValidationError, match="P-256"):
        load_private_key_pem(private_key_to_pem(p384))
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_pem = rsa_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(ValidationError, match="P-256"):
        load_private_key_pem(rsa_pem)


def test_load_private_key_rejects_encrypted_pem() -> None:
    pem = generate_private_key().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    with pytest.raises(ValidationError, match="unencrypted"):
        load_private_key_pem(pem)


def test_public_key_pem_and_openssh_round_trip() -> None:
    pub = generate_private_key().public_key()
    line = public_key_to_openssh(pub)
    assert line.startswith("ecdsa-sha2-nistp256 AAAA")
    assert load_public_key(line) == pub
    assert load_public_key(line.encode() + b" alice@laptop\n") == pub
    assert load_public_key(public_key_to_pem(pub)) == pub
    assert load_public_key(public_key_to_pem(pub).decode()) == pub


def test_load_public_key_rejects_non_p256() -> None:
    ed_line = (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    )
    with pytest.raises(ValidationError, match="P-256"):
        load_public_key(ed_line)
    p384_pem = (
        ec.generate_private_key(ec.SECP384R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(ValidationError, match="P-256"):
        load_public_key(p384_pem)


@pytest.mark.parametrize("data", ["", "   ", "ssh-rsa", "ecdsa-sha2-nistp256 !!!", "-----BEGIN PUBLIC KEY-----\nx\n"])
def test_load_public_key_rejects_garbage(data: str) -> None:
    with pytest.raises(ValidationError, match="public key"):
        load_public_key(data)


def test_fingerprint_format() -> None:
    fp = fingerprint_sha256(generate_private_key().public_key())
    assert fp.startswith("SHA256:")
    assert "=" not in fp
    assert len(fp) == len("SHA256:") + 43  # 32 bytes in unpadded base64
