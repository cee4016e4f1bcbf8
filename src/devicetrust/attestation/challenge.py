"""The macOS Secure Enclave / unsafe-software-key proof: an ECDSA-P256 signature over SHA-256(challenge)."""

from __future__ import annotations

from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from .errors import AttestationError

__all__ = [
    "CHALLENGE_BYTES",
    "MAX_ECDSA_SIGNATURE_DER_BYTES",
    "MAX_PUBLIC_KEY_DER_BYTES",
    "verify_challenge_signature",
]

#: the server's challenges are exactly 32 random bytes
CHALLENGE_BYTES: Final = 32
#: a P-256 ECDSA signature in ASN.1 DER is at most 72 bytes
MAX_ECDSA_SIGNATURE_DER_BYTES: Final = 72
#: a P-256 SubjectPublicKeyInfo is 91 bytes (uncompressed point); leave room, refuse anything big
MAX_PUBLIC_KEY_DER_BYTES: Final = 256


def verify_challenge_signature(public_key_der: bytes, challenge: bytes, signature_der: bytes) -> None:
    """Raise AttestationError unless ``signature_der`` is an ECDSA-P256 (ASN.1 DER) signature by
    ``public_key_der`` (PKIX SubjectPublicKeyInfo DER) over SHA-256(``challenge``)."""
    if len(challenge) != CHALLENGE_BYTES:
        raise AttestationError(f"challenge must be {CHALLENGE_BYTES} bytes")
    if len(public_key_der) > MAX_PUBLIC_KEY_DER_BYTES:
        raise AttestationError("device public key is too large")
    if not signature_der or len(signature_der) > MAX_ECDSA_SIGNATURE_DER_BYTES:
        raise AttestationError("challenge signature has a bad length")
    try:
        key = serialization.load_der_public_key(public_key_der)
    except ValueError:
        raise AttestationError("device public key is not a DER SubjectPublicKeyInfo") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise AttestationError("device public key must be ECDSA P-256")
    try:
        key.verify(signature_der, challenge, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise AttestationError("challenge signature is not valid for the device key") from None
