"""The macOS Secure Enclave / software-key proof: ECDSA-P256 over SHA-256(32-byte challenge)."""

from __future__ import annotations

import secrets

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from devicetrust.attestation import CHALLENGE_BYTES, AttestationError, verify_challenge_signature

KEY = ec.generate_private_key(ec.SECP256R1())


def _spki(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


CHALLENGE = secrets.token_bytes(CHALLENGE_BYTES)
SIGNATURE = KEY.sign(CHALLENGE, ec.ECDSA(hashes.SHA256()))


def test_valid_signature_is_accepted() -> None:
    verify_challenge_signature(_spki(KEY), CHALLENGE, SIGNATURE)


@pytest.mark.parametrize("size", [0, 16, 31, 33, 64])
def test_challenge_must_be_32_bytes(size: int) -> None:
    challenge = secrets.token_bytes(size)
    with pytest.raises(AttestationError, match="32 bytes"):
        verify_challenge_signature(_spki(KEY), challenge, KEY.sign(challenge, ec.ECDSA(hashes.SHA256())))


def test_other_challenge_or_key_is_rejected() -> None:
    with pytest.raises(AttestationError, match="not valid"):
        verify_challenge_signature(_spki(KEY), secrets.token_bytes(32), SIGNATURE)
    with pytest.raises(AttestationError, match="not valid"):
        verify_challenge_signature(_spki(ec.generate_private_key(ec.SECP256R1())), CHALLENGE, SIGNATURE)


def test_every_single_byte_change_of_the_signature_is_rejected() -> None:
    for index in range(len(SIGNATURE)):
        mutated = bytearray(SIGNATURE)
        mutated[index] ^= 0x01
        with pytest.raises(AttestationError):
            verify_challenge_signature(_spki(KEY), CHALLENGE, bytes(mutated))


def test_non_der_encodings_are_rejected() -> None:
    with pytest.raises(AttestationError):
        verify_challenge_signature(_spki(KEY), CHALLENGE, SIGNATURE + b"\x00")
    with pytest.raises(AttestationError, match="length"):
        verify_challenge_signature(_spki(KEY), CHALLENGE, b"")
    with pytest.raises(AttestationError, match="length"):
        verify_challenge_signature(_spki(KEY), CHALLENGE, bytes(73))


def test_only_p256_keys() -> None:
    p384 = ec.generate_private_key(ec.SECP384R1())
    for key in (p384, rsa.generate_private_key(65537, 2048), ed25519.Ed25519PrivateKey.generate()):
        with pytest.raises(AttestationError, match=r"P-256|too large"):
            verify_challenge_signature(_spki(key), CHALLENGE, SIGNATURE)
    with pytest.raises(AttestationError, match="SubjectPublicKeyInfo"):
        verify_challenge_signature(b"junk", CHALLENGE, SIGNATURE)
    with pytest.raises(AttestationError, match="too large"):
        verify_challenge_signature(bytes(1000), CHALLENGE, SIGNATURE)
