"""Certificate authorities: one ECDSA P-256 key used both as an OpenSSH CA and as an X.509 CA."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal, get_args

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from devicetrust.errors import ValidationError

from .identity import require_utc
from .keys import (
    generate_private_key,
    load_private_key_pem,
    private_key_to_pem,
    public_key_to_openssh,
    require_p256_public_key,
)

__all__ = ["CA_KINDS", "CA_VALIDITY", "CAKind", "CertAuthority", "KeyUsageName", "key_usage", "load_certificate_pem"]

CAKind = Literal["user", "host"]
CA_KINDS: tuple[CAKind, ...] = ("user", "host")
CA_VALIDITY = timedelta(days=3650)
# CAs are backdated a little so an auth server whose clock lags the one that generated the CA accepts it
_CA_BACKDATE = timedelta(minutes=1)
_RECORD_KEYS = ("kind", "cluster_name", "private_key_pem", "certificate_pem")


KeyUsageName = Literal[
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
    "key_cert_sign",
    "crl_sign",
    "encipher_only",
    "decipher_only",
]


def key_usage(*uses: KeyUsageName) -> x509.KeyUsage:
    """The key usage extension allowing ``uses`` and nothing else."""
    return x509.KeyUsage(**{name: name in uses for name in get_args(KeyUsageName)})


def load_certificate_pem(data: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise ValidationError(f"certificate: not a PEM X.509 certificate ({exc})") from None


def _check_kind(kind: object) -> CAKind:
    if kind not in CA_KINDS:
        raise ValidationError(f"kind: must be one of {', '.join(CA_KINDS)}, got {kind!r}")
    return kind


def _ca_common_name(kind: CAKind, cluster_name: str) -> str:
    return f"{cluster_name} {kind} CA"


def _check_cluster_name(cluster_name: object) -> str:
    if not isinstance(cluster_name, str) or not cluster_name.strip():
        raise ValidationError("cluster_name: must be a non-empty string")
    # X.509 caps CN at 64 characters and the CN is "<cluster> <kind> CA"
    if len(_ca_common_name("user", cluster_name)) > 64:
        raise ValidationError("cluster_name: too long (at most 56 characters)")
    return cluster_name


@dataclass(frozen=True)
class CertAuthority:
    kind: CAKind
    cluster_name: str
    private_key: ec.EllipticCurvePrivateKey = field(repr=False)
    certificate: x509.Certificate = field(repr=False)

    def __post_init__(self) -> None:
        _check_kind(self.kind)
        _check_cluster_name(self.cluster_name)
        cert_key = require_p256_public_key(self.certificate.public_key(), "CA certificate key")
        if cert_key != self.private_key.public_key():
            raise ValidationError(f"{self.kind} CA: private key does not match the CA certificate")
        try:
            bc = self.certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            bc = None
        if bc is None or not bc.ca:
            raise ValidationError(f"{self.kind} CA: certificate is not a CA certificate")
        cns = self.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        expected_cn = _ca_common_name(self.kind, self.cluster_name)
        # guards against storing the host CA under "user" (or another cluster's CA) by mistake
        if [a.value for a in cns] != [expected_cn]:
            raise ValidationError(f"{self.kind} CA: certificate subject is not CN={expected_cn}")

    @classmethod
    def generate(cls, kind: CAKind, cluster_name: str, now: datetime) -> CertAuthority:
        kind = _check_kind(kind)
        cluster_name = _check_cluster_name(cluster_name)
        now = require_utc(now, "now").replace(microsecond=0)
        key = generate_private_key()
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, cluster_name),
                x509.NameAttribute(NameOID.COMMON_NAME, _ca_common_name(kind, cluster_name)),
            ]
        )
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CA_BACKDATE)
            .not_valid_after(now + CA_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(key_usage("digital_signature", "key_cert_sign", "crl_sign"), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(kind=kind, cluster_name=cluster_name, private_key=key, certificate=certificate)

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self.private_key.public_key()

    def ssh_public_key(self) -> str:
        """The CA key as an OpenSSH line, for ``TrustedUserCAKeys`` / ``@cert-authority``."""
        return public_key_to_openssh(self.public_key())

    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def to_record(self) -> dict[str, str]:
        """Storage form. Contains the private key: only the storage backend may hold it."""
        return {
            "kind": self.kind,
            "cluster_name": self.cluster_name,
            "private_key_pem": private_key_to_pem(self.private_key).decode("ascii"),
            "certificate_pem": self.certificate_pem().decode("ascii"),
        }

    @classmethod
    def from_record(cls, record: Mapping[str, str]) -> CertAuthority:
        missing = [k for k in _RECORD_KEYS if not isinstance(record.get(k), str)]
        if missing:
            raise ValidationError(f"CA record: missing or non-string field(s): {', '.join(missing)}")
        return cls(
            kind=_check_kind(record["kind"]),
            cluster_name=record["cluster_name"],
            private_key=load_private_key_pem(record["private_key_pem"].encode("utf-8")),
            certificate=load_certificate_pem(record["certificate_pem"].encode("utf-8")),
        )
