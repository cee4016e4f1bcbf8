"""Key helpers. Every key in devicetrust is ECDSA P-256: browsers, OpenSSH and TPMs all accept it."""

from __future__ import annotations

import base64
import hashlib

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from devicetrust.errors import ValidationError

__all__ = [
    "fingerprint_sha256",
    "generate_private_key",
    "load_private_key_pem",
    "load_public_key",
    "private_key_to_pem",
    "public_key_to_openssh",
    "public_key_to_pem",
    "require_p256_public_key",
]

_PEM_PREFIX = "-----BEGIN"


def generate_private_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def private_key_to_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """PKCS#8, unencrypted: the storage backend is responsible for protecting it at rest."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_private_key_pem(data: bytes) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        # TypeError: the PEM is encrypted; we never store encrypted keys
        raise ValidationError(f"private key: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValidationError(f"private key: expected ECDSA P-256, got {type(key).__name__}")
    if not isinstance(key.curve, ec.SECP256R1):
        raise ValidationError(f"private key: expected curve P-256, got {key.curve.name}")
    return key


def public_key_to_openssh(pub: ec.EllipticCurvePublicKey) -> str:
    return pub.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode("ascii")


def public_key_to_pem(pub: ec.EllipticCurvePublicKey) -> bytes:
    return pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def require_p256_public_key(pub: object, what: str = "public key") -> ec.EllipticCurvePublicKey:
    """Return ``pub`` if it is a P-256 public key, else raise ValidationError naming ``what``."""
    if not isinstance(pub, ec.EllipticCurvePublicKey):
        raise ValidationError(f"{what}: expected ECDSA P-256, got {type(pub).__name__}")
    if not isinstance(pub.curve, ec.SECP256R1):
        raise ValidationError(f"{what}: expected curve P-256, got {pub.curve.name}")
    return pub


def load_public_key(data: bytes | str) -> ec.EllipticCurvePublicKey:
    """Load a PEM SubjectPublicKeyInfo or an OpenSSH ``ecdsa-sha2-nistp256 AAAA… [comment]`` line."""
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    raw = raw.strip()
    if not raw:
        raise ValidationError("public key: empty")
    try:
        if raw.startswith(_PEM_PREFIX.encode()):
            key: object = serialization.load_pem_public_key(raw)
        else:
            key = serialization.load_ssh_public_key(raw)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ValidationError(f"public key: not a PEM or OpenSSH public key ({exc})") from None
    return require_p256_public_key(key)


def fingerprint_sha256(pub: ec.EllipticCurvePublicKey) -> str:
    """``SHA256:<base64, no padding>`` of the SSH wire blob, identical to ``ssh-keygen -l``."""
    blob = base64.b64decode(public_key_to_openssh(pub).split()[1])
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii").rstrip("=")
    return f"SHA256:{digest}"
